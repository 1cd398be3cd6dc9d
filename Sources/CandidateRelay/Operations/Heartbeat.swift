import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// The configured accounts as the heartbeat sees them (SIGHUP may change them).
public struct KnownAccounts: Sendable {
    public var ids: Set<String>
    /// Whether the config has `accounts:` (then each gets its own heartbeat line).
    public var named: Bool
    public init(ids: Set<String>, named: Bool) {
        self.ids = ids
        self.named = named
    }
}

/// Logs `relay.heartbeat` every `heartbeat_seconds` with counts per state, oldest pending age and
/// the deliveries and failures since the last beat; refreshes the gauges and systemd's STATUS=;
/// pets the systemd watchdog only while the event loop and the database answer.
public struct Heartbeat: Service {
    let outbox: Outbox
    let interval: Live<Double>
    let metrics: RelayMetrics
    let notifier: SystemdNotifier
    let watchdogInterval: Double?
    let logger: Logger
    let isReady: @Sendable () -> Bool
    let accounts: @Sendable () -> KnownAccounts
    let gate: PartnerGate?
    let now: @Sendable () -> Date
    /// Called every tick (ingest's lines left out at the end of a flood).
    let tick: @Sendable () -> Void
    /// Seconds since boot, suspends included (`ClockStepDetector`): with `now`, tells a step
    /// of the wall clock from time passing.
    let bootTime: @Sendable () -> Double
    /// Both clocks read at the start's check for a step back while stopped: a step between
    /// that check and the first tick is a step too.
    let clockBaseline: (wall: Date, boot: Double)?
    /// Said after the counts in STATUS= while it is not nil (the config file on disk no
    /// longer loads: `ConfigFileWatch`).
    let statusNote: @Sendable () -> String?
    /// The clock the holds and claims read (`GuardedWallClock`): settled at each look once no
    /// step forward is left to handle.
    let guardedClock: GuardedWallClock?
    /// The clock steps' failed writes, tried again each second while the outbox cannot be
    /// written (a full disk, a damaged file): one line a minute, not one a second (review).
    let clockFailureLog = LogThrottle(seconds: 60)

    public init(outbox: Outbox, interval: Live<Double>, metrics: RelayMetrics, notifier: SystemdNotifier,
                watchdogInterval: Double?, logger: Logger, isReady: @escaping @Sendable () -> Bool = { true },
                accounts: @escaping @Sendable () -> KnownAccounts = { KnownAccounts(ids: [AccountConfiguration.defaultID], named: false) },
                gate: PartnerGate? = nil, now: @escaping @Sendable () -> Date = Date.init, tick: @escaping @Sendable () -> Void = {},
                bootTime: @escaping @Sendable () -> Double = ClockStepDetector.bootSeconds,
                clockBaseline: (wall: Date, boot: Double)? = nil, statusNote: @escaping @Sendable () -> String? = { nil },
                guardedClock: GuardedWallClock? = nil) {
        self.statusNote = statusNote
        self.guardedClock = guardedClock
        self.tick = tick
        self.bootTime = bootTime
        self.clockBaseline = clockBaseline
        self.isReady = isReady
        self.accounts = accounts
        self.gate = gate
        self.outbox = outbox
        self.interval = interval
        self.metrics = metrics
        self.notifier = notifier
        self.watchdogInterval = watchdogInterval
        self.logger = logger
        self.now = now
    }

    /// Logs one heartbeat; `previous` are the delivery totals at the previous beat.
    public func beat(previous: [String: Int]) async throws -> [String: Int] {
        // Each beat counts the settled events afresh (a scan of them); between beats their
        // counts move with what this daemon settles (`Outbox.liveStatus`).
        try await outbox.recountSettled()
        let status = try await refreshStatus()
        let totals = metrics.deliveryTotals()
        var numbers: [String: Double] = [:]
        for state in EventState.allCases { numbers["count_\(state.rawValue)"] = Double(status.counts[state] ?? 0) }
        // 0 when nothing waits, so alert queries compare numbers without a null case.
        numbers["oldest_pending_age_seconds"] = ((status.oldestPendingAgeSeconds ?? 0) * 10).rounded() / 10
        numbers["delivered_since_last"] = Double((totals["delivered"] ?? 0) + (totals["linked"] ?? 0) - (previous["delivered"] ?? 0) - (previous["linked"] ?? 0))
        numbers["failures_since_last"] = Double((totals["retry"] ?? 0) + (totals["dead"] ?? 0) - (previous["retry"] ?? 0) - (previous["dead"] ?? 0))
        logger.event(.notice, "relay.heartbeat", "relay alive", LogFields(numbers: numbers))
        await beatAccounts(status, totals: totals, previous: previous)
        return totals
    }

    /// With `accounts:`, one `account.heartbeat` per account (how one customer's health is read
    /// from the logs); in any case `account.unknown` for events whose account the config no
    /// longer names.
    func beatAccounts(_ status: OutboxStatus, totals: [String: Int], previous: [String: Int]) async {
        let known = accounts()
        if known.named {
            for account in known.ids.sorted() {
                let counts = status.accounts[account] ?? AccountStatus()
                func since(_ outcomes: String...) -> Double {
                    Double(outcomes.reduce(0) { $0 + (totals["\(account)|\($1)"] ?? 0) - (previous["\(account)|\($1)"] ?? 0) })
                }
                var numbers: [String: Double] = [:]
                for state in EventState.allCases { numbers["count_\(state.rawValue)"] = Double(counts.counts[state] ?? 0) }
                numbers["oldest_pending_age_seconds"] = ((counts.oldestPendingAgeSeconds ?? 0) * 10).rounded() / 10
                numbers["delivered_since_last"] = since("delivered", "linked")
                numbers["failures_since_last"] = since("retry", "dead")
                var extra: [String: String] = [:]
                if let view = await gate?.view(account) {
                    numbers["window_requests"] = Double(view.windowRequests)
                    if let until = view.pausedUntil { extra["paused_until"] = Timestamp.string(until) }
                    if let until = view.credentialsRejectedUntil { extra["credentials_rejected_until"] = Timestamp.string(until) }
                }
                logger.event(.notice, "account.heartbeat", "account status", LogFields(account: account, extra: extra, numbers: numbers))
            }
        }
        Self.logUnknownAccounts(status, known: known, logger: logger)
    }

    /// `account.unknown` for each account with undelivered events that the config does not
    /// name: they stay pending and go once it is back.
    static func logUnknownAccounts(_ status: OutboxStatus, known: KnownAccounts, logger: Logger) {
        for (account, counts) in status.accounts.sorted(by: { $0.key < $1.key }) where !known.ids.contains(account) && counts.undelivered > 0 {
            logger.event(.warning, "account.unknown", "events of an account the config does not name wait until it is back",
                         LogFields(account: account, numbers: ["count_pending": Double(counts.counts[.pending] ?? 0),
                                                               "count_in_flight": Double(counts.counts[.inFlight] ?? 0)]))
        }
    }

    /// The wall clock stepped back by `-step` seconds: the gate's times move back with it at
    /// once (`PartnerGate.clockStepped`); the outbox's follow in `rebase`.
    func clockStepped(_ step: Double) async {
        logger.event(.warning, "clock.stepped", "the wall clock stepped back; pauses and scheduled attempts keep the wait they had left",
                     LogFields(numbers: ["step_seconds": (step * 1000).rounded() / 1000]))
        await gate?.clockStepped(by: step)
    }

    /// The wall clock stepped forward by `step` seconds: what is kept for the partner's sake
    /// keeps the wait it had left (`moveForward`, once the outbox could be written).
    func steppedForward(_ step: Double) {
        logger.event(.warning, "clock.stepped", "the wall clock stepped forward; the waits kept for the partner (a request that may still "
                     + "be at work there, the rate windows, its Retry-After, the circuit) keep the wait they had left",
                     LogFields(numbers: ["step_seconds": (step * 1000).rounded() / 1000]))
    }

    /// Moves what is kept for the partner's sake forward by `step`, seen at `now` (`boot`)
    /// (`moveForward(_:before:outbox:gate:settle:)`). False (logged) when the outbox failed:
    /// tried again the next tick.
    func moveForward(_ step: Double, now: Date, boot: Double) async -> Bool {
        do {
            try await Self.moveForward(step, before: now.addingTimeInterval(-step), outbox: outbox, gate: gate,
                                       settle: { [guardedClock] in guardedClock?.settle(wall: now, boot: boot) })
            return true
        } catch {
            if let suppressed = clockFailureLog.admit(now: Date()) {
                logger.event(.error, "storage.failed", "the outbox's holds could not follow the clock's step forward; tried again each second",
                             LogFields(error: OutboxError.logCode(error), numbers: suppressed > 0 ? ["suppressed": Double(suppressed)] : [:]))
            }
            return false
        }
    }

    /// A step forward of `step` from `before`: first the outbox's "may still be at the partner"
    /// windows and leases (`Outbox.shiftOpenWindows`); then, in one turn of the gate, its
    /// pauses, circuit and rate windows, and `settle` (the guarded clock on the new time); then
    /// the gate's holds, moved, are stored. Until `settle` the workers and the gate read the time
    /// before the step (`GuardedWallClock`). Throws, having moved nothing, when the outbox's
    /// windows could not be written. The heartbeat's, and the stop's for a step it left
    /// (`RelayApplication.moveForwardStepAtStop`).
    static func moveForward(_ step: Double, before: Date, outbox: Outbox, gate: PartnerGate?,
                            settle: @escaping @Sendable () -> Void) async throws {
        try await outbox.shiftOpenWindows(by: step, before: before)
        guard let gate else { return settle() }
        await gate.clockStepped(by: step, settle: settle)
        // Stored again with the gate's next change if this write fails.
        try? await outbox.storeHolds(await gate.holds())
    }

    /// Records the outbox's rebase by `-step` as begun (`Outbox.beginRebase`), with the gate's
    /// holds, already moved (with no gate, the stored ones are moved). False (logged) when the
    /// outbox failed: nothing was recorded, and the step is tried again the next tick.
    func beginRebase(_ step: Double, now: Date) async -> Bool {
        do {
            return try await outbox.beginRebase(by: step, now: now, holds: await gate?.holds())
        } catch {
            logRebaseFailure(error)
            return false
        }
    }

    private func logRebaseFailure(_ error: any Error) {
        guard let suppressed = clockFailureLog.admit(now: Date()) else { return }
        logger.event(.error, "storage.failed", "the outbox's schedules could not follow the clock's step back; tried again each second",
                     LogFields(error: OutboxError.logCode(error), numbers: suppressed > 0 ? ["suppressed": Double(suppressed)] : [:]))
    }

    /// Carries the rebase begun to its end, a chunk at a time, petting the watchdog between
    /// chunks (`Outbox.finishRebase`); stopped by the daemon's stop, it goes on at the next
    /// start. False (logged) when the outbox failed: it goes on from where it was the next tick.
    func finishRebase() async -> Bool {
        do {
            let watchdog = watchdogInterval != nil && isReady()
            try await outbox.finishRebase(onChunk: { [notifier] in if watchdog { notifier.notify("WATCHDOG=1") } },
                                          stop: { Task.isShuttingDownGracefully || Task.isCancelled })
            return true
        } catch {
            logRebaseFailure(error)
            return false
        }
    }

    /// How often the wall clock seen is stored (`Outbox.noteWallClock`).
    static let wallClockNoteSeconds: Int64 = 10

    static func statusLine(_ status: OutboxStatus) -> String {
        EventState.allCases.map { "\($0.rawValue) \(status.counts[$0] ?? 0)" }.joined(separator: ", ")
    }

    /// STATUS= while the outbox is damaged (its counts may not be readable at all).
    static let damagedStatus = "outbox file damaged: webhooks refused; see the journal (storage.damaged)"

    /// Reads the counts, refreshes the gauges and sends STATUS= (each beat, and between beats
    /// when the counts changed, at most once a tick).
    @discardableResult
    public func refreshStatus() async throws -> OutboxStatus {
        do {
            let status = try await outbox.liveStatus(now: now())
            metrics.update(from: status)
            var line = outbox.damage == nil ? Self.statusLine(status) : Self.damagedStatus
            if let note = statusNote() { line += "; " + note }
            notifier.notify("STATUS=" + line)
            return status
        } catch {
            if outbox.damage != nil { notifier.notify("STATUS=" + Self.damagedStatus) }
            throw error
        }
    }

    public func run() async throws {
        var previous: [String: Int] = [:]
        // The next beat is due `interval` after the last, as the interval is now: a reload that
        // shortens it applies at the next tick (found from outside: it waited out the old one).
        var lastBeat = Date.distantPast
        var statusChanges = metrics.changeCount
        let tick = min(watchdogInterval ?? 1, 1)
        var filesGoneLogged = false
        var damageLogged = false
        // Between beats, a refresh waits out 20 times what the last one took: the counts walk the
        // backlog (0.25 s of CPU with 1,000,000 events pending; 1.3 s before they were read off
        // the index), and refreshing them every second under traffic took 70 % of a core (found
        // from outside).
        var refreshAllowedAt = ContinuousClock.now
        var steps = ClockStepDetector(baseline: clockBaseline)
        // A step back whose rebase has not begun yet (a failed write), and whether one has
        // begun and is not finished.
        var unrebased = 0.0
        var rebasing = false
        // A step forward whose windows in the outbox are not moved yet (a failed write).
        var forward = 0.0
        // When the wall clock was last stored.
        var noted: ContinuousClock.Instant?
        // An admin command changed the outbox: its counts are refreshed, not left to the next beat.
        var othersWrote = false
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            let current = now()
            let boot = bootTime()
            if let step = steps.observe(wall: current, boot: boot) {
                if step < 0 {
                    await clockStepped(step)
                    unrebased += step
                } else {
                    steppedForward(step)
                    forward += step
                }
                // The beat's schedule was the old clock's too.
                lastBeat = lastBeat.addingTimeInterval(step)
            }
            if forward > 0, await moveForward(forward, now: current, boot: boot) { forward = 0 }
            if forward == 0 { guardedClock?.settle(wall: current, boot: boot) }
            // One rebase at a time: the one begun is finished before the next begins (beginning
            // again would move the rows already done a second time).
            if rebasing { rebasing = !(await finishRebase()) }
            if !rebasing, unrebased != 0, await beginRebase(unrebased, now: current) {
                unrebased = 0
                rebasing = !(await finishRebase())
            }
            // The clock seen, for the next start to tell a step back while stopped: not while a
            // step is still to be recorded (that start would then miss it). Every ten seconds,
            // not each tick: each is a commit and its fsync, and an idle daemon wrote ~570 MB a
            // day for it (found from outside). A start then sees a step back while stopped ten
            // seconds short at most: its holds wait up to that much longer, never less.
            if !rebasing && unrebased == 0, noted.map({ $0.duration(to: .now) >= .seconds(Self.wallClockNoteSeconds) }) ?? true {
                outbox.noteWallClock(current)
                noted = .now
            }
            // Once a second even without traffic: a deleted -wal is then checkpointed at once.
            if let problem = outbox.filesProblem() {
                if outbox.isWALProblem {
                    // The -wal or -shm is gone: any new SQLite connection (this daemon's next
                    // reader, an admin command, sqlite3) would build a second WAL over the
                    // index and corrupt the file. Everything is in the database file once this
                    // checkpoint is done: stop with an error, and the restart (systemd's
                    // Restart=on-failure) opens the outbox afresh, losing nothing.
                    logger.event(.critical, "storage.failed", "an outbox file was deleted while open; the WAL is copied into the "
                                 + "database file, then the daemon stops so that a restart opens them afresh: \(problem)",
                                 LogFields(error: "outbox_file_gone"))
                    try await outbox.checkpointNow()
                    throw OutboxError.fileGone(problem)
                }
                if !filesGoneLogged {
                    logger.event(.error, "storage.failed", "an outbox file was deleted, replaced or cannot be looked up while open; webhooks are refused "
                                 + "(503) until it is back or the daemon restarts, deliveries go on: \(problem)", LogFields(error: "outbox_file_gone"))
                }
                filesGoneLogged = true
            } else {
                filesGoneLogged = false
            }
            if let damage = outbox.damage, !damageLogged {
                damageLogged = true
                logger.event(.critical, "storage.damaged", "the outbox file is damaged (\(damage)); nothing more is written to it "
                             + "(webhooks are refused with 503, deliveries stop) and /readyz says storage_damaged until the daemon is "
                             + "restarted on a sound file: stop it, keep a copy of the file, then recover it (docs/operations.md, "
                             + "\"The outbox file is damaged\")",
                             LogFields(error: "outbox_damaged"))
                notifier.notify("STATUS=" + Self.damagedStatus)
            }
            // The first beat waits for READY=1 (whose STATUS= says "listening on ..."), so the
            // counts are what `systemctl status` shows from the first second on.
            if current >= lastBeat.addingTimeInterval(interval.value) && isReady() {
                othersWrote = false
                statusChanges = metrics.changeCount
                do { previous = try await beat(previous: previous) } catch {
                    logger.event(.error, "storage.failed", "heartbeat could not read the outbox", LogFields(error: OutboxError.logCode(error)))
                }
                lastBeat = current
            } else if metrics.changeCount != statusChanges || othersWrote, ContinuousClock.now >= refreshAllowedAt {
                // `systemctl status` follows the counts within a second, not a heartbeat (with a
                // small backlog).
                statusChanges = metrics.changeCount
                othersWrote = false
                let started = ContinuousClock.now
                _ = try? await refreshStatus()
                refreshAllowedAt = .now + SharedRefresh<Void>.standing(reuse: .zero, took: started.duration(to: .now))
            }
            self.tick()
            // systemd wants READY=1 before the first WATCHDOG=1.
            if watchdogInterval != nil, isReady() {
                await outbox.probeResponsive()
                notifier.notify("WATCHDOG=1")
            }
            // After the watchdog's ping, which this look (on the writer's queue too) must not
            // delay; what it finds is refreshed at the next tick.
            if isReady(), await outbox.noticeOtherWriters() { othersWrote = true }
            try? await gracefulSleep(seconds: tick)
        }
    }
}
