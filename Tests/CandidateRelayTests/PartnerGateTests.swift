import CandidateRelayTesting
import Foundation
import Logging
import Synchronization
import Testing
@testable import CandidateRelay

/// The gate on a manual clock: no test here sleeps or waits on a timeout; time moves when the
/// test says so.
@Suite struct PartnerGateTests {
    static let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

    static func gate(_ clock: ManualClock, requests: Int = 100, perSeconds: Double = 60, failures: Int = 5,
                     cooldown: Double = 30) -> PartnerGate {
        PartnerGate(rateLimit: RateLimitConfiguration(requests: requests, perSeconds: perSeconds),
                    breaker: CircuitBreakerConfiguration(failures: failures, cooldownSeconds: cooldown),
                    history: [], logger: logger, metrics: RelayMetrics(), clock: clock)
    }

    /// Several accounts (each `requests`/`perSeconds`), `workers` workers.
    static func gate(_ clock: ManualClock, accounts: [String], requests: Int = 100, perSeconds: Double = 60, workers: Int = 4,
                     global: RateLimitConfiguration = .init(requests: 0), credentials: [String: String] = [:],
                     logger: Logger = logger) -> PartnerGate {
        PartnerGate(accounts: limits(accounts, requests: requests, perSeconds: perSeconds),
                    globalRateLimit: global, breaker: CircuitBreakerConfiguration(failures: 5, cooldownSeconds: 30), workers: workers,
                    backoff: BackoffConfiguration(initialSeconds: 5, multiplier: 2, maxSeconds: 60), credentials: credentials,
                    logger: logger, metrics: RelayMetrics(), clock: clock)
    }

    static func limits(_ accounts: [String], requests: Int = 100, perSeconds: Double = 60) -> [String: RateLimitConfiguration] {
        Dictionary(uniqueKeysWithValues: accounts.map { ($0, RateLimitConfiguration(requests: requests, perSeconds: perSeconds)) })
    }

    /// Starts `operation` and waits (for a signal, not a guess) until it sleeps on the clock.
    static func parked<T: Sendable>(_ clock: ManualClock, _ operation: @escaping @Sendable () async throws -> T) async -> Task<T, any Error> {
        let before = clock.sleeping
        let task = Task { try await operation() }
        _ = await eventually(timeout: 10, interval: 0.001) { clock.sleeping > before }
        return task
    }

    /// One request of `account` through the gate, answered with `report`.
    static func send(_ gate: PartnerGate, _ account: String, _ report: AttemptReport = AttemptReport(health: .up, status: 201)) async throws {
        let admission = try await gate.admit()
        let permit = await gate.bind(admission, to: account)
        try await gate.withSlot(permit, account: account) {}
        await gate.settle(permit, report)
    }

    static let down = AttemptReport(health: .down, status: 503)

    /// Found from outside: a worker waiting because an account's own window was full was not
    /// counted (only the global window's waits were), so the account's series never appeared.
    /// Counted once while the account waits, with other accounts configured too; not for a
    /// window that idle workers' admissions hold (review: an idle daemon counted ~58 a second).
    @Test func aWaitForAnAccountsOwnWindowIsCounted() async throws {
        let clock = ManualClock()
        let metrics = RelayMetrics()
        let gate = PartnerGate(accounts: Self.limits(["acme", "idle"], requests: 1, perSeconds: 10),
                               globalRateLimit: .init(requests: 0), breaker: CircuitBreakerConfiguration(failures: 5, cooldownSeconds: 30),
                               workers: 4, backoff: BackoffConfiguration(initialSeconds: 5, multiplier: 2, maxSeconds: 60),
                               logger: Self.logger, metrics: metrics, clock: clock)
        let series = #"candidate_relay_rate_limit_waits_total{account="acme"} "#
        // An idle worker's admission holds each window's one place: the next worker waits, and
        // that is no wait for the rate.
        let idle = try await gate.admit()
        let parked = await Self.parked(clock) { try await gate.admit() }
        #expect(!metrics.exposition().contains("candidate_relay_rate_limit_waits_total{account="), "\(metrics.exposition())")
        parked.cancel()
        _ = await parked.result
        try await gate.withSlot(await gate.bind(idle, to: "acme"), account: "acme") {}
        // acme's window is full of its own request: the next admission offers `idle` only, and
        // acme's wait is counted, with another account configured (found from outside: none was).
        let other = try await gate.admit()
        #expect(other.accounts == ["idle"])
        #expect(metrics.exposition().contains(series + "1"), "\(metrics.exposition())")
        // Still waiting: counted once per wait, not once per look.
        let again = await Self.parked(clock) { try await gate.admit() }
        #expect(metrics.exposition().contains(series + "1"))
        #expect(!metrics.exposition().contains(#"candidate_relay_rate_limit_waits_total{account="idle"}"#))
        again.cancel()
        _ = await again.result
        clock.advance(10)
        try await gate.withSlot(await gate.bind(other, to: "idle"), account: "idle") {}
        #expect(try await gate.admit().accounts.contains("acme"))
        #expect(metrics.exposition().contains(series + "1"))
    }

    /// Review: a window that one answered request and idle workers' places fill is no wait for
    /// the rate, for an account's window or the global one (a trickle far below the limit, and
    /// an idle daemon with a global limit, counted waits).
    @Test func aTrickleAndIdleWorkersPlacesAreNoWaitForTheRate() async throws {
        let clock = ManualClock()
        let metrics = RelayMetrics()
        let gate = PartnerGate(accounts: Self.limits(["acme"], requests: 2, perSeconds: 10),
                               globalRateLimit: .init(requests: 2, perSeconds: 10), breaker: CircuitBreakerConfiguration(failures: 5, cooldownSeconds: 30),
                               workers: 4, backoff: BackoffConfiguration(initialSeconds: 5, multiplier: 2, maxSeconds: 60),
                               logger: Self.logger, metrics: metrics, clock: clock)
        try await Self.send(gate, "acme")  // one answered: each window holds 1 of 2
        _ = try await gate.admit()  // an idle worker's admission holds the other place of each
        let parked = await Self.parked(clock) { try await gate.admit() }
        #expect(!metrics.exposition().contains("candidate_relay_rate_limit_waits_total{"), "\(metrics.exposition())")
        parked.cancel()
        _ = await parked.result
    }

    /// The prefetch admission (`tryAdmit`) never waits and never takes what someone else would
    /// have: an event a free worker can take at once, a place of a full window, an open or
    /// probing circuit's request, the worker kept free for fresh events.
    @Test func aPrefetchIsAdmittedOnlyWhenEveryWorkerIsBusyAndNothingWouldWait() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, accounts: ["default"], requests: 2, perSeconds: 60, workers: 1)
        #expect(await gate.tryAdmit() == nil)  // the one worker holds nothing: it takes the event itself
        let busy = await gate.bind(try await gate.admit(), to: "default")
        let prefetch = try #require(await gate.tryAdmit())
        #expect(prefetch.keptFree == false)
        #expect(await gate.tryAdmit() == nil)  // the window (2 per 60 s) is full
        await gate.release(prefetch)
        try await gate.withSlot(busy, account: "default") {}
        await gate.settle(busy, Self.down)

        let breaking = Self.gate(ManualClock(), accounts: ["default"], workers: 1)
        let held = await breaking.bind(try await breaking.admit(), to: "default")
        for _ in 0..<5 { try await Self.send(breaking, "default", Self.down) }  // opens the circuit
        #expect(await breaking.tryAdmit() == nil)
        await breaking.settle(held, AttemptReport(health: .up, status: 201))

        // Two accounts: every busy worker leaves only the one kept free for fresh events.
        let accounts = Self.gate(ManualClock(), accounts: ["a", "b"], workers: 2)
        let first = await accounts.bind(try await accounts.admit(), to: "a")
        let second = await accounts.bind(try await accounts.admit(), to: "b")
        #expect(await accounts.tryAdmit() == nil)
        await accounts.settle(first, AttemptReport(health: .up, status: 201))
        await accounts.settle(second, AttemptReport(health: .up, status: 201))
    }

    /// Accounts the outbox found with nothing due take no place; when every account that could
    /// send is quiet the admission offers none at once (the worker then waits idle for the next
    /// event) instead of waiting at the gate.
    @Test(.timeLimit(.minutes(1))) func quietAccountsTakeNoPlace() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, accounts: ["a", "b", "c"], requests: 1, workers: 4)
        let some = try await gate.admit(skipping: { ["a", "b"] })
        #expect(some.accounts == ["c"])
        await gate.release(some)
        let none = try await gate.admit(skipping: { ["a", "b", "c"] })
        #expect(none.accounts.isEmpty)
        await gate.release(none)
        // c's place was given back with the release: c still has its one request.
        let c = try await gate.admit(skipping: { ["a", "b"] })
        #expect(c.accounts == ["c"])
        let sent = await gate.bind(c, to: "c")
        try await gate.withSlot(sent, account: "c") {}
        await gate.settle(sent, AttemptReport(health: .up, status: 201))
        // c's window is full now, a and b are quiet: nothing could send but a and b.
        #expect(try await gate.admit(skipping: { ["a", "b"] }).accounts.isEmpty)
    }

    /// A worker whose request is out and that already claimed ahead counts once: with one
    /// worker idle, nobody claims ahead (the idle one takes the event at once).
    @Test func aPrefetchDoesNotCountAsABusyWorker() async throws {
        let gate = Self.gate(ManualClock(), accounts: ["default"], workers: 3)
        let a = await gate.bind(try await gate.admit(), to: "default")
        let b = await gate.bind(try await gate.admit(), to: "default")
        let c = await gate.bind(try await gate.admit(), to: "default")
        let ahead = try #require(await gate.tryAdmit())  // all three busy: b claims ahead
        try await gate.withSlot(a, account: "default") {}
        await gate.settle(a, AttemptReport(health: .up, status: 201))  // a is idle now
        #expect(await gate.tryAdmit() == nil)
        // b's request ends and its claimed-ahead event becomes its request: still one each.
        try await gate.withSlot(b, account: "default") {}
        await gate.settle(b, AttemptReport(health: .up, status: 201))
        let next = await gate.bind(ahead, to: "default")
        #expect(await gate.tryAdmit() == nil)
        await gate.settle(next, .nothingSent)
        await gate.settle(c, .nothingSent)
    }

    /// An admission given back unused returns its place in the global window too (with
    /// `partner.global_rate_limit` set, idle workers' empty claims used to fill it for good).
    @Test func aReleasedAdmissionGivesBackItsGlobalPlace() async throws {
        let gate = Self.gate(ManualClock(), accounts: ["default"], workers: 1, global: .init(requests: 1, perSeconds: 60))
        let admitted = Mutex(0)
        let task = Task {
            for _ in 0..<3 {
                await gate.release(try await gate.admit())
                admitted.withLock { $0 += 1 }
            }
        }
        #expect(await eventually(timeout: 10, interval: 0.01) { admitted.withLock { $0 } == 3 })
        task.cancel()
    }

    /// The resend after a 401 on the circuit's single probe must not wait for that probe.
    @Test func resendDuringAProbeDoesNotWaitForItself() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, requests: 100, failures: 1, cooldown: 0.05)
        try await Self.send(gate, "default", Self.down)
        clock.advance(0.05)
        let permit = await gate.bind(try await gate.admit(), to: "default")
        #expect(permit.probe)
        #expect(try await gate.withSlot(nil, account: "default", resendOf: permit) { true })  // returns without the clock moving
        // Another request's resend does not go beside the probe (review): the circuit is half open.
        let other = PartnerGate.Permit(id: -1, account: "default", probe: false)
        await #expect(throws: CancellationError.self) { try await gate.withSlot(nil, account: "default", resendOf: other) { true } }
    }

    @Test func aCancelledProbeLetsTheNextRequestProbe() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, failures: 1, cooldown: 0.05)
        try await Self.send(gate, "default", Self.down)
        clock.advance(0.05)
        let probe = await gate.bind(try await gate.admit(), to: "default")
        #expect(probe.probe)
        await gate.settle(probe, .nothingSent)
        let next = await gate.bind(try await gate.admit(), to: "default")
        #expect(next.probe)
    }

    /// A first send admitted before the partner said Retry-After does not go (the event is
    /// handed back), and neither does the 401 resend of an attempt already under way (found
    /// from outside: it went during the pause; CONTRACT section 5 pauses every worker).
    @Test func aPauseOrderedAfterTheAdmissionStopsTheFirstSendAndA401sResend() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock)
        let waiting = await gate.bind(try await gate.admit(), to: "default")
        try await Self.send(gate, "default", AttemptReport(health: .untested, status: 429, accountPauseUntil: clock.now.addingTimeInterval(30)))
        #expect(await gate.maySend(waiting) == false)
        await gate.settle(waiting, .nothingSent)
        await #expect(throws: CancellationError.self) { try await gate.withSlot(nil, account: "default") { true } }
        let admitted = await Self.parked(clock) { try await gate.admit() }
        clock.advance(30)
        #expect(try await admitted.value.accounts == ["default"])
        #expect(try await gate.withSlot(nil, account: "default") { true })
    }

    /// The same for a partner's pause (a 503's Retry-After), a credentials back-off and a
    /// circuit's cooldown; a half-open circuit's request in flight may resend (its own probe).
    @Test func aResendDoesNotGoDuringAPartnersPauseABackOffOrACooldown() async throws {
        let clock = ManualClock()
        let paused = Self.gate(clock)
        try await Self.send(paused, "default", AttemptReport(health: .down, status: 503, partnerPauseUntil: clock.now.addingTimeInterval(10)))
        await #expect(throws: CancellationError.self) { try await paused.withSlot(nil, account: "default") { true } }
        #expect(await paused.mayResend(account: "default", resendOf: nil) == false)  // asked before the token

        let refused = Self.gate(clock, accounts: ["a", "b"])
        try await Self.send(refused, "a", AttemptReport(health: .untested, status: 401, credentialsRejected: true))
        await #expect(throws: CancellationError.self) { try await refused.withSlot(nil, account: "a") { true } }
        #expect(await refused.mayResend(account: "a", resendOf: nil) == false)
        #expect(await refused.mayResend(account: "b", resendOf: nil))
        #expect(try await refused.withSlot(nil, account: "b") { true })

        let tripped = Self.gate(clock, failures: 1, cooldown: 30)
        try await Self.send(tripped, "default", Self.down)
        await #expect(throws: CancellationError.self) { try await tripped.withSlot(nil, account: "default") { true } }
        #expect(await tripped.mayResend(account: "default", resendOf: nil) == false)
        clock.advance(30)
        let probe = await tripped.bind(try await tripped.admit(), to: "default")
        #expect(probe.probe)
        #expect(try await tripped.withSlot(probe, account: "default") { true })
        #expect(await tripped.mayResend(account: "default", resendOf: probe))
        #expect(try await tripped.withSlot(nil, account: "default", resendOf: probe) { true })  // the probe's resend after a 401
    }

    /// A full window: the next request waits until the oldest answer is a window old.
    @Test func aFullWindowWaitsForTheOldestAnswerToAgeOut() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, requests: 2, perSeconds: 10)
        try await gate.withSlot(nil, account: "default") {}
        clock.advance(1)
        try await gate.withSlot(nil, account: "default") {}
        let third = await Self.parked(clock) { try await gate.withSlot(nil, account: "default") { clock.now } }
        clock.advance(8.5)  // 9.5 s after the first answer: still inside its window
        _ = await eventually(timeout: 10, interval: 0.001) { clock.sleeping > 0 }
        #expect(clock.sleeping > 0)
        clock.advance(0.5)
        #expect(try await third.value == Date(timeIntervalSince1970: 2_000_000_010))
    }

    /// Shutdown: a request still waiting for a place gives up at once (nothing was sent).
    @Test func waitingForAPlaceGivesUpWhenAsked() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, requests: 1, perSeconds: 3600)
        try await gate.withSlot(nil, account: "default") {}
        let stop = Atomic<Bool>(false)
        let waiting = await Self.parked(clock) {
            try await gate.withSlot(nil, account: "default", giveUp: { stop.load(ordering: .relaxed) }) { true }
        }
        stop.store(true, ordering: .relaxed)
        clock.advance(0.25)  // the next look at the window
        await #expect(throws: CancellationError.self) { try await waiting.value }
    }

    // MARK: - Accounts (CONTRACT section 8)

    /// Each account has its own window: one that used its budget leaves the others admitted.
    @Test func anAccountWithAFullWindowDoesNotHoldTheOthers() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, accounts: ["a", "b"], requests: 2)
        try await Self.send(gate, "a")
        try await Self.send(gate, "a")
        let admission = try await gate.admit()
        #expect(admission.accounts == ["b"])
        await gate.release(admission)
    }

    /// An admission holds a place in every account it offers: two workers never both count on
    /// an account's last place.
    @Test func anAccountsLastPlaceIsOfferedToOneWorkerAtATime() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, accounts: ["a", "b"], requests: 1)
        let first = try await gate.admit()
        #expect(Set(first.accounts) == ["a", "b"])
        let second = await Self.parked(clock) { try await gate.admit() }
        let permit = await gate.bind(first, to: "a")  // b's place goes back
        clock.advance(0.25)  // the waiting admission's next look (it polls: places in flight have no end time)
        #expect(try await second.value.accounts == ["b"])
        await gate.settle(permit, .nothingSent)
    }

    /// Least recently served first: a busy account does not stay at the head of the order.
    @Test func accountsAreOfferedLeastRecentlyServedFirst() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, accounts: ["a", "b", "c"])
        try await Self.send(gate, "b")
        try await Self.send(gate, "a")
        let admission = try await gate.admit()
        #expect(admission.accounts == ["c", "b", "a"])
        await gate.release(admission)
    }

    /// Workers admitted together, none bound yet, are offered different accounts first (found
    /// from outside: when the circuit closed, every freed worker was offered the same order, and
    /// one account whose requests hang took 12 of 16 workers again).
    @Test func workersAdmittedTogetherAreOfferedDifferentAccountsFirst() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, accounts: ["a", "b"], workers: 16)
        var admissions: [PartnerGate.Admission] = []
        for _ in 0..<4 { admissions.append(try await gate.admit()) }
        #expect(admissions.map { $0.accounts } == [["a", "b"], ["b", "a"], ["a", "b"], ["b", "a"]])
        // Bound, an admission counts once (as a permit); given back, not at all.
        let permit = await gate.bind(admissions[0], to: "a")
        await gate.release(admissions[2])
        let next = try await gate.admit()
        #expect(next.accounts == ["a", "b"])  // a: 1 in flight; b: offered first to 2
        for admission in [admissions[1], admissions[3], next] { await gate.release(admission) }
        await gate.settle(permit, .nothingSent)
        #expect(try await gate.admit().accounts == ["b", "a"])  // nothing held: least recently served
    }

    /// With several accounts the last free worker is kept for fresh events, however many
    /// accounts keep the others busy; accounts with fewer requests in flight are offered first.
    @Test func theLastFreeWorkerIsKeptForFreshEvents() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, accounts: ["a", "b", "c"], workers: 4)
        let first = try await gate.admit()
        #expect(!first.keptFree)
        let a1 = await gate.bind(first, to: "a")
        let a2 = await gate.bind(try await gate.admit(), to: "a")
        let offered = try await gate.admit()
        #expect(offered.accounts == ["b", "c", "a"])  // nothing in flight first
        #expect(!offered.keptFree)
        let b = await gate.bind(offered, to: "b")
        let last = try await gate.admit()
        #expect(last.keptFree)
        // Any due event of c, a retry or a backlog as well as a new one: only a spare beyond
        // the kept worker is kept to fresh events (found from outside: a quiet account's retry
        // waited behind a partner slow for another account's key).
        #expect(!last.freshOnly)
        // Only for a quiet account: a and b have requests in flight (they may be stuck).
        #expect(last.accounts == ["c"])
        await gate.release(last)
        await gate.settle(a1, AttemptReport(health: .up, status: 201))
        let next = try await gate.admit()
        #expect(!next.keptFree)
        #expect(next.accounts == ["c", "a", "b"])
        await gate.release(next)
        await gate.settle(a2, .nothingSent)
        await gate.settle(b, .nothingSent)
        // No account quiet: the kept worker is offered none (it waits for a fresh event).
        let two = Self.gate(clock, accounts: ["a", "b"], workers: 3)
        let twoA = await two.bind(try await two.admit(), to: "a")
        let twoB = await two.bind(try await two.admit(), to: "b")
        let none = try await two.admit()
        #expect(none.keptFree)
        #expect(!none.freshOnly)
        #expect(none.accounts.isEmpty)
        // Every worker holding an admission: a spare's is kept to fresh events.
        let spare = try await two.admit()
        #expect(spare.keptFree && spare.freshOnly)
        await two.release(spare)
        await two.release(none)
        await two.settle(twoB, .nothingSent)
        let looking = try await two.admit()  // a worker looking (not kept): every account
        #expect(looking.accounts == ["b", "a"])
        let kept = try await two.admit()     // b is quiet again: offered to the kept worker
        #expect(kept.keptFree)
        #expect(kept.accounts == ["b"])
        await two.release(kept)
        await two.release(looking)
        await two.settle(twoA, .nothingSent)
        // One account only: no worker is kept.
        let single = Self.gate(clock, accounts: ["a"], workers: 2)
        _ = await single.bind(try await single.admit(), to: "a")
        #expect(!(try await single.admit().keptFree))
    }

    /// A 429's Retry-After pauses that account only; a 503's pauses every account.
    @Test func aRateLimitPauseIsTheAccountsAnOutagePauseEveryones() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, accounts: ["a", "b"])
        try await Self.send(gate, "a", AttemptReport(health: .untested, status: 429, accountPauseUntil: clock.now.addingTimeInterval(60)))
        let admission = try await gate.admit()
        #expect(admission.accounts == ["b"])
        let permit = await gate.bind(admission, to: "b")
        await gate.settle(permit, AttemptReport(health: .down, status: 503, partnerPauseUntil: clock.now.addingTimeInterval(10)))
        let next = await Self.parked(clock) { try await gate.admit() }
        clock.advance(10)
        #expect(try await next.value.accounts == ["b"])
        clock.advance(50)
        #expect(Set(try await gate.admit().accounts) == ["a", "b"])
    }

    /// A 401 with a fresh token: the account waits (backoff, doubling), the others carry on;
    /// an answer that is not 401 ends it.
    @Test func refusedCredentialsBackOffThatAccountOnly() async throws {
        let clock = ManualClock()
        let logs = LogCapture()
        let logger = Logger(label: "t") { RelayLogHandler(label: $0, settings: LogSettings(level: .info, format: .json), output: logs.output) }
        let gate = Self.gate(clock, accounts: ["a", "b"], logger: logger)
        let rejected = AttemptReport(health: .untested, status: 401, credentialsRejected: true)
        try await Self.send(gate, "a", rejected)
        #expect(try await gate.admit().accounts == ["b"])
        #expect(await gate.view("a")?.credentialsRejectedUntil == clock.now.addingTimeInterval(5))
        clock.advance(5)
        try await Self.send(gate, "a", rejected)
        #expect(await gate.view("a")?.credentialsRejectedUntil == clock.now.addingTimeInterval(10))
        clock.advance(10)
        try await Self.send(gate, "a")
        try await Self.send(gate, "a", rejected)
        #expect(await gate.view("a")?.credentialsRejectedUntil == clock.now.addingTimeInterval(5))
        let lines = logs.events("auth.rejected")
        #expect(lines.count == 3)
        #expect(lines.allSatisfy { $0["account"] as? String == "a" })
    }

    /// A refused account's back-off belongs to the credentials refused: other credentials (the
    /// operator's fix) lift it, at a reload or across a restart; the same ones do not. Found
    /// from outside: a fixed secret, a restart, and the account still waited out its back-off.
    @Test func changedCredentialsLiftARefusal() async throws {
        let clock = ManualClock()
        let reported = Mutex<[String: Date]>([:])
        let gate = Self.gate(clock, accounts: ["a", "b"], credentials: ["a": "old", "b": "b1"])
        await gate.onHoldsChanged { holds in reported.withLock { $0 = holds } }
        let until = clock.now.addingTimeInterval(5)
        try await Self.send(gate, "a", AttemptReport(health: .untested, status: 401, credentialsRejected: true))
        #expect(reported.withLock { $0 } == ["credentials:a#old": until])

        // A reload with the same credentials (or none given) keeps a refusal's wait: lifted, it
        // would cost attempts at each reload, whatever the reload was for (review).
        for same in [["a": "old", "b": "b1"], [:]] {
            #expect(await gate.reconfigure(accounts: Self.limits(["a", "b"]), globalRateLimit: .init(requests: 0),
                                           breaker: .init(failures: 5, cooldownSeconds: 30), workers: 4, backoff: .init(),
                                           credentials: same).isEmpty)
            #expect(await gate.view("a")?.credentialsRejectedUntil == until)
        }
        // New credentials for a: its back-off ends at once, and the stored holds say so.
        let lifted = await gate.reconfigure(accounts: Self.limits(["a", "b"]), globalRateLimit: .init(requests: 0),
                                            breaker: .init(failures: 5, cooldownSeconds: 30), workers: 4, backoff: .init(),
                                            credentials: ["a": "new", "b": "b1"])
        #expect(lifted == ["a": until])
        #expect(await gate.view("a")?.credentialsRejectedUntil == nil)
        #expect(Set(try await gate.admit().accounts) == ["a", "b"])
        #expect(reported.withLock { $0 }.isEmpty)

        // Across a restart: the hold is restored only for the credentials it was set for (and
        // for a hold stored before fingerprints, which says for none).
        let stored = ["credentials:a#old": until]
        let changed = Self.gate(clock, accounts: ["a", "b"], credentials: ["a": "new", "b": "b1"])
        #expect(await changed.restore(stored) == ["a": until])
        #expect(await changed.view("a")?.credentialsRejectedUntil == nil)
        #expect(await changed.holds().isEmpty)
        let same = Self.gate(clock, accounts: ["a", "b"], credentials: ["a": "old", "b": "b1"])
        #expect(await same.restore(stored).isEmpty)
        #expect(await same.view("a")?.credentialsRejectedUntil == until)
        #expect(await same.holds() == stored)
        let unmarked = Self.gate(clock, accounts: ["a", "b"], credentials: ["a": "new", "b": "b1"])
        #expect(await unmarked.restore(["credentials:a": until]).isEmpty)
        #expect(await unmarked.view("a")?.credentialsRejectedUntil == until)
    }

    /// Found from outside: an account the config left out at a restart, then added back by a
    /// reload, sent at once though a pause (a 429's Retry-After) and a refusal's back-off stored
    /// for it were still in force (a restart with it kept both). Its holds are kept, the account
    /// not configured, and apply when a reload adds it back; the back-off only for the
    /// credentials it was set for.
    @Test func theHoldsOfAnAccountAddedBackByAReloadStillApply() async throws {
        let clock = ManualClock()
        let start = clock.now
        let gate = Self.gate(clock, accounts: ["a"], credentials: ["a": "a1"])
        let stored = ["account:b": start.addingTimeInterval(120), "credentials:c#c1": start.addingTimeInterval(60),
                      "credentials:d#d1": start.addingTimeInterval(60)]
        #expect(await gate.restore(stored).isEmpty)
        #expect(await gate.holds() == stored)  // stored again with the next change
        #expect(await gate.view("b") == nil)  // not configured
        #expect(try await gate.admit().accounts == ["a"])
        let lifted = await gate.reconfigure(accounts: Self.limits(["a", "b", "c", "d"]), globalRateLimit: .init(requests: 0),
                                            breaker: .init(failures: 5, cooldownSeconds: 30), workers: 4, backoff: .init(),
                                            credentials: ["a": "a1", "b": "b1", "c": "c1", "d": "d2"])
        #expect(lifted == ["d": start.addingTimeInterval(60)])  // other credentials: the operator's fix
        #expect(await gate.view("b")?.pausedUntil == start.addingTimeInterval(120))
        #expect(await gate.view("c")?.credentialsRejectedUntil == start.addingTimeInterval(60))
        #expect(await gate.view("d")?.credentialsRejectedUntil == nil)
        #expect(Set(try await gate.admit().accounts) == ["a", "d"])
    }

    /// The token endpoint's `Retry-After` lengthens the account's wait (never shortens it), up to
    /// `backoff.max_seconds` (60 s here), as every wait.
    @Test func theTokenEndpointsRetryAfterLengthensTheWaitUpToTheCap() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, accounts: ["a", "b"])
        try await Self.send(gate, "a", AttemptReport(health: .untested, tokenUnavailable: true, tokenRetryAfter: clock.now.addingTimeInterval(40)))
        #expect(await gate.view("a")?.credentialsRejectedUntil == clock.now.addingTimeInterval(40))
        try await Self.send(gate, "b", AttemptReport(health: .untested, tokenUnavailable: true, tokenRetryAfter: clock.now.addingTimeInterval(1)))
        #expect(await gate.view("b")?.credentialsRejectedUntil == clock.now.addingTimeInterval(5))  // the back-off's first step
        clock.advance(41)
        try await Self.send(gate, "a", AttemptReport(health: .untested, tokenUnavailable: true, tokenRetryAfter: .distantFuture))
        #expect(await gate.view("a")?.credentialsRejectedUntil == clock.now.addingTimeInterval(60))
    }

    /// Found from outside: a wait for the token endpoint, restored after a restart, counted as
    /// a refusal, which no reload ends; the token endpoint's `Retry-After` can make it long now.
    /// It is stored with its cause (`token:`), and a reload ends it after the restart too.
    @Test func aWaitForTheTokenEndpointKeepsItsCauseAcrossARestart() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, accounts: ["a"], credentials: ["a": "same"])
        let reported = Mutex<[String: Date]>([:])
        await gate.onHoldsChanged { holds in reported.withLock { $0 = holds } }
        let until = clock.now.addingTimeInterval(40)
        try await Self.send(gate, "a", AttemptReport(health: .untested, tokenUnavailable: true, tokenRetryAfter: until))
        #expect(reported.withLock { $0 } == ["token:a#same": until])
        func reload(_ gate: PartnerGate) async -> [String: Date] {
            await gate.reconfigure(accounts: Self.limits(["a"]), globalRateLimit: .init(requests: 0),
                                   breaker: .init(failures: 5, cooldownSeconds: 30), workers: 4, backoff: .init(),
                                   credentials: ["a": "same"])
        }
        let next = Self.gate(clock, accounts: ["a"], credentials: ["a": "same"])
        #expect(await next.restore(["token:a#same": until]).isEmpty)
        #expect(await next.view("a")?.credentialsRejectedUntil == until)
        #expect(await next.holds() == ["token:a#same": until])
        #expect(await reload(next) == ["a": until])
        #expect(await next.view("a")?.credentialsRejectedUntil == nil)
        // A refusal restored is not lifted by a reload with the same credentials.
        let refused = Self.gate(clock, accounts: ["a"], credentials: ["a": "same"])
        #expect(await refused.restore(["credentials:a#same": until]).isEmpty)
        #expect(await reload(refused).isEmpty)
        #expect(await refused.view("a")?.credentialsRejectedUntil == until)
    }

    /// A wait that began with a failed token request (the token endpoint's outage) ends at any
    /// reload, the credentials unchanged (found from outside: nothing else could end it before
    /// its time, up to `max_seconds`, across restarts). It costs a token request, no attempt;
    /// the count stays, so failing again waits the next step. A refusal after it is not lifted.
    @Test func aReloadLiftsAWaitForTheTokenEndpoint() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, accounts: ["a"], credentials: ["a": "same"])
        func reload() async -> [String: Date] {
            await gate.reconfigure(accounts: Self.limits(["a"]), globalRateLimit: .init(requests: 0),
                                   breaker: .init(failures: 5, cooldownSeconds: 30), workers: 4, backoff: .init(),
                                   credentials: ["a": "same"])
        }
        try await Self.send(gate, "a", AttemptReport(health: .untested, tokenUnavailable: true))
        #expect(await gate.view("a")?.credentialsRejectedUntil == clock.now.addingTimeInterval(5))
        #expect(await reload() == ["a": clock.now.addingTimeInterval(5)])
        #expect(await gate.view("a")?.credentialsRejectedUntil == nil)
        try await Self.send(gate, "a", AttemptReport(health: .untested, tokenUnavailable: true))
        #expect(await gate.view("a")?.credentialsRejectedUntil == clock.now.addingTimeInterval(10))  // the next step
        #expect(await reload() == ["a": clock.now.addingTimeInterval(10)])
        // The partner's refusal, the same credentials: a reload keeps it.
        try await Self.send(gate, "a", AttemptReport(health: .untested, status: 401, credentialsRejected: true))
        #expect(await reload().isEmpty)
        #expect(await gate.view("a")?.credentialsRejectedUntil == clock.now.addingTimeInterval(20))
    }

    /// A refusal counts against the credentials it was made with: one of credentials a reload
    /// replaced while the request was out does not hold back the new ones.
    @Test func aRefusalOfReplacedCredentialsIsNotTheNewOnes() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, accounts: ["a"], credentials: ["a": "new"])
        // Three requests out together (a wrongly counted refusal must fail the test, not leave
        // the next admission waiting on the manual clock).
        var permits: [PartnerGate.Permit] = []
        for _ in 0..<3 { permits.append(await gate.bind(try await gate.admit(), to: "a")) }
        await gate.settle(permits[0], AttemptReport(health: .untested, status: 401, credentialsRejected: true, credentials: "old"))
        await gate.settle(permits[1], AttemptReport(health: .untested, tokenUnavailable: true, credentials: "old"))
        #expect(await gate.view("a")?.credentialsRejectedUntil == nil)
        await gate.settle(permits[2], AttemptReport(health: .untested, status: 401, credentialsRejected: true, credentials: "new"))
        #expect(await gate.view("a")?.credentialsRejectedUntil == clock.now.addingTimeInterval(5))
    }

    /// Requests out together that are all refused count as one refusal: the back-off takes one
    /// step, not one per worker (found from outside: four workers took it four steps a round).
    @Test func refusalsOfRequestsOutTogetherAreOneStep() async throws {
        let clock = ManualClock()
        let logs = LogCapture()
        let logger = Logger(label: "t") { RelayLogHandler(label: $0, settings: LogSettings(level: .info, format: .json), output: logs.output) }
        let gate = Self.gate(clock, accounts: ["a"], logger: logger)
        let rejected = AttemptReport(health: .untested, status: 401, credentialsRejected: true)
        for round in 1...2 {
            var permits: [PartnerGate.Permit] = []
            for _ in 0..<4 { permits.append(await gate.bind(try await gate.admit(), to: "a")) }
            for permit in permits { await gate.settle(permit, rejected) }
            let step = 5.0 * Double(1 << (round - 1))  // 5 s, then 10 s
            // Required: a back-off counted per refusal would leave the next admission waiting on
            // the manual clock for ever.
            try #require(await gate.view("a")?.credentialsRejectedUntil == clock.now.addingTimeInterval(step))
            #expect(logs.events("auth.rejected").count == round)
            #expect(logs.events("auth.rejected").last?["consecutive_rejections"] as? Double == Double(round))
            clock.advance(step)
        }
    }

    /// 401, 403 and 429 never open the circuit (one account's trouble is not an outage).
    @Test func oneAccountsRefusalsDoNotOpenTheCircuit() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, accounts: ["a", "b"])
        for _ in 0..<10 {
            try await Self.send(gate, "a", AttemptReport(health: .untested, status: 429))
            try await Self.send(gate, "a", AttemptReport(health: .untested, status: 401))
            try await Self.send(gate, "a", AttemptReport(health: .up, status: 403))
        }
        let admission = try await gate.admit()
        #expect(Set(admission.accounts) == ["a", "b"])
    }

    /// `global_rate_limit` caps the accounts together.
    @Test func theGlobalLimitCapsEveryAccountTogether() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, accounts: ["a", "b"], requests: 10, global: RateLimitConfiguration(requests: 3, perSeconds: 60))
        try await Self.send(gate, "a")
        try await Self.send(gate, "b")
        try await Self.send(gate, "a")
        let fourth = await Self.parked(clock) { try await gate.admit() }
        clock.advance(59)
        _ = await eventually(timeout: 10, interval: 0.001) { clock.sleeping > 0 }
        #expect(clock.sleeping > 0)
        clock.advance(1)
        #expect(Set(try await fourth.value.accounts) == ["a", "b"])
    }

    /// A 429 while the account's window had room: `partner.rate_scope_mismatch`, once an hour
    /// per account (found from outside: once an hour for all, so the first account's line hid
    /// every other's).
    @Test func aRateLimitWithRoomInTheWindowIsSaidOnceAnHourPerAccount() async throws {
        let clock = ManualClock()
        let logs = LogCapture()
        let logger = Logger(label: "t") { RelayLogHandler(label: $0, settings: LogSettings(level: .info, format: .json), output: logs.output) }
        let gate = Self.gate(clock, accounts: ["a", "b"], requests: 3, logger: logger)
        let limited = AttemptReport(health: .untested, status: 429)
        try await Self.send(gate, "a", limited)
        try await Self.send(gate, "b", limited)
        try await Self.send(gate, "a", limited)
        #expect(logs.events("partner.rate_scope_mismatch").map { $0["account"] as? String } == ["a", "b"])
        clock.advance(3600)
        // A full window's 429 is the limit the relay keeps, not a mismatch.
        try await Self.send(gate, "a")
        try await Self.send(gate, "a")
        try await Self.send(gate, "a", limited)
        #expect(logs.events("partner.rate_scope_mismatch").count == 2)
        try await Self.send(gate, "b", limited)
        #expect(logs.events("partner.rate_scope_mismatch").count == 3)
    }

    /// A reload adds an account (admitted at once) and removes one (never offered again).
    @Test func reconfiguringAddsAndRemovesAccounts() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, accounts: ["a"])
        await gate.reconfigure(accounts: ["b": RateLimitConfiguration(), "c": RateLimitConfiguration()], globalRateLimit: .init(requests: 0),
                               breaker: CircuitBreakerConfiguration(), workers: 4, backoff: BackoffConfiguration())
        let admission = try await gate.admit()
        #expect(Set(admission.accounts) == ["b", "c"])
        await gate.release(admission)
        #expect(await gate.view("a") == nil)
    }

    /// An account removed and added back by two reloads, while an admission still held one of
    /// its places: giving that place back must not take the place of a request sent since.
    @Test func anAccountAddedBackKeepsItsWindow() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, accounts: ["a", "b"], requests: 5)
        let old = try await gate.admit()
        #expect(old.accounts.contains("a"))
        let limits = ["a": RateLimitConfiguration(requests: 5, perSeconds: 60), "b": RateLimitConfiguration(requests: 5, perSeconds: 60)]
        await gate.reconfigure(accounts: ["b": limits["b"]!], globalRateLimit: .init(requests: 0), breaker: CircuitBreakerConfiguration(),
                               workers: 4, backoff: BackoffConfiguration())
        await gate.reconfigure(accounts: limits, globalRateLimit: .init(requests: 0), breaker: CircuitBreakerConfiguration(),
                               workers: 4, backoff: BackoffConfiguration())
        let permit = await gate.bind(try await gate.admit(), to: "a")
        try await gate.withSlot(permit, account: "a") { await gate.release(old) }
        await gate.settle(permit, AttemptReport(health: .up, status: 201))
        #expect(await gate.view("a")?.windowRequests == 1)
    }

    /// Places given back are not counted: an account's budget is only spent by what was sent.
    @Test func placesOfferedButNotUsedAreGivenBack() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, accounts: ["a", "b"], requests: 1)
        for _ in 0..<5 { await gate.release(try await gate.admit()) }
        let permit = await gate.bind(try await gate.admit(), to: "b")
        await gate.settle(permit, .nothingSent)
        #expect(await gate.view("a")?.windowRequests == 0)
        #expect(await gate.view("b")?.windowRequests == 0)
        #expect(await gate.view("a")?.busy == 0)
        try await Self.send(gate, "a")
        #expect(await gate.view("a")?.windowRequests == 1)
        #expect(await gate.view("a")?.busy == 0)
    }

    /// A restart kept none of the partner's pauses, the open circuit or a refused account's
    /// back-off, and sent at once (found from outside). The gate reports them when set, and a
    /// new gate given them waits as the old one did.
    @Test func holdsOutliveARestart() async throws {
        let clock = ManualClock()
        let first = Self.gate(clock, accounts: ["a", "b"], workers: 4)
        let reported = Mutex<[String: Date]>([:])
        await first.onHoldsChanged { holds in reported.withLock { $0 = holds } }
        let start = clock.now
        try await Self.send(first, "a", AttemptReport(health: .up, status: 401, credentialsRejected: true))
        try await Self.send(first, "b", AttemptReport(health: .up, status: 429, accountPauseUntil: start.addingTimeInterval(120),
                                                      partnerPauseUntil: start.addingTimeInterval(60)))
        let holds = reported.withLock { $0 }
        #expect(holds["account:b"] == start.addingTimeInterval(120))
        #expect(holds["partner"] == start.addingTimeInterval(60))
        #expect(holds["credentials:a"] == start.addingTimeInterval(5))
        #expect(holds == (await first.holds()))

        // The next run, 10 s later: every hold still in force; an old one is dropped.
        clock.advance(10)
        let second = Self.gate(clock, accounts: ["a", "b"], workers: 4)
        await second.restore(holds.merging(["circuit": start.addingTimeInterval(30), "account:gone": start.addingTimeInterval(99),
                                            "account:a": start.addingTimeInterval(1)]) { $1 })
        #expect(await second.view("b")?.pausedUntil == start.addingTimeInterval(120))
        #expect(await second.view("a")?.pausedUntil == nil)  // ended before the restart
        #expect(await second.view("a")?.credentialsRejectedUntil == nil)  // its 5 s back-off too
        #expect(await second.holds()["partner"] == start.addingTimeInterval(60))
        #expect(await second.holds()["circuit"] == start.addingTimeInterval(30))
        // Nothing is admitted before the partner's pause ends (60 s), then a's request is.
        let admitted = Mutex(false)
        let waiting = await Self.parked(clock) {
            let admission = try await second.admit()
            admitted.withLock { $0 = true }
            return admission
        }
        clock.advance(40)  // 50 s: still paused
        try await Task.sleep(for: .milliseconds(50))
        #expect(!admitted.withLock { $0 })
        clock.advance(11)  // 61 s
        #expect(await eventually(timeout: 10) { admitted.withLock { $0 } })
        #expect(try await waiting.value.accounts == ["a"])
    }

}
