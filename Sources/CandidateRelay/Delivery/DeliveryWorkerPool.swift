import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// Settings of the pool that SIGHUP may change while it runs.
public struct DeliverySettings: Sendable {
    public var workers: Int
    public var policy: RetryPolicy
    public var shutdownGraceSeconds: Double
    public var leaseSeconds: Double
    /// The idle fallback poll: how soon a change made by an admin command is noticed.
    public var pollSeconds: Double
    /// A request given up without an answer (timed out, reset) may still be at work at the
    /// partner: its resend waits this long after the give-up (`partner.timeout_seconds`), so
    /// that two requests for one candidate are not open there at once. A timed-out request is
    /// thus resent twice the timeout after it left: what the partner is given to finish.
    public var abandonedHoldSeconds: Double
    /// A request cut off at shutdown, or left by a crash, may have left just before: its resend
    /// waits twice the timeout after the hand-back or the restart, as a timed-out one does
    /// after it left (found from outside: held one timeout only, a partner slower than that but
    /// within the timeout path's two created the candidate twice at each kill -9 and restart).
    public var cutOffHoldSeconds: Double { Self.cutOffHoldSeconds(partnerTimeoutSeconds: abandonedHoldSeconds) }
    /// The same, for the start's recovery of a crash's leases (before the settings exist).
    public static func cutOffHoldSeconds(partnerTimeoutSeconds: Double) -> Double { 2 * partnerTimeoutSeconds }

    public init(configuration: DeliveryConfiguration, partnerTimeoutSeconds: Double, rateWindowSeconds: Double) {
        workers = configuration.workers
        policy = RetryPolicy(backoff: configuration.backoff, maxAttempts: configuration.maxAttempts, maxAgeSeconds: configuration.maxAgeSeconds)
        shutdownGraceSeconds = configuration.shutdownGraceSeconds
        // Long enough for a wait for a rate-limit slot, a request, a 401 resend and the outcome
        // write; the rescuer only takes back leases older than this.
        leaseSeconds = partnerTimeoutSeconds * 2 + rateWindowSeconds + 60
        pollSeconds = 1
        abandonedHoldSeconds = partnerTimeoutSeconds
    }
}

/// The workers (a `Service`): each claims the oldest due event with a lease, passes the partner
/// gate, calls the partner outside any transaction and records the outcome with a
/// compare-and-set. On shutdown it stops claiming, lets in-flight requests finish within the
/// grace period, and hands the rest back without using an attempt.
public final class DeliveryWorkerPool: Service, Sendable {
    let outbox: Outbox
    let gate: PartnerGate
    let client: PartnerClient
    /// Each account's token provider (the keys are the configured accounts).
    let tokens: Live<[String: any TokenProvider]>
    let settings: Live<DeliverySettings>
    let doorbell: Doorbell
    let metrics: RelayMetrics
    let logger: Logger
    let now: @Sendable () -> Date
    let drain = DrainSignal()
    /// Wakes the supervisor: a reload (the number of workers may have changed) or draining.
    /// Not the doorbell, which rings for every event ingest stores.
    private let reconfigured = Doorbell()
    private let workerErrorLog = LogThrottle(seconds: 5)
    /// Outcome writes still running: a worker does not wait for one before its next claim.
    let outcomes = TaskTracker()
    /// The workers' indexes: `0..<settings.workers`, and spares above them (`spareWanted`).
    private let running = Mutex<Set<Int>>([])
    /// The indexes started as spares (a worker left above `settings.workers` by a reload that
    /// lowered it is not one: it stops at the top of its loop, as before spares existed).
    private let spares = Mutex<Set<Int>>([])
    private let occupancy = Mutex(Occupancy())
    /// Events claimed by this process's workers whose outcome is not recorded yet: their leases
    /// are not the rescuer's to take back (`heldLeases`).
    /// Keyed by event id, with the lease generation claimed: a worker letting go of an event
    /// never removes another worker's later claim of it (a hand-back is due at once).
    let leasesHeld = Mutex<[String: Int]>([:])

    /// How many workers have a request out, and since when all of them have had one.
    private struct Occupancy {
        var busy = 0
        /// Set when a bind leaves no worker idle, cleared when any request ends.
        var allBusySince: Date?
    }

    /// With several accounts, every worker busy this long with no request ending starts a spare
    /// worker, which (the gate sees more requests out than `workers − 1`) is offered only quiet
    /// accounts' fresh events. The worker kept free covers one account in trouble; when a second
    /// one's request took that worker too and hangs, a third account's new event waited for a
    /// timeout. A spare stops at the top of its loop when another worker is idle; there are at
    /// most one per account (each quiet account binds at most one while the others are busy)
    /// and 64, and none with fewer than 2 workers (nothing is kept free then).
    static let spareAfterSeconds = 0.25
    static let maxSpares = 64

    public init(outbox: Outbox, gate: PartnerGate, client: PartnerClient, tokens: Live<[String: any TokenProvider]>,
                settings: Live<DeliverySettings>, doorbell: Doorbell, metrics: RelayMetrics, logger: Logger,
                now: @escaping @Sendable () -> Date = Date.init) {
        self.outbox = outbox
        self.gate = gate
        self.client = client
        self.tokens = tokens
        self.settings = settings
        self.doorbell = doorbell
        self.metrics = metrics
        self.logger = logger
        self.now = now
    }

    public func run() async throws {
        await withGracefulShutdownHandler {
            await self.superviseWorkers()
        } onGracefulShutdown: {
            self.beginDraining()
        }
        await outcomes.waitForAll()
        logger.event(.info, "delivery.drained", "delivery workers stopped")
        // Drained at the announcer's word: a service may not end before the group asks it to
        // (the group would take it for a failure).
        try? await gracefulShutdown()
    }

    /// No new delivery from now on, and the grace period of those in flight starts. The
    /// shutdown announcer calls it at the first word of a shutdown: the service group tells the
    /// pool only after every service started after it has stopped, one after the other (the
    /// HTTP server waits up to 3 s for busy connections), and until then the workers went on
    /// starting new deliveries past SIGTERM and the grace period had not begun.
    public func beginDraining() {
        drain.start()
        reconfigured.ring()
        doorbell.ring()
    }

    /// Keeps `settings.workers` workers running (SIGHUP may change it), and the spares
    /// `spareWanted` asks for, until draining.
    private func superviseWorkers() async {
        await withDiscardingTaskGroup { group in
            // Cancellation (the group failed, or the shutdown deadline passed) ends it too.
            while true {
                let seen = reconfigured.rings  // before the drain check: a ring after it is not lost
                guard !drain.hasStarted && !Task.isCancelled else { break }
                let target = settings.value.workers
                let severalAccounts = tokens.value.count > 1
                let missing = running.withLock { running -> [Int] in
                    var ids = (0..<target).filter { !running.contains($0) }
                    if ids.isEmpty, severalAccounts, target >= 2, spareWanted(running: running.count, target: target) {
                        let spare = (target...).first { !running.contains($0) }!
                        spares.withLock { _ = $0.insert(spare) }
                        ids = [spare]
                    }
                    running.formUnion(ids)
                    return ids
                }
                for index in missing {
                    group.addTask { await self.workerLoop(index: index) }
                }
                // With several accounts, looks often enough to start a spare soon.
                await reconfigured.wait(upTo: severalAccounts ? 0.1 : 1, unlessRungSince: seen)
            }
        }
    }

    /// Every worker busy, none freed for `spareAfterSeconds`, and fewer spares than the cap.
    private func spareWanted(running: Int, target: Int) -> Bool {
        let spares = running - target
        guard spares < min(tokens.value.count, Self.maxSpares) else { return false }
        return occupancy.withLock { occupancy in
            guard occupancy.busy >= running, let since = occupancy.allBusySince else { return false }
            return now().timeIntervalSince(since) >= Self.spareAfterSeconds
        }
    }

    /// Whether a worker beyond `settings.workers` goes on: a spare stays while it is the only
    /// idle worker (decided under the lock, so two idle spares never both leave, nor both stay);
    /// any other stops. Looked at the top of its loop: a spare waiting at the gate (a pause, a
    /// full window) stops once that wait is over.
    private func staysAsSpare(index: Int) -> Bool {
        let target = settings.value.workers
        let severalAccounts = tokens.value.count > 1
        return running.withLock { running in
            let busy = occupancy.withLock { $0.busy }
            let stays = spares.withLock { $0.contains(index) } && severalAccounts && target >= 2
                && running.count - busy <= 1 && running.count - target <= min(tokens.value.count, Self.maxSpares)
            if !stays {
                running.remove(index)
                spares.withLock { _ = $0.remove(index) }
            }
            return stays
        }
    }

    /// A worker bound a request (`true`) or its request ended.
    private func noteBusy(_ busy: Bool) {
        let workers = running.withLock { $0.count }
        let current = now()
        occupancy.withLock { occupancy in
            if busy {
                occupancy.busy += 1
                // From the latest bind: a spare that just took a request gets its own quarter second.
                if occupancy.busy >= workers { occupancy.allBusySince = current }
            } else {
                occupancy.busy -= 1
                occupancy.allBusySince = nil
            }
        }
    }

    /// After a reload: the supervisor starts or retires workers, idle workers look again.
    func settingsChanged() {
        reconfigured.ring()
        doorbell.ring()
    }

    var isDraining: Bool { drain.hasStarted }

    /// The events this process's workers hold, from their claim until their outcome is
    /// recorded (or given up: a full disk past half the lease).
    public func heldLeases() -> Set<String> { leasesHeld.withLock { Set($0.keys) } }

    /// An event claimed, with its admission, while the worker's previous request was in flight.
    struct Prefetched: Sendable {
        var admission: PartnerGate.Admission
        var event: ClaimedEvent
    }

    /// One worker: claim, deliver, repeat; idle waits on the doorbell or the next due time.
    func workerLoop(index: Int) async {
        defer {
            _ = running.withLock { $0.remove(index) }
            _ = spares.withLock { $0.remove(index) }
        }
        var prefetched: Prefetched?
        while true {
            // Before the drain check and the claim: a ring after them cuts the idle wait short.
            let rungBefore = doorbell.rings
            guard !isDraining && !Task.isCancelled && (index < settings.value.workers || staysAsSpare(index: index)) else { break }
            do {
                // (The gate never admits a claim ahead with several accounts: not even asked then.)
                prefetched = try await runOnce(prefetched: prefetched.take(), rungBefore: rungBefore, mayPrefetch: { [self] in
                    index < settings.value.workers && tokens.value.count == 1
                })
            } catch is CancellationError {
                break
            } catch {
                // At most one line in 5 s for every worker together (with the number left out):
                // a full disk wrote two a second per worker, 122 a second with 64 workers, on
                // the disk that was full.
                if let suppressed = workerErrorLog.admit(now: now()) {
                    logger.event(.error, "delivery.worker_error", "worker iteration failed; retrying shortly",
                                 LogFields(error: OutboxError.logCode(error), numbers: suppressed > 0 ? ["suppressed": Double(suppressed)] : [:]))
                }
                try? await TimerSleep.sleep(seconds: 0.5)
            }
        }
        // Claimed but not sent (draining, fewer workers after a reload): back to pending
        // without using an attempt.
        if let prefetched { await handBack(prefetched) }
        // A worker leaving (fewer workers after a reload, a spare no longer needed) may have
        // been the one an event's ring woke (`ring(waking: 1)`): it passes the ring on.
        if !isDraining { doorbell.ring(waking: 1) }
    }

    private func handBack(_ prefetched: Prefetched) async {
        await gate.release(prefetched.admission)
        let written = await record(prefetched.event, .unsent, latencyMs: nil, now: now())
        releasePayload(prefetched.event)
        logInterrupted(prefetched.event, "claimed but not sent (shutdown, or fewer workers after a reload); handed back without using an attempt",
                       written: written)
    }

    /// Waits for the doorbell, the next due event of the accounts that could send, the end of
    /// another account's pause or full window, or the poll.
    private func idleWait(accounts: [String], rungBefore: Int, atMost: Double? = nil) async {
        let poll = settings.value.pollSeconds
        var wait = min(poll, atMost ?? poll)
        if !accounts.isEmpty, let due = try? await outbox.nextDueAt(accounts: accounts, now: now()) {
            wait = min(wait, max(0.005, due.timeIntervalSince(now())))
        }
        if let ready = await gate.nextReadiness() {
            wait = min(wait, max(0.005, ready.timeIntervalSince(now())))
        }
        await doorbell.wait(upTo: wait, unlessRungSince: rungBefore)
    }

    /// Delivers at most one event: `prefetched`, or the next due one (after waiting idle for
    /// one when none is due). While its request is in flight it claims the next event if the
    /// gate admits one at once (`tryAdmit`), and returns it: the claim's commit then overlaps
    /// the partner's answer instead of adding to each delivery's time. The gate's admission is
    /// released, or bound and then settled, exactly once on every path.
    func runOnce(prefetched: Prefetched?, rungBefore: Int, mayPrefetch: @Sendable () -> Bool) async throws -> Prefetched? {
        let current = settings.value
        let admission: PartnerGate.Admission
        let event: ClaimedEvent
        if let prefetched {
            (admission, event) = (prefetched.admission, prefetched.event)
        } else {
            // Accounts with nothing due take no place at the gate and no query in the claim.
            guard let admitted = try await admit(skipping: { [outbox, now] in outbox.quiet.accounts(at: now()) }) else { return nil }
            let result: ClaimResult
            do {
                result = try await claim(accounts: admitted.accounts,
                                         freshSince: admitted.freshOnly ? now().addingTimeInterval(-PartnerGate.freshSeconds) : nil,
                                         settings: current)
            } catch {
                await gate.release(admitted)
                throw error
            }
            guard let claimed = result.claimed else {
                await gate.release(admitted)
                if result.waitingForMemory {
                    // A large payload is due and the ones in flight fill `payloadMemory`: the
                    // end of one rings the doorbell (its due time is now: no spinning on it).
                    // The worker kept free looks again as soon as it does below.
                    await idleWait(accounts: [], rungBefore: rungBefore, atMost: admitted.keptFree ? 0.05 : nil)
                    return nil
                }
                // A spare waits for a fresh event (the doorbell), not for the due backlog it may
                // not take. The worker kept free and the spares look again soon, since they are
                // kept only while the others are busy, and an answer may make an account quiet
                // again (the kept worker sat out its 1 s poll during a drain of fresh events: 20
                // accounts fell to 0.85). The quiet accounts' next due times count too (from
                // their marks: always ahead, so a paused one's never makes the worker spin).
                await idleWait(accounts: admitted.freshOnly ? [] : admitted.accounts + outbox.quiet.accounts(at: now()).sorted(),
                               rungBefore: rungBefore,
                               atMost: admitted.keptFree ? 0.05 : nil)
                return nil
            }
            (admission, event) = (admitted, claimed)
        }
        let permit = await gate.bind(admission, to: event.account)
        noteBusy(true)
        async let delivered: Void = deliver(event, permit: permit, settings: current)
        let next = mayPrefetch() ? await prefetch(settings: current) : nil
        await delivered
        releasePayload(event)
        noteBusy(false)
        return next
    }

    /// The delivery of `event` is over: its payload's share of the outbox's payload memory goes
    /// back, and a worker waiting for that room is woken.
    private func releasePayload(_ event: ClaimedEvent) {
        if outbox.releasePayload(event) { doorbell.ring(waking: 1) }
    }

    /// The next due event, claimed now if the gate admits one without waiting; nil otherwise.
    private func prefetch(settings current: DeliverySettings) async -> Prefetched? {
        guard !isDraining, let admission = await gate.tryAdmit() else { return nil }
        if let event = try? await claim(accounts: admission.accounts, freshSince: nil, smallPayloadOnly: true, settings: current).claimed {
            return Prefetched(admission: admission, event: event)
        }
        await gate.release(admission)
        return nil
    }

    /// Leases the next due event of the first of `accounts` that has one; logs those that
    /// expired at claim time instead.
    private func claim(accounts: [String], freshSince: Date?, smallPayloadOnly: Bool = false,
                       settings current: DeliverySettings) async throws -> ClaimResult {
        let result = try await outbox.claimNextDue(accounts: accounts, freshSince: freshSince, smallPayloadOnly: smallPayloadOnly,
                                                   now: now(), leaseSeconds: current.leaseSeconds,
                                                   maxAgeSeconds: current.policy.maxAgeSeconds, maxAttempts: current.policy.maxAttempts)
        if let claimed = result.claimed { leasesHeld.withLock { $0[claimed.id] = claimed.lease } }
        for expired in result.expired {
            metrics.delivery(outcome: "dead", account: expired.account)
            logger.event(.error, "delivery.dead", "event can no longer be sent (age or attempts used up, or payload erased); it is dead",
                         LogFields(account: expired.account, eventID: expired.id, positionUID: expired.positionUID,
                                   partnerCandidateID: expired.partnerCandidateID, attempt: expired.attempts, error: expired.reason))
        }
        return result
    }

    /// Waits at the gate, giving up (nil) when draining starts.
    private func admit(skipping quiet: @escaping @Sendable () -> Set<String>) async throws -> PartnerGate.Admission? {
        if isDraining { return nil }
        let gate = self.gate
        return try await withThrowingTaskGroup(of: PartnerGate.Admission?.self) { group in
            group.addTask { try await gate.admit(skipping: quiet) }
            group.addTask {
                await self.drain.wait()
                return nil
            }
            let first = try await group.next() ?? nil
            group.cancelAll()
            if let first, self.isDraining {
                await gate.release(first)
                return nil
            }
            if first == nil {
                // Draining won, but the gate may have admitted in the same instant: give it back.
                while let late = try? await group.next() {
                    if let late { await gate.release(late) }
                }
            }
            return first
        }
    }
}
