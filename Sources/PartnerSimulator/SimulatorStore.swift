import Crypto
import Foundation
import Synchronization

/// All mutable simulator state behind one lock: faults, what was received, created candidates,
/// issued OAuth tokens, token first-sightings and rate-limit windows.
///
/// Every method is one short critical section with no I/O, so handlers never hold the lock
/// across an await and decisions (e.g. "is this a duplicate?") are atomic.
final class SimulatorStore: Sendable {
    /// Outcome of a create attempt.
    enum CreateOutcome: Equatable {
        case created(uid: String)
        case conflict(existingUID: String)
    }

    private struct CandidateKey: Hashable {
        var positionUID: String
        var partnerCandidateID: String
    }

    private struct IssuedToken {
        var clientID: String
        var expiresAt: Date
    }

    private struct State {
        var faults: SimulatorFaults
        var requests: [ReceivedRequest] = []
        var candidates: [CreatedCandidate] = []
        var candidateByKey: [CandidateKey: String] = [:]
        var tokensIssued = 0
        var tokenRequests = 0
        var tokenAcceptEncoding: String?
        var accessTokens: [String: IssuedToken] = [:]
        var firstSeen: [String: Date] = [:]
        var windows: [String: [Date]] = [:]
        var createdCount = 0
    }

    private let state: Mutex<State>

    init(faults: SimulatorFaults) {
        self.state = Mutex(State(faults: faults))
    }

    var faults: SimulatorFaults {
        state.withLock { $0.faults }
    }

    func setFaults(_ faults: SimulatorFaults) {
        state.withLock { $0.faults = faults }
    }

    private let stoppingFlag = Mutex(false)
    /// Set by `stop()`: a stall in progress ends, so that the graceful stop is not held by it.
    var stopping: Bool {
        get { stoppingFlag.withLock { $0 } }
        set { stoppingFlag.withLock { $0 = newValue } }
    }

    /// Waits up to `milliseconds`, ending early when the simulator stops or `stillWanted` (read
    /// from the current faults) turns false: a fault that was cleared stops stalling.
    func stall(milliseconds: Int, while stillWanted: @Sendable (SimulatorFaults) -> Bool) async {
        let deadline = ContinuousClock.now + .milliseconds(milliseconds)
        while ContinuousClock.now < deadline, !stopping, stillWanted(faults) {
            try? await Task.sleep(for: min(.milliseconds(50), deadline - ContinuousClock.now))
        }
    }

    /// Decides whether this create request gets an injected answer; `failNext` is consumed
    /// first so a test asking for "two failures" gets exactly two, independent of `errorRate`.
    /// `apiKey`: the request's JWT `iss`, for faults aimed at one customer.
    func takeInjectedStatus(apiKey: String? = nil) -> Int? {
        state.withLock { state in
            if let target = state.faults.injectOnlyForAPIKey, target != apiKey { return nil }
            if state.faults.failNext > 0 {
                state.faults.failNext -= 1
                return state.faults.injectStatus
            }
            if state.faults.errorRate > 0, Double.random(in: 0..<1) < state.faults.errorRate {
                return state.faults.injectStatus
            }
            return nil
        }
    }

    /// Sliding-window admission: true and counted when fewer than `limit` requests were
    /// admitted for `key` in the last `window` seconds. Refused requests are not counted, so a
    /// client that backs off is admitted again once the window slides.
    func admit(key: String, limit: Int, window: TimeInterval, now: Date) -> Bool {
        guard limit > 0 else { return true }
        return state.withLock { state in
            let cutoff = now.addingTimeInterval(-window)
            var stamps = state.windows[key, default: []]
            stamps.removeAll { $0 <= cutoff }
            let admitted = stamps.count < limit
            if admitted { stamps.append(now) }
            state.windows[key] = stamps
            return admitted
        }
    }

    /// Seconds since `token` was first presented (0 the first time), for "expires early" faults.
    func ageOfToken(_ token: String, now: Date) -> TimeInterval {
        state.withLock { state in
            if let seen = state.firstSeen[token] { return now.timeIntervalSince(seen) }
            // Bound memory in long demo runs: partner JWTs live at most ten minutes anyway.
            if state.firstSeen.count > 10_000 {
                let cutoff = now.addingTimeInterval(-3600)
                state.firstSeen = state.firstSeen.filter { $0.value > cutoff }
            }
            state.firstSeen[token] = now
            return 0
        }
    }

    /// Counts a token endpoint hit, whatever its answer, and keeps its `Accept-Encoding`.
    func countTokenRequest(acceptEncoding: String?) {
        state.withLock {
            $0.tokenRequests += 1
            $0.tokenAcceptEncoding = acceptEncoding
        }
    }

    /// Issues a random opaque access token for `clientID`, valid for `ttl` seconds.
    func issueToken(clientID: String, ttl: TimeInterval, now: Date) -> String {
        let token = Base64URL.encode(SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) })
        state.withLock { state in
            state.accessTokens = state.accessTokens.filter { $0.value.expiresAt > now }
            state.accessTokens[token] = IssuedToken(clientID: clientID, expiresAt: now.addingTimeInterval(ttl))
            state.tokensIssued += 1
        }
        return token
    }

    /// The client an unexpired issued token belongs to, or nil.
    func clientForAccessToken(_ token: String, now: Date) -> String? {
        state.withLock { state in
            guard let issued = state.accessTokens[token], issued.expiresAt > now else { return nil }
            return issued.clientID
        }
    }

    /// Creates a candidate unless the (position, partner candidate id) pair already exists, in
    /// one critical section so two concurrent duplicates cannot both be created.
    func createCandidate(positionUID: String, partnerCandidateID: String?) -> CreateOutcome {
        state.withLock { state in
            let key = partnerCandidateID.map { CandidateKey(positionUID: positionUID, partnerCandidateID: $0) }
            if let key, let existing = state.candidateByKey[key] {
                return .conflict(existingUID: existing)
            }
            let uid = Self.makeUID(sequence: state.createdCount)
            state.createdCount += 1
            state.candidates.append(
                CreatedCandidate(uid: uid, positionUID: positionUID, partnerCandidateID: partnerCandidateID))
            if let key { state.candidateByKey[key] = uid }
            return .created(uid: uid)
        }
    }

    /// Records a finished request in arrival order: with latency faults, answers can finish
    /// out of order, but tests reason about what arrived when.
    func record(_ request: ReceivedRequest) {
        state.withLock { state in
            var index = state.requests.endIndex
            while index > 0, state.requests[index - 1].at > request.at { index -= 1 }
            state.requests.insert(request, at: index)
        }
    }

    func snapshot() -> SimulatorSnapshot {
        state.withLock { state in
            SimulatorSnapshot(
                requests: state.requests,
                candidates: state.candidates,
                tokensIssued: state.tokensIssued,
                tokenRequests: state.tokenRequests,
                tokenAcceptEncoding: state.tokenAcceptEncoding
            )
        }
    }

    /// Alternates the two uid shapes the partner's documentation shows ("00.AAA" and 5555),
    /// so clients are forced to handle both a string and a number.
    static func makeUID(sequence: Int) -> String {
        let index = sequence / 2
        if sequence % 2 == 1 { return String(5555 + index) }
        let letters = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
        let suffix = String([letters[(index / 676) % 26], letters[(index / 26) % 26], letters[index % 26]])
        let prefix = (index / 17_576) % 100
        return (prefix < 10 ? "0\(prefix)" : "\(prefix)") + "." + suffix
    }
}
