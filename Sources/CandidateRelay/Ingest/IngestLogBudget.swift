import Foundation
import Synchronization

/// At most `perSecond` log lines a second (bursts of as many) for each kind of refused webhook
/// in each account, and for replays; at most `overall` a second for all of them together. The
/// next line written of a kind says how many of that kind were left out; a kind that went
/// quiet with lines left out gets a line of its own (`quietLeftOut`, from the heartbeat).
///
/// Found from outside: one connection sending garbage without credentials wrote ~8,800
/// `ingest.rejected` lines a second. journald keeps at most 10,000 lines per 30 s of a unit
/// (`RateLimitBurst=`, scaled by free disk) and then drops all of them, so a second of garbage
/// hid the daemon's own `delivery.dead`, `storage.failed` and `relay.stopping` lines for the
/// rest of the interval. A kind is an error code in an account (or `duplicate`), so a flood
/// of 401s on one account leaves room for another account's 401s and for the 422s of a sender
/// that is actually trying; `overall` (50 a second, 1,500 per 30 s; as much again for what only
/// an authenticated sender meets, `authenticatedCodes`) keeps floods on many
/// accounts at once well under journald's limit. Every request is still counted in
/// `candidate_relay_ingest_requests_total`; new events (202) are never left out: each is a
/// stored event, and only an authenticated sender makes them.
final class IngestLogBudget: Sendable {
    struct Kind: Hashable, Sendable {
        /// An error code of `ingest.rejected`, or `duplicate`.
        var code: String
        /// A configured account's id, or "" (an unknown account's name is the sender's text).
        var account: String
        /// A 401's `AuthRefusal` (six values), or "": a flood of bad signatures no longer hides
        /// another sender's clock skew in its `suppressed` count (found from outside).
        var reason: String = ""
    }

    private struct Bucket {
        var tokens: Double
        var at: Double
        var suppressed = 0
        var lastSeen: Double
    }

    /// An error code in an account, whatever its reason: what one flooding sender sends.
    private struct Group: Hashable {
        var code: String
        var account: String
    }

    private struct State {
        var kinds: [Kind: Bucket] = [:]
        var groups: [Group: Bucket] = [:]
        var overall: Bucket
        /// The same rate again, for the refusals only a sender with valid credentials meets
        /// (`authenticatedCodes`).
        var overallAuthenticated: Bucket
    }

    /// Codes given only after a webhook passed its authentication: its body's checks, its key's
    /// reuse, a replay. They draw on an overall budget of their own (found from outside, in
    /// review of the per-group cap: one client without credentials flooding 401s and 413s on two
    /// accounts still took all of `overall`, and another account's real sender's 422 lines were
    /// left out). What a sender without credentials can cause never takes their room.
    static let authenticatedCodes: Set<String> = ["malformed_json", "validation_failed", "invalid_characters",
                                                  "idempotency_key_reused", "duplicate"]

    private let state: Mutex<State>
    let perSecond: Double
    let overall: Double
    /// The kinds of one code in one account together (the reasons of a 401) write at most twice
    /// a kind's rate: found from outside, one connection looping the six reasons of a 401 took
    /// 60 lines a second, more than `overall`, and another account's real sender's 422s were
    /// all left out. A reason of its own still gets lines beside a flood of another reason.
    var perGroup: Double { 2 * perSecond }

    init(perSecond: Double = 10, overall: Double = 50) {
        self.perSecond = perSecond
        self.overall = overall
        state = Mutex(State(overall: Bucket(tokens: overall, at: -.infinity, lastSeen: -.infinity),
                            overallAuthenticated: Bucket(tokens: overall, at: -.infinity, lastSeen: -.infinity)))
    }

    /// Nil: leave this line out. Otherwise: write it, with the number of lines of `kind` left
    /// out since the last one written. Kinds come from fixed sets (error codes, configured
    /// accounts), never from the request, so the buckets stay few.
    func admit(_ kind: Kind, now: Date) -> Int? {
        let time = now.timeIntervalSince1970
        return state.withLock { state in
            let groupKey = Group(code: kind.code, account: kind.account)
            var bucket = state.kinds[kind] ?? Bucket(tokens: perSecond, at: time, lastSeen: time)
            var group = state.groups[groupKey] ?? Bucket(tokens: perGroup, at: time, lastSeen: time)
            Self.refill(&bucket, to: time, rate: perSecond)
            Self.refill(&group, to: time, rate: perGroup)
            let authenticated = Self.authenticatedCodes.contains(kind.code)
            var shared = authenticated ? state.overallAuthenticated : state.overall
            Self.refill(&shared, to: time, rate: overall)
            bucket.lastSeen = time
            defer {
                state.kinds[kind] = bucket
                state.groups[groupKey] = group
                if authenticated { state.overallAuthenticated = shared } else { state.overall = shared }
            }
            guard bucket.tokens >= 1, group.tokens >= 1, shared.tokens >= 1 else {
                bucket.suppressed += 1
                return nil
            }
            bucket.tokens -= 1
            group.tokens -= 1
            shared.tokens -= 1
            defer { bucket.suppressed = 0 }
            return bucket.suppressed
        }
    }

    /// The kinds with lines left out that have seen nothing for a second (the flood is over, so
    /// no line of theirs would say it), with those counts; they are then cleared.
    func quietLeftOut(now: Date) -> [(kind: Kind, suppressed: Int)] {
        let time = now.timeIntervalSince1970
        return state.withLock { state in
            var out: [(kind: Kind, suppressed: Int)] = []
            for (kind, bucket) in state.kinds where bucket.suppressed > 0 && time - bucket.lastSeen >= 1 {
                out.append((kind, bucket.suppressed))
                state.kinds[kind]?.suppressed = 0
            }
            return out.sorted { ($0.kind.code, $0.kind.account) < ($1.kind.code, $1.kind.account) }
        }
    }

    /// Adds what `rate` gives since `bucket.at`, up to a burst of `rate`. A clock that went back
    /// refills nothing (and takes nothing away).
    private static func refill(_ bucket: inout Bucket, to time: Double, rate: Double) {
        if bucket.at.isFinite { bucket.tokens = min(rate, bucket.tokens + max(0, time - bucket.at) * rate) }
        bucket.at = time
    }
}
