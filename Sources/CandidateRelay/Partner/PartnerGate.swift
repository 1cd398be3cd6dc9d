import Foundation
import Logging

/// What one admitted attempt showed of the partner's health, settled with the gate once.
public enum PartnerHealth: Sendable, Equatable {
    /// Nothing that tells whether the partner is up: nothing was sent (no event due, the claim
    /// failed, shutdown), or the answer was about this client, not an outage (429: slow down;
    /// 401: these credentials). The breaker's count does not move; a probe admission is given
    /// back, so the next request probes.
    case untested
    /// The partner answered in a way that shows it works (2xx, 409, a refusing 4xx).
    case up
    /// A retryable failure (5xx, timeout, connection error).
    case down
}

/// What one attempt tells the gate: the breaker's health, and the account's own signals.
public struct AttemptReport: Sendable, Equatable {
    public var health: PartnerHealth
    /// The partner's HTTP status, nil when nothing was sent or no answer came.
    public var status: Int?
    /// A `Retry-After` on a 429: this account waits (its api-key's limit).
    public var accountPauseUntil: Date?
    /// A `Retry-After` on anything else (503...): the partner's, every account waits.
    public var partnerPauseUntil: Date?
    /// A 401 even with a freshly minted token: this account's credentials are refused.
    public var credentialsRejected: Bool
    /// No token could be had for this account (its OAuth2 token endpoint refused the client,
    /// failed or did not answer): nothing was sent, and the account waits as for refused credentials.
    public var tokenUnavailable: Bool
    /// The fingerprint of the credentials the request was made with (`TokenProvider.credentials`):
    /// a refusal of credentials a reload has replaced since is not the new ones' back-off.
    public var credentials: String?
    /// No token: the token endpoint's `Retry-After`. The back-off lasts at least until then.
    public var tokenRetryAfter: Date?
    /// With `credentialsRejected`: the partner's clock minus the relay's, by the refusal's `Date`.
    public var partnerClockOffset: Double?

    public init(health: PartnerHealth, status: Int? = nil, accountPauseUntil: Date? = nil, partnerPauseUntil: Date? = nil,
                credentialsRejected: Bool = false, tokenUnavailable: Bool = false, credentials: String? = nil,
                tokenRetryAfter: Date? = nil, partnerClockOffset: Double? = nil) {
        self.partnerClockOffset = partnerClockOffset
        self.health = health
        self.status = status
        self.accountPauseUntil = accountPauseUntil
        self.partnerPauseUntil = partnerPauseUntil
        self.credentialsRejected = credentialsRejected
        self.tokenUnavailable = tokenUnavailable
        self.credentials = credentials
        self.tokenRetryAfter = tokenRetryAfter
    }

    /// Nothing reached the partner.
    public static let nothingSent = AttemptReport(health: .untested)
}

/// The one place every partner request passes (CONTRACT section 8). Per partner: the circuit
/// breaker (an outage is everyone's), a pause ordered by a `Retry-After` on an outage answer, and
/// the optional `global_rate_limit`. Per account: its sliding window, its `Retry-After` pause
/// after a 429, its "credentials refused" back-off, and a share of the workers.
///
/// A worker asks for an `Admission` before it claims an event: it waits until some account may
/// send, and holds a place in the window of every account that may (so that two workers never
/// both count on an account's last place) and in the global window. It claims the oldest due
/// event of the first of those accounts that has one, then `bind`s the admission to that
/// account, which gives the other places back. Fairness: accounts are offered fewest requests
/// in flight first, then least recently served, and the last free worker is kept for fresh
/// events (`keptFree`). The `Permit` keeps its places until the request's answer (`send`), and
/// is settled exactly once.
public actor PartnerGate {
    /// The accounts that may send now, in the order to try them; see `bind` and `release`.
    public struct Admission: Sendable {
        let id: Int
        public let accounts: [String]
        /// This is the worker kept free (or a spare beyond it): offered only accounts with no
        /// request in flight (see `workers`).
        public let keptFree: Bool
        /// A spare beyond the worker kept free: it may take only a fresh event (`freshSeconds`).
        public let freshOnly: Bool
    }

    /// An admission bound to one claimed event's account.
    public struct Permit: Sendable {
        let id: Int
        public let account: String
        let probe: Bool
    }

    private struct AccountState {
        var limiter: SlidingWindowLimiter
        var pausedUntil: Date = .distantPast
        var credentialsBlockedUntil: Date = .distantPast
        var credentialFailures = 0
        /// The back-off in force began with a failed token request (the token endpoint's
        /// outage), not the partner's refusal: a reload ends it even with the same credentials.
        /// Kept across a restart (`token:` holds).
        var blockedForToken = false
        /// Admissions holding a place in this account's window, plus permits bound to it.
        var busy = 0
        /// When it was last bound to (a sequence number): the least recently served goes first.
        var lastServed = 0
        /// Permits bound to it now: accounts with fewest are offered first.
        var permits = 0
        /// Admissions not bound yet that offer it first: counted with `permits`, so that workers
        /// admitted together are offered different accounts first (found from outside: when the
        /// circuit closed, every freed worker was offered the same order, and one account whose
        /// requests hang took 12 of 16 workers again while another's backlog ran on one or two).
        var leading = 0
        /// False once a reload removed the account. Its state stays: places and permits still
        /// held refer to its limiter's tickets, which a fresh limiter would hand out again.
        var configured = true
        /// A wait for its own window was counted, and it has had no place since (`reservePlaces`).
        var rateWaitCounted = false
        /// The fingerprint of its credentials (`AccountWiring.credentialsFingerprint`), kept
        /// with its back-off: a refusal of other credentials is no reason to wait.
        var credentials: String?
    }

    private struct Held {
        var probe: Bool
        var global: SlidingWindowLimiter.Ticket?
        /// Places in the accounts' windows not used yet (an admission: one per account).
        var places: [String: SlidingWindowLimiter.Ticket]
        var account: String?
        /// The account offered first while not bound (its `leading`).
        var first: String?
    }

    private var accounts: [String: AccountState] = [:]
    private var global: SlidingWindowLimiter
    private var breaker: CircuitBreaker
    private var pausedUntil: Date = .distantPast
    private var held: [Int: Held] = [:]
    private var nextID = 0
    private var served = 0
    /// With several accounts (and two workers or more) the last free worker is kept for the
    /// accounts with no request in flight: it takes such an account's oldest due event, a new
    /// one, a retry or a backlog's next, so a quiet account's due event goes at once whatever the
    /// partner's latency and the others' trouble (CONTRACT section 8). A busy account's events
    /// wait for the other workers, or one stuck account would hold them all. Once it is busy too,
    /// the pool's spares (`DeliveryWorkerPool.spareAfterSeconds`) take only fresh events: an
    /// account's oldest due event that arrived within the last `freshSeconds` (not a backlog, not
    /// a retry), so that spares, one per quiet account, never carry backlogs beyond
    /// `delivery.workers` requests at a time. (Found from outside: with the worker kept free
    /// fresh-only too, a quiet account's retry waited for a request of the slow account to end,
    /// up to `partner.timeout_seconds`.)
    private var workers: Int
    public static let freshSeconds = 5.0
    /// A refusal whose `Date` is this far from the relay's clock says so (the partner's own
    /// tolerance for a JWT's times is its own; a `Date` is to the second, and the answer took
    /// its time to come).
    static let clockHintSeconds = 60.0
    private var backoff: BackoffConfiguration
    /// Per account (found from outside: one time for all, so one account's line hid the next
    /// hour's of every other).
    private var lastScopeMismatchLog: [String: Date] = [:]
    private let logger: Logger
    private let metrics: RelayMetrics
    private let clock: any RelayClock
    /// Told every hold in force whenever one is set (`holds`): the outbox keeps them, and the
    /// next start restores them (`restore`).
    private var holdsChanged: (@Sendable ([String: Date]) -> Void)?

    /// - Parameters:
    ///   - accounts: each account's rate limit.
    ///   - history: when requests of a previous run were answered (or given up), per account, to seed the windows.
    ///   - credentials: each account's credentials fingerprint (none: a refusal is never lifted by a change).
    public init(accounts: [String: RateLimitConfiguration], globalRateLimit: RateLimitConfiguration = .init(requests: 0),
                breaker: CircuitBreakerConfiguration, workers: Int, backoff: BackoffConfiguration = .init(),
                history: [String: [Date]] = [:], credentials: [String: String] = [:],
                logger: Logger, metrics: RelayMetrics, clock: any RelayClock = SystemClock()) {
        for (id, limit) in accounts {
            self.accounts[id] = AccountState(limiter: SlidingWindowLimiter(limit: limit.requests, window: limit.perSeconds, history: history[id] ?? []),
                                             credentials: credentials[id])
        }
        global = SlidingWindowLimiter(limit: globalRateLimit.requests, window: globalRateLimit.perSeconds, history: history.values.flatMap { $0 })
        self.breaker = CircuitBreaker(failures: breaker.failures, cooldown: breaker.cooldownSeconds)
        self.workers = max(1, workers)
        self.backoff = backoff
        self.logger = logger
        self.metrics = metrics
        self.clock = clock
    }

    /// One account (`default`), as before accounts existed.
    public init(rateLimit: RateLimitConfiguration, breaker: CircuitBreakerConfiguration, history: [Date],
                logger: Logger, metrics: RelayMetrics, clock: any RelayClock = SystemClock()) {
        self.init(accounts: [AccountConfiguration.defaultID: rateLimit], breaker: breaker, workers: 256,
                  history: [AccountConfiguration.defaultID: history], logger: logger, metrics: metrics, clock: clock)
    }

    private func now() -> Date { clock.now }

    // MARK: - Holds that outlive a restart

    /// Every pause, open circuit and credentials back-off still in force, by scope: `partner`,
    /// `circuit`, `account:<id>`, `credentials:<id>#<fingerprint of the credentials refused>`
    /// (`credentials:<id>` when the gate was given none), `token:<id>#<fingerprint>` for a
    /// back-off that began with a failed token request (which a reload ends; kept apart so a
    /// restart knows it: found from outside, restored as a refusal it outlived every reload, up
    /// to `max_seconds` since a token endpoint's `Retry-After` counts).
    public func holds() -> [String: Date] {
        let current = now()
        var holds: [String: Date] = [:]
        if pausedUntil > current { holds["partner"] = pausedUntil }
        if case .open(let until) = breaker.state, until > current { holds["circuit"] = until }
        for (id, account) in accounts {
            if account.pausedUntil > current { holds["account:" + id] = account.pausedUntil }
            if account.credentialsBlockedUntil > current {
                holds[(account.blockedForToken ? "token:" : "credentials:") + id + (account.credentials.map { "#" + $0 } ?? "")] =
                    account.credentialsBlockedUntil
            }
        }
        return holds
    }

    /// Where the holds go when one is set (the outbox, written off the gate).
    public func onHoldsChanged(_ handler: @escaping @Sendable ([String: Date]) -> Void) {
        holdsChanged = handler
    }

    /// The holds a previous run left (`holds`), those still in the future: a restart no longer
    /// sends at once to a partner that asked it to wait (found from outside: 4 requests within
    /// 4 s of a restart, 114 s before the Retry-After ended; a circuit open for 120 s, and a
    /// refused account's back-off, the same). A back-off for credentials other than the
    /// account's now is not restored: the operator changed them, maybe to fix the refusal (found
    /// from outside: a fixed secret and a restart, and the account still waited out an hour's
    /// back-off). Returns those accounts, with the end of the back-off not restored.
    @discardableResult
    public func restore(_ holds: [String: Date]) -> [String: Date] {
        let current = now()
        var lifted: [String: Date] = [:]
        for (scope, until) in holds where until > current {
            let fields = LogFields(extra: ["until": Timestamp.string(until)])
            if scope == "partner" {
                pausedUntil = max(pausedUntil, until)
                logger.event(.warning, "partner.paused", "the partner's pause from before the restart is still in force; every account waits", fields)
            } else if scope == "circuit" {
                breaker.restoreOpen(until: until)
                metrics.circuitOpen.record(1)
                logger.event(.error, "partner.circuit_opened", "the circuit opened before the restart is still open; sending paused", fields)
            } else if let id = account(holding: scope, prefix: "account:") {
                accounts[id]!.pausedUntil = max(accounts[id]!.pausedUntil, until)
                guard accounts[id]!.configured else { continue }
                logger.event(.warning, "partner.paused", "the partner's pause of this account from before the restart is still in force; its events wait",
                             LogFields(account: id, extra: ["until": Timestamp.string(until)]))
            } else if scope.hasPrefix("credentials:") || scope.hasPrefix("token:") {
                // `credentials:<id>#<fingerprint>`; a hold written before fingerprints has none.
                let forToken = scope.hasPrefix("token:")
                let parts = scope.split(separator: "#", maxSplits: 1)
                guard let id = account(holding: String(parts[0]), prefix: forToken ? "token:" : "credentials:") else { continue }
                if !accounts[id]!.configured, parts.count == 2 {
                    // Refused with these: a reload adding it back with others lifts the back-off.
                    accounts[id]!.credentials = String(parts[1])
                }
                if parts.count == 2, let credentials = accounts[id]!.credentials, credentials != parts[1] {
                    lifted[id] = until
                    continue
                }
                accounts[id]!.credentialsBlockedUntil = max(accounts[id]!.credentialsBlockedUntil, until)
                accounts[id]!.credentialFailures = max(accounts[id]!.credentialFailures, 1)
                accounts[id]!.blockedForToken = forToken
                guard accounts[id]!.configured else { continue }
                if forToken {
                    logger.event(.error, "auth.rejected", "no token could be had for this account before the restart (its token endpoint failed "
                                 + "or asked to wait); its events wait until the back-off ends, or a reload once the endpoint is back",
                                 LogFields(account: id, error: TransportFailure.tokenUnavailable.rawValue, extra: ["until": Timestamp.string(until)]))
                } else {
                    logger.event(.error, "auth.rejected", "the partner refused this account's credentials before the restart; its events wait until the back-off ends",
                                 LogFields(account: id, extra: ["until": Timestamp.string(until)]))
                }
            }
        }
        return lifted
    }

    /// The wall clock stepped by `seconds` (`ClockStepDetector`; negative: back). Every pause,
    /// open circuit and credentials back-off moves with it, so each keeps the wait it had left:
    /// a clock an hour fast, set right, no longer held them for an hour, and one set forward no
    /// longer ends the partner's `Retry-After` early. The heartbeat stores them, moved: with the
    /// outbox's rebase for a step back (`Outbox.beginRebase`), just after the outbox's windows
    /// moved for a step forward (`Heartbeat.moveForward`). The rate windows move
    /// forward too (a step forward emptied them: found from outside); a step back needs nothing
    /// there, an answer "ahead" of the clock counts as answered at the step
    /// (`SlidingWindowLimiter.earliestAllowed`).
    ///
    /// `settle`: run last, in the same turn of the gate (`GuardedWallClock.settle` for a step
    /// forward): no request is admitted between its times moving and its clock reading the new
    /// time (a limiter asked in between would take its answers, "ahead" of the old time, for a
    /// step back, and lose the move).
    public func clockStepped(by seconds: Double, settle: (@Sendable () -> Void)? = nil) {
        defer { settle?() }
        func moved(_ date: Date) -> Date { date == .distantPast ? date : date.addingTimeInterval(seconds) }
        pausedUntil = moved(pausedUntil)
        breaker.shift(by: seconds)
        global.shift(by: seconds)
        for id in Array(accounts.keys) {
            accounts[id]!.pausedUntil = moved(accounts[id]!.pausedUntil)
            accounts[id]!.credentialsBlockedUntil = moved(accounts[id]!.credentialsBlockedUntil)
            accounts[id]!.limiter.shift(by: seconds)
        }
    }

    /// The account a hold's scope names (`account:<id>`, `credentials:<id>`). One the config
    /// leaves out gets a state marked not configured, as a reload's removal leaves one: its
    /// holds are kept (stored again with every change) and apply if a reload adds it back
    /// (found from outside: re-added by a reload, an account sent at once though a 429's
    /// Retry-After and a refusal's back-off were still in force; a restart kept them).
    private func account(holding scope: String, prefix: String) -> String? {
        guard scope.hasPrefix(prefix) else { return nil }
        let id = String(scope.dropFirst(prefix.count))
        if accounts[id] == nil {
            guard AccountConfiguration.isValidID(id) else { return nil }
            // Its limits are the config's when a reload adds it back (`reconfigure`).
            let limit = RateLimitConfiguration()
            var state = AccountState(limiter: SlidingWindowLimiter(limit: limit.requests, window: limit.perSeconds))
            state.configured = false
            accounts[id] = state
        }
        return id
    }

    /// Applies a reload: accounts added or removed, new limits, breaker, workers. `history`: the
    /// answer times the outbox recorded within the longest new window, per account, for the
    /// windows a reload widens or turns on (`SlidingWindowLimiter.reconfigure`) and for accounts
    /// added (sent before, under an earlier config and a restart).
    /// `credentials`: each account's credentials fingerprint; an account whose credentials
    /// changed is refused no longer and starts its count afresh, and one waiting after a failed
    /// token request waits no longer either. Returns those accounts, with the end of the
    /// back-off lifted.
    @discardableResult
    public func reconfigure(accounts limits: [String: RateLimitConfiguration], globalRateLimit: RateLimitConfiguration,
                            breaker configuration: CircuitBreakerConfiguration, workers: Int, backoff: BackoffConfiguration,
                            history: [String: [Date]]? = nil, credentials: [String: String] = [:]) -> [String: Date] {
        let current = now()
        var lifted: [String: Date] = [:]
        for id in accounts.keys where limits[id] == nil { accounts[id]?.configured = false }
        for (id, limit) in limits {
            if accounts[id] == nil {
                accounts[id] = AccountState(limiter: SlidingWindowLimiter(limit: limit.requests, window: limit.perSeconds,
                                                                          history: history?[id] ?? []),
                                            credentials: credentials[id])
            } else {
                var changed = false
                if let new = credentials[id], new != accounts[id]!.credentials {
                    accounts[id]!.credentials = new
                    accounts[id]!.credentialFailures = 0
                    changed = true
                }
                // Other credentials end the wait (the operator's fix). So does any reload when
                // the wait began with a failed token request: the token endpoint may be back,
                // and nothing else could end the wait before its time (found from outside: up
                // to `max_seconds` after the outage, across restarts). Such a lift costs a token
                // request, never an attempt; failing again, it resumes at the next step. A
                // refusal by the partner with the same credentials is not lifted: each lift
                // would cost attempts, and a reload for another reason would end it.
                if accounts[id]!.credentialsBlockedUntil > current, changed || accounts[id]!.blockedForToken {
                    lifted[id] = accounts[id]!.credentialsBlockedUntil
                    accounts[id]!.credentialsBlockedUntil = .distantPast
                }
                // Back after a removal: its window still holds what it sent before.
                accounts[id]?.configured = true
                accounts[id]?.limiter.reconfigure(limit: limit.requests, window: limit.perSeconds,
                                                  history: history.map { $0[id] ?? [] })
            }
        }
        global.reconfigure(limit: globalRateLimit.requests, window: globalRateLimit.perSeconds,
                           history: history.map { $0.values.flatMap { $0 } })
        breaker.failures = configuration.failures
        breaker.cooldown = configuration.cooldownSeconds
        self.workers = max(1, workers)
        self.backoff = backoff
        if !lifted.isEmpty, let holdsChanged { holdsChanged(holds()) }
        return lifted
    }

    // MARK: - Admission

    /// Waits until some account may send (no partner pause, room in the global window, circuit
    /// closed or this is the probe, and an account with no pause and room in its window).
    /// Cancellation ends the wait (throws).
    ///
    /// `skipping`: accounts the outbox finds with nothing due (`QuietAccounts`), asked again after
    /// every wait here (a pause may end with new events). They take no place: with 500
    /// accounts, a place in each, a sort of all and 499 places given back made half the CPU of
    /// every delivery. When every account that could send is quiet, the admission offers none
    /// at once (the worker waits idle for the next event), as when the claim finds nothing.
    public func admit(skipping quietAccounts: @Sendable () -> Set<String> = { [] }) async throws -> Admission {
        var waitedForRate = false
        while true {
            try Task.checkCancellation()
            let current = now()
            if pausedUntil > current {
                try await sleep(until: pausedUntil)
                continue
            }
            let globalAt = global.earliestAllowed(now: current)
            if globalAt != current {
                // Only a window answered requests fill, not one idle workers' places fill (review).
                if !waitedForRate, global.filledByAnswered(now: current) {
                    waitedForRate = true
                    metrics.rateLimitWait(account: "")
                }
                try await sleep(until: globalAt, atMost: 0.25)
                continue
            }
            let keptFree = configuredCount > 1 && workers > 1 && held.count >= workers - 1
            let freshOnly = keptFree && held.count >= workers
            let quiet = quietAccounts()
            var places = reservePlaces(now: current, skipping: quiet, countingWaits: true)
            if places.isEmpty {
                if !quiet.isEmpty, anyReady(among: quiet, now: current) {
                    nextID += 1
                    held[nextID] = Held(probe: false, global: nil, places: [:])
                    return Admission(id: nextID, accounts: [], keptFree: keptFree, freshOnly: freshOnly)
                }
                try await sleep(until: nextReadiness(now: current), atMost: 0.25)
                continue
            }
            if keptFree {
                // Only a quiet account (nothing in flight) may have it: an account whose
                // requests hang (its token endpoint, a partner slow for its key) took it with
                // its own fresh events too, and every other account's waited for its timeout.
                // With none quiet the admission offers nothing: the worker waits for the next
                // stored event, as it does when none is fresh.
                for (id, ticket) in places where (accounts[id]?.permits ?? 0) > 0 {
                    accounts[id]?.limiter.cancel(ticket)
                    places[id] = nil
                }
            }
            switch breaker.admit(now: current) {
            case .wait(let until):
                for (id, ticket) in places { accounts[id]?.limiter.cancel(ticket) }
                try await sleep(until: until)
                continue
            case .send(let probe):
                return grant(places, probe: probe, keptFree: keptFree, freshOnly: freshOnly, now: current)
            }
        }
    }

    /// An admission now, for a worker to claim its next event while its current request is in
    /// flight, never at anyone's expense: nil while some worker has no request out (it is free
    /// to take that event at once itself; a prefetch would only make the event wait for another
    /// request), when it would have to wait (a pause, a full window, a circuit that is not
    /// closed, so never the half-open probe), and with several accounts: there, every worker
    /// busy means the next admission is the one kept free for fresh events, which a prefetch of
    /// the oldest due event must not take.
    public func tryAdmit() -> Admission? {
        let current = now()
        // A request out for every worker (bound permits; a prefetch is never bound). An
        // admission not bound yet is an idle worker looking: it may find nothing and wait for
        // the next event, which a claim ahead would then take from it.
        guard held.values.count(where: { $0.account != nil }) >= workers else { return nil }
        guard configuredCount == 1, pausedUntil <= current, global.earliestAllowed(now: current) == current, !breaker.isOpen else {
            return nil
        }
        let places = reservePlaces(now: current)
        guard !places.isEmpty else { return nil }
        return grant(places, probe: false, keptFree: false, freshOnly: false, now: current)
    }

    /// The accounts in the config (a removed one keeps its state, marked not configured).
    private var configuredCount: Int { accounts.values.count(where: \.configured) }

    /// A place in the window of every account that is ready now: configured, not paused nor
    /// refused, and with room in its window.
    ///
    /// `countingWaits` (an idle worker's admission, which knows the quiet accounts): an account
    /// with events due whose window its answered requests fill counts one wait in
    /// `rate_limit_waits_total`, until it has a place again (found from outside: only the global
    /// window's waits were counted, and an account held back by its `rate_limit` for 12 s had no
    /// series at all). Not a window that other idle workers' admissions help fill: an idle
    /// daemon counted ~58 a second, and a trickle far below the limit counted too (review).
    private func reservePlaces(now current: Date, skipping quiet: Set<String> = [],
                               countingWaits: Bool = false) -> [String: SlidingWindowLimiter.Ticket] {
        var places: [String: SlidingWindowLimiter.Ticket] = [:]
        for (id, account) in accounts where Self.mayAsk(account, now: current) && !quiet.contains(id) {
            if let ticket = accounts[id]?.limiter.reserve(now: current) {
                places[id] = ticket
                accounts[id]?.rateWaitCounted = false
            } else if countingWaits, !account.rateWaitCounted, accounts[id]?.limiter.filledByAnswered(now: current) == true {
                accounts[id]?.rateWaitCounted = true
                metrics.rateLimitWait(account: id)
            }
        }
        return places
    }

    /// Configured, and neither paused nor refused: it may have a place if its window has room.
    private static func mayAsk(_ account: AccountState, now current: Date) -> Bool {
        account.configured && account.pausedUntil <= current && account.credentialsBlockedUntil <= current
    }

    /// Whether one of `ids` could send now (as `reservePlaces` would take it: room in its window too).
    private func anyReady(among ids: Set<String>, now current: Date) -> Bool {
        ids.contains { id in
            guard let account = accounts[id], Self.mayAsk(account, now: current) else { return false }
            return accounts[id]?.limiter.earliestAllowed(now: current).map { $0 <= current } ?? false
        }
    }

    private func grant(_ places: [String: SlidingWindowLimiter.Ticket], probe: Bool, keptFree: Bool, freshOnly: Bool,
                       now current: Date) -> Admission {
        for id in places.keys { accounts[id]?.busy += 1 }
        // Fewest requests in flight or about to be first, then least recently served (then by
        // id: a stable order).
        let order = places.keys.map { (accounts[$0]!.permits + accounts[$0]!.leading, accounts[$0]!.lastServed, $0) }
            .sorted { $0 < $1 }.map(\.2)
        if let first = order.first { accounts[first]?.leading += 1 }
        nextID += 1
        held[nextID] = Held(probe: probe, global: global.reserve(now: current), places: places, first: order.first)
        return Admission(id: nextID, accounts: order, keptFree: keptFree, freshOnly: freshOnly)
    }

    /// When an account that cannot send now may send again (its pause, back-off or window
    /// ends), for idle workers to look again then; nil when none is waiting on time.
    public func nextReadiness() -> Date? {
        nextReadiness(now: now())
    }

    /// The earliest time an account's pause, back-off or window ends (nil: waiting on requests in flight).
    private func nextReadiness(now: Date) -> Date? {
        var earliest: Date?
        for id in Array(accounts.keys) {
            guard let account = accounts[id], account.configured else { continue }
            var at = max(account.pausedUntil, account.credentialsBlockedUntil)
            if at <= now {
                guard let allowed = accounts[id]?.limiter.earliestAllowed(now: now) else { continue }
                at = allowed
            }
            if at > now { earliest = min(earliest ?? at, at) }
        }
        return earliest
    }

    /// The claim found nothing (or failed): every place goes back, and a probe too.
    public func release(_ admission: Admission) {
        guard let entry = held.removeValue(forKey: admission.id) else { return }
        if let first = entry.first { accounts[first]?.leading -= 1 }
        cancelPlaces(entry)
        if let ticket = entry.global { global.cancel(ticket) }
        if entry.probe { breaker.cancelProbe() }
    }

    /// The claimed event is `account`'s: its place is kept, the others go back.
    public func bind(_ admission: Admission, to account: String) -> Permit {
        guard var entry = held[admission.id] else { return Permit(id: admission.id, account: account, probe: false) }
        if let first = entry.first { accounts[first]?.leading -= 1 }
        entry.first = nil
        let kept = entry.places.removeValue(forKey: account)
        cancelPlaces(entry)
        entry.places = kept.map { [account: $0] } ?? [:]
        entry.account = account
        if kept == nil { accounts[account]?.busy += 1 }
        served += 1
        accounts[account]?.lastServed = served
        accounts[account]?.permits += 1
        held[admission.id] = entry
        return Permit(id: admission.id, account: account, probe: entry.probe)
    }

    private func cancelPlaces(_ entry: Held) {
        for (id, ticket) in entry.places {
            accounts[id]?.limiter.cancel(ticket)
            accounts[id]?.busy -= 1
        }
    }

    /// Whether the permit's first request may still go: the account or the partner was paused,
    /// the account's credentials refused, or the circuit opened since the admission. If not,
    /// the event is handed back (the request would only wait, holding its lease and worker).
    public func maySend(_ permit: Permit) -> Bool {
        let current = now()
        guard let account = accounts[permit.account], account.configured else { return false }
        if pausedUntil > current || account.pausedUntil > current || account.credentialsBlockedUntil > current { return false }
        return permit.probe || !breaker.isOpen
    }

    // MARK: - Requests

    /// Runs one request in a place of the windows: the permit's own places for its first
    /// request; with `permit == nil` (the resend after a 401 for `account`, of the request
    /// made with `resendOf`) it waits for room. The places are kept until `window` after
    /// `request` returned. Throws, sending nothing, when cancelled, when `giveUp` says so, when
    /// the permit may no longer send (`maySend`), or, for a resend, during a pause, a
    /// credentials back-off or an open circuit (but for the probe's own resend).
    public nonisolated func withSlot<T: Sendable>(
        _ permit: Permit?, account: String, resendOf: Permit? = nil, giveUp: @escaping @Sendable () -> Bool = { false },
        _ request: @Sendable () async -> T
    ) async throws -> T {
        let places = try await takePlaces(permit, account: account, resendOf: resendOf, giveUp: giveUp)
        let result = await request()
        await finish(places, account: account)
        return result
    }

    /// Whether the resend after a 401 of the request made with `resendOf` may go now (`withSlot`
    /// decides again when it is made): asked before its fresh token is fetched, which would be
    /// a token request for nothing (found from outside).
    public func mayResend(account: String, resendOf: Permit?) -> Bool {
        !resendBlocked(account: account, resendOf: resendOf, now: now())
    }

    /// A pause, a credentials back-off or an open circuit that began since the first request
    /// of a 401's resend (found from outside: it went during a 429's `Retry-After` another
    /// worker had just been given). Only the probe's own resend goes while the circuit is half
    /// open: it is the probe.
    private func resendBlocked(account: String, resendOf: Permit?, now current: Date) -> Bool {
        guard let state = accounts[account] else { return true }
        let probesResend = resendOf?.probe == true && breaker.state == .halfOpen(probeInFlight: true)
        return (breaker.isOpen && !probesResend) || pausedUntil > current || state.pausedUntil > current
            || state.credentialsBlockedUntil > current
    }

    private func takePlaces(_ permit: Permit?, account: String, resendOf: Permit?, giveUp: @Sendable () -> Bool) async throws
        -> (account: SlidingWindowLimiter.Ticket?, global: SlidingWindowLimiter.Ticket?) {
        // A first send that may no longer go is not sent: its places go back at `settle`.
        if let permit, !maySend(permit) { throw CancellationError() }
        if let permit, var entry = held[permit.id] {
            let places = (entry.places.removeValue(forKey: account), entry.global)
            entry.global = nil
            held[permit.id] = entry
            if places.0 != nil { return places }
            if let ticket = places.1 { global.cancel(ticket) }
        }
        var waited = false
        while true {
            try Task.checkCancellation()
            if giveUp() { throw CancellationError() }
            let current = now()
            guard let state = accounts[account], state.configured else { throw CancellationError() }
            // The resend after a 401 (no permit) does not go during a pause, a credentials
            // back-off or an open circuit that began since its first request (found from
            // outside: it went during a 429's `Retry-After` another worker had just been given).
            // Only the probe's own resend goes while the circuit is half open: it is the probe.
            if permit == nil, resendBlocked(account: account, resendOf: resendOf, now: current) { throw CancellationError() }
            if accounts[account]?.limiter.earliestAllowed(now: current) == current, global.earliestAllowed(now: current) == current,
               let ticket = accounts[account]?.limiter.reserve(now: current) {
                return (ticket, global.reserve(now: current))
            }
            if !waited {
                waited = true
                metrics.rateLimitWait(account: account)
            }
            let next = [accounts[account]?.limiter.earliestAllowed(now: current), global.earliestAllowed(now: current)]
                .compactMap { $0 }.max()
            try await sleep(until: next, atMost: 0.25)
        }
    }

    private func finish(_ places: (account: SlidingWindowLimiter.Ticket?, global: SlidingWindowLimiter.Ticket?), account: String) {
        let current = now()
        if let ticket = places.account { accounts[account]?.limiter.finish(ticket, now: current) }
        if let ticket = places.global { global.finish(ticket, now: current) }
    }

    // MARK: - Settling

    /// Settles a permit, once, on every path: the breaker hears what the attempt showed (a probe
    /// that sent nothing is given back), the account's pause, back-off and share are updated,
    /// and places never used go back.
    public func settle(_ permit: Permit, _ report: AttemptReport) {
        // Set where a hold starts or ends before its time (the circuit closing): the outbox is
        // told the holds in force then, and only then (not per request).
        var holdsMoved = false
        defer { if holdsMoved, let holdsChanged { holdsChanged(holds()) } }
        let current = now()
        if let entry = held.removeValue(forKey: permit.id) {
            cancelPlaces(entry)
            if let ticket = entry.global { global.cancel(ticket) }
            // The bound account's busy count: its place was moved out by `takePlaces` (or cancelled just above).
            if entry.places[permit.account] == nil { accounts[permit.account]?.busy -= 1 }
            if entry.account != nil { accounts[permit.account]?.permits -= 1 }
        }
        switch report.health {
        case .untested:
            if permit.probe { breaker.cancelProbe() }
        case .up:
            if breaker.recordSuccess() {
                holdsMoved = true
                metrics.circuitOpen.record(0)
                logger.event(.notice, "partner.circuit_closed", "partner answers again; circuit closed")
            }
        case .down:
            if breaker.recordFailure(now: current) {
                holdsMoved = true
                metrics.circuitOpen.record(1)
                // `triggered_by`, not `account`: every account waits, and an alert that groups
                // by `account` must not read it as one customer's (found from outside: an
                // outage of one customer's requests read as the partner's, with no way to tell).
                logger.event(.error, "partner.circuit_opened", "partner failing; sending paused",
                             LogFields(extra: ["triggered_by": permit.account],
                                       numbers: ["cooldown_seconds": breaker.cooldown, "failures": Double(breaker.failures)]))
            }
        }
        if let until = report.partnerPauseUntil, until > pausedUntil {
            pausedUntil = until
            holdsMoved = true
            logger.event(.warning, "partner.paused", "partner asked to retry later; every account waits",
                         LogFields(extra: ["until": Timestamp.string(until), "triggered_by": permit.account]))
        }
        guard accounts[permit.account] != nil else { return }
        if report.status == 429 { noteRateLimited(permit.account, now: current) }
        if let until = report.accountPauseUntil, until > accounts[permit.account]!.pausedUntil {
            accounts[permit.account]!.pausedUntil = until
            holdsMoved = true
            logger.event(.warning, "partner.paused", "partner asked this account to retry later; its events wait",
                         LogFields(account: permit.account, extra: ["until": Timestamp.string(until)]))
        }
        if report.credentialsRejected || report.tokenUnavailable, let used = report.credentials,
           let inForce = accounts[permit.account]!.credentials, used != inForce {
            // Refused or unusable credentials that a reload replaced while the request was out.
            return
        }
        if report.credentialsRejected {
            // As for a missing token: the requests out together when the first refusal came
            // add no step of their own (found from outside: with four workers each refusal
            // counted, and one round took the back-off four steps, to its cap in three rounds).
            // Nothing is sent while the block lasts, so a refusal within it is one of those.
            guard accounts[permit.account]!.credentialsBlockedUntil <= current else { return }
            var message = "the partner refuses this account's credentials even freshly minted; its events wait"
            var fields = LogFields(account: permit.account, status: 401)
            if let offset = report.partnerClockOffset, abs(offset) >= Self.clockHintSeconds {
                // Found from outside: with the relay's clock an hour off, the partner refused every
                // token (a JWT's `exp` read against its clock) and the line said only "credentials".
                let seconds = Int(offset.rounded())
                message += "; the partner's clock is \(abs(seconds)) s \(seconds > 0 ? "ahead of" : "behind") the relay's (its Date header): "
                    + "a token it reads as expired or too long-lived is refused like wrong credentials; check the relay's time (NTP)"
                fields.numbers["partner_clock_offset_seconds"] = Double(seconds)
            }
            blockCredentials(permit.account, now: current, message, fields)
            accounts[permit.account]!.blockedForToken = false
            holdsMoved = true
        } else if report.tokenUnavailable {
            // Every worker holding one of the account's events meets the same failure: one
            // back-off step per wait, not one per event.
            guard accounts[permit.account]!.credentialsBlockedUntil <= current else { return }
            blockCredentials(permit.account, now: current, "no token could be had for this account; its events wait",
                             LogFields(account: permit.account, error: TransportFailure.tokenUnavailable.rawValue),
                             atLeastUntil: report.tokenRetryAfter)
            accounts[permit.account]!.blockedForToken = true
            holdsMoved = true
        } else if report.status != nil && report.status != 401 {
            accounts[permit.account]!.credentialFailures = 0
        }
    }

    /// The account's credentials back-off: its n-th failure in a row blocks it for the
    /// backoff's n-th delay, logged as `auth.rejected` with `fields` plus `until` and the count.
    /// `atLeastUntil`: the token endpoint's `Retry-After`, when longer (capped at `max_seconds`).
    private func blockCredentials(_ account: String, now current: Date, _ message: String, _ fields: LogFields,
                                  atLeastUntil: Date? = nil) {
        accounts[account]!.credentialFailures += 1
        let failures = accounts[account]!.credentialFailures
        var until = current.addingTimeInterval(backoff.baseDelay(attempt: failures))
        if let asked = atLeastUntil, asked > until {
            until = min(asked, current.addingTimeInterval(backoff.maxSeconds))
        }
        accounts[account]!.credentialsBlockedUntil = until
        var fields = fields
        fields.extra["until"] = Timestamp.string(until)
        fields.numbers["consecutive_rejections"] = Double(failures)
        logger.event(.error, "auth.rejected", message, fields)
    }

    /// A 429 although the account's own window had room: the partner's limit is not what the
    /// relay keeps (per partner rather than per api-key, or lower). Said once an hour.
    private func noteRateLimited(_ account: String, now current: Date) {
        guard var limiter = accounts[account]?.limiter else { return }
        let count = limiter.count(now: current)
        guard limiter.limit == 0 || count < limiter.limit else { return }
        // Once an hour per account; a clock that went back since starts the hour again.
        let last = lastScopeMismatchLog[account] ?? .distantPast
        guard current.timeIntervalSince(last) >= 3600 || current < last else { return }
        lastScopeMismatchLog[account] = current
        // Without a limit of its own there is no window to have room (found from outside: the
        // line said so, and advised the global limit first).
        let message = limiter.limit == 0
            ? "the partner answered 429 and this account has no rate limit of its own (rate_limit.requests 0): set the partner's limit "
                + "(partner.rate_limit, or the account's), or partner.global_rate_limit if it is per partner"
            : "the partner answered 429 while this account's window had room: its limit may be per partner; set partner.global_rate_limit"
        logger.event(.warning, "partner.rate_scope_mismatch", message,
                     LogFields(account: account, status: 429,
                               numbers: ["window_requests": Double(count), "rate_limit": Double(limiter.limit)]))
    }

    /// Sleeps until `date`, at most `limit` seconds (a pause or a limit may change meanwhile);
    /// `nil` (waiting on something in flight) polls every 50 ms.
    private func sleep(until date: Date?, atMost limit: Double = 1) async throws {
        let seconds = date.map { max(0.001, min($0.timeIntervalSince(now()), limit)) } ?? 0.05
        try await clock.sleep(until: now().addingTimeInterval(seconds))
    }

    /// What an operator or a test may see of one account.
    public struct AccountView: Sendable, Equatable {
        public var pausedUntil: Date?
        public var credentialsRejectedUntil: Date?
        public var busy: Int
        public var windowRequests: Int
    }

    public func view(_ account: String) -> AccountView? {
        guard var state = accounts[account], state.configured else { return nil }
        let current = now()
        return AccountView(
            pausedUntil: state.pausedUntil > current ? state.pausedUntil : nil,
            credentialsRejectedUntil: state.credentialsBlockedUntil > current ? state.credentialsBlockedUntil : nil,
            busy: state.busy, windowRequests: state.limiter.count(now: current))
    }
}
