import CandidateRelayTesting
import Foundation
import GRDB
import Logging
import Synchronization
import Testing
@testable import CandidateRelay

/// A step of the wall clock (NTP setting a wrong clock right): whatever was scheduled by the old
/// clock keeps the wait it had left. Found from outside: a daemon an hour fast, set right,
/// held its deliveries for an hour (a full rate window's answers, and every stored event's next
/// attempt, an hour "ahead" of the new time).
@Suite struct ClockStepTests {
    static let t0 = Date(timeIntervalSince1970: 2_000_000_000)

    @Test func theDetectorTellsAStepBackFromTimePassingASuspendAndASlew() {
        var detector = ClockStepDetector()
        #expect(detector.observe(wall: Self.t0, boot: 100) == nil)  // the first look sets the baseline
        #expect(detector.observe(wall: Self.t0.addingTimeInterval(1), boot: 101) == nil)  // a second passes
        #expect(detector.observe(wall: Self.t0.addingTimeInterval(601), boot: 701) == nil)  // a suspend: both move
        #expect(detector.observe(wall: Self.t0.addingTimeInterval(601.0005), boot: 702) == nil)  // NTP's slew... (0.9995 s behind)
        #expect(detector.observe(wall: Self.t0.addingTimeInterval(602.5), boot: 703) == nil)  // ...and back (0.4995 s ahead)
        let back = detector.observe(wall: Self.t0.addingTimeInterval(603.5 - 3600), boot: 704)
        #expect(back.map { abs($0 + 3600) < 0.01 } == true)
        #expect(detector.observe(wall: Self.t0.addingTimeInterval(604.5 - 3600), boot: 705) == nil)  // said once
        // Forward: reported too (the waits kept for the partner must not end early).
        #expect(detector.observe(wall: Self.t0.addingTimeInterval(605.5), boot: 706).map { abs($0 - 3600) < 0.01 } == true)
        #expect(detector.observe(wall: Self.t0.addingTimeInterval(606.5), boot: 707) == nil)
        // With a baseline (the start's reading), the first look already tells a step.
        var seeded = ClockStepDetector(baseline: (Self.t0, 100))
        #expect(seeded.observe(wall: Self.t0.addingTimeInterval(1 - 60), boot: 101).map { abs($0 + 60) < 0.01 } == true)
    }

    /// Just after a step forward, until it is handled, the guarded clock reads the time before it
    /// plus the time that passed; a step back and time passing read as they are.
    @Test func theGuardedClockHoldsAStepForwardUntilSettled() {
        let wall = Mutex(Self.t0)
        let boot = Mutex(100.0)
        let clock = GuardedWallClock(baseline: (Self.t0, 100), wall: { wall.withLock { $0 } }, boot: { boot.withLock { $0 } })
        func pass(_ seconds: Double, step: Double = 0) {
            wall.withLock { $0 = $0.addingTimeInterval(seconds + step) }
            boot.withLock { $0 += seconds }
        }
        pass(5)
        #expect(clock.now() == Self.t0.addingTimeInterval(5))
        pass(0.5, step: 30)
        #expect(clock.now() == Self.t0.addingTimeInterval(5.5))  // not handled yet: before the step, plus the time passed
        pass(0.5)
        #expect(clock.now() == Self.t0.addingTimeInterval(6))
        clock.settle(wall: wall.withLock { $0 }, boot: boot.withLock { $0 })
        #expect(clock.now() == Self.t0.addingTimeInterval(36))
        pass(1, step: -600)  // a step back reads as it is (its schedules are moved back)
        #expect(clock.now() == Self.t0.addingTimeInterval(37 - 600))
    }

    /// A step forward moves the window's answers with it: they leave it when they would have.
    /// (Found from outside: the window emptied, and the next window's worth went at once.)
    @Test func aWindowToldOfAStepForwardKeepsItsAnswers() {
        var limiter = SlidingWindowLimiter(limit: 2, window: 60, history: [Self.t0, Self.t0])
        limiter.shift(by: 3600)
        // 10 s later, on a clock set an hour forward: still full until 60 s after the answers.
        #expect(limiter.earliestAllowed(now: Self.t0.addingTimeInterval(3610)) == Self.t0.addingTimeInterval(3660))
        #expect(limiter.reserve(now: Self.t0.addingTimeInterval(3610)) == nil)
        #expect(limiter.reserve(now: Self.t0.addingTimeInterval(3660)) != nil)
    }

    /// The gate told of a step forward: a full window and a partner's pause keep the wait they
    /// had left.
    @Test func theGateToldOfAStepForwardKeepsItsWaits() async throws {
        let clock = ManualClock(Self.t0)
        let gate = PartnerGateTests.gate(clock, requests: 1, perSeconds: 60)
        try await PartnerGateTests.send(gate, "default")
        clock.advance(3600 + 10)
        await gate.clockStepped(by: 3600)
        #expect(await gate.nextReadiness() == Self.t0.addingTimeInterval(3600 + 60))
        clock.advance(50)
        #expect(await gate.nextReadiness() == nil)
        let pausedAt = clock.now
        try await PartnerGateTests.send(gate, "default", AttemptReport(health: .untested, status: 429,
                                                                       accountPauseUntil: pausedAt.addingTimeInterval(120)))
        clock.advance(600)
        await gate.clockStepped(by: 600)
        #expect(await gate.holds()["account:default"] == pausedAt.addingTimeInterval(120 + 600))
    }

    /// An answer time after `now` (the clock went back) holds the window one window at most.
    @Test func aWindowWhoseAnswersAreAheadOfTheClockWaitsOneWindowAtMost() {
        var limiter = SlidingWindowLimiter(limit: 2, window: 60, history: [Self.t0.addingTimeInterval(3600), Self.t0.addingTimeInterval(3601)])
        let allowed = limiter.earliestAllowed(now: Self.t0)
        #expect(allowed == Self.t0.addingTimeInterval(60))
        let ticket = limiter.reserve(now: Self.t0.addingTimeInterval(60))
        #expect(ticket != nil)
    }

    /// Told of the step, an open circuit keeps what was left of its cooldown.
    @Test func aShiftedCircuitKeepsWhatWasLeftOfItsCooldown() {
        var breaker = CircuitBreaker(failures: 1, cooldown: 30)
        let opened = breaker.recordFailure(now: Self.t0)
        #expect(opened)
        breaker.shift(by: -3600)
        let early = breaker.admit(now: Self.t0.addingTimeInterval(29 - 3600))
        #expect(early == .wait(until: Self.t0.addingTimeInterval(30 - 3600)))
        let then = breaker.admit(now: Self.t0.addingTimeInterval(30 - 3600))
        #expect(then == .send(probe: true))
    }

    /// The gate, on a clock set back an hour: a full window and a partner's pause each end when
    /// they would have, not an hour later (the circuit's cooldown: the breaker's own test above).
    @Test func theGateToldOfAStepBackWaitsWhatWasLeftNotTheStep() async throws {
        let clock = ManualClock(Self.t0)
        let gate = PartnerGateTests.gate(clock, requests: 1, perSeconds: 60)
        try await PartnerGateTests.send(gate, "default")
        clock.advance(-3600)
        // The window's answer is "ahead": it counts as answered now (one window, not an hour).
        #expect(await gate.nextReadiness() == clock.now.addingTimeInterval(60))
        await gate.clockStepped(by: -3600)
        clock.advance(60)
        #expect(await gate.nextReadiness() == nil)
        // A 429's Retry-After, then another step back.
        let pausedAt = clock.now
        try await PartnerGateTests.send(gate, "default", AttemptReport(health: .untested, status: 429,
                                                                       accountPauseUntil: pausedAt.addingTimeInterval(120)))
        clock.advance(-3600)
        await gate.clockStepped(by: -3600)
        #expect(await gate.nextReadiness() == pausedAt.addingTimeInterval(120 - 3600))
        #expect(await gate.holds()["account:default"] == pausedAt.addingTimeInterval(120 - 3600))
    }

    /// The outbox's schedules move with the step: a retry keeps its wait, an event that was due
    /// stays due, a lease and a budget keep what they had left, the stored holds too.
    @Test func theOutboxsSchedulesKeepTheWaitTheyHadLeft() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        for id in ["a-retrying", "b-leased", "c-due"] {
            _ = try await outbox.accept(OutboxTests.submission(id, partnerID: id, at: Self.t0), maxBacklog: 10)
        }
        let retrying = try #require(try await outbox.claimNext(now: Self.t0, leaseSeconds: 30, maxAgeSeconds: 1000))
        #expect(retrying.id == "a-retrying")
        #expect(try await outbox.complete(retrying, outcome: .retry(at: Self.t0.addingTimeInterval(600), status: 503, error: "http_503"),
                                          now: Self.t0, latencyMs: 1))
        let leased = try #require(try await outbox.claimNext(now: Self.t0, leaseSeconds: 30, maxAgeSeconds: 1000))
        #expect(leased.id == "b-leased")
        outbox.saveHolds(["partner": Self.t0.addingTimeInterval(120), "circuit": Self.t0.addingTimeInterval(-1)])
        outbox.noteWallClock(Self.t0)  // queued on the writer, not waited for
        #expect(try await eventually(timeout: 10) { try await outbox.wallClockSeen() == Self.t0 })

        let now = Self.t0.addingTimeInterval(5 - 3600)  // 5 s later, on a clock set back an hour
        #expect(try await outbox.claimNext(now: now, leaseSeconds: 30, maxAgeSeconds: 1000) == nil)  // "c-due" is an hour away
        // Stored after the step, before it was noticed: by the new clock, so not moved.
        _ = try await outbox.accept(OutboxTests.submission("d-after", partnerID: "d-after", at: now), maxBacklog: 10)
        #expect(try await outbox.rebaseSchedules(by: -3600, now: now) == 3)
        #expect(try await outbox.wallClockSeen() == now)
        let rows = try await Self.schedules(outbox)
        #expect(rows["d-after"]?.next == now.millis)
        #expect(rows["d-after"]?.budget == now.millis)
        #expect(rows["a-retrying"]?.next == Self.t0.addingTimeInterval(600 - 3600).millis)
        #expect(rows["a-retrying"]?.budget == Self.t0.addingTimeInterval(-3600).millis)
        #expect(rows["b-leased"]?.lease == Self.t0.addingTimeInterval(30 - 3600).millis)
        #expect(rows["c-due"]?.next == now.millis)
        let holds = try await outbox.loadHolds()
        #expect(holds["partner"] == Self.t0.addingTimeInterval(120 - 3600))
        #expect(holds["circuit"] == now)  // over before the step: over after it
        #expect(try await outbox.claimNext(now: now, leaseSeconds: 30, maxAgeSeconds: 1000)?.id == "c-due")
    }

    /// A backlog larger than one chunk is rewritten a chunk per transaction, every row once, even
    /// when the rebase is cut short and carried on.
    @Test func aBacklogLargerThanAChunkIsMovedOnceEach() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        let count = Int(Outbox.rebaseChunkRows) + 500
        try await outbox.write { db in
            for n in 0..<count {
                try db.execute(sql: """
                    INSERT INTO events (id, account, body_sha256, state, position_uid, partner_candidate_id, received_at,
                      budget_started_at, updated_at, next_attempt_at) VALUES (?, 'default', 'x', 'pending', 'P', ?, ?, ?, ?, ?)
                    """, arguments: ["e\(n)", "c\(n)", Self.t0.millis, Self.t0.millis, Self.t0.millis, Self.t0.addingTimeInterval(60).millis])
            }
        }
        let now = Self.t0.addingTimeInterval(-3600)
        // Cut short after the first chunk (a stop, a crash: its progress is committed with it),
        // then carried on: every row moved once.
        outbox.noteWallClock(Self.t0)
        #expect(try await outbox.beginRebase(by: -3600, now: now, holds: nil))
        let chunks = Mutex(0)
        let first = try await outbox.finishRebase(onChunk: { chunks.withLock { $0 += 1 } }, stop: { chunks.withLock { $0 } >= 1 })
        #expect(first == Int(Outbox.rebaseChunkRows))
        #expect(try await outbox.wallClockSeen() == Self.t0)  // not finished: the clock seen is still the old one
        #expect(try await outbox.finishRebase() == count - first)
        #expect(try await outbox.wallClockSeen() == now)
        #expect(try await outbox.finishRebase() == 0)  // nothing in progress
        let wrong = try await outbox.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM events WHERE next_attempt_at <> ? OR budget_started_at <> ?",
                             arguments: [now.addingTimeInterval(60).millis, now.millis]) ?? -1
        }
        #expect(wrong == 0)
    }

    /// Found from outside: a rebase walked every rowid of the outbox, a chunk at a time: on
    /// 3,000,000 settled rows it took many seconds, and an outcome written meanwhile on the new
    /// clock, in a row not reached yet, was moved back by the step (its request's window ended at
    /// once; the resend met the request still at work). It walks the backlog and the open windows
    /// only: settled rows, however many, take no chunk.
    @Test func settledRowsTakeNoChunk() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        try await outbox.write { db in
            try db.execute(sql: """
                WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
                INSERT INTO events (id, account, body_sha256, state, position_uid, partner_candidate_id, received_at,
                  budget_started_at, updated_at, next_attempt_at, candidate_uid)
                SELECT 'd' || i, 'default', 'x', 'delivered', 'P', 'c' || i, ?, ?, ?, NULL, 'u' || i FROM n
                """, arguments: [2 * Outbox.rebaseChunkRows, Self.t0.millis, Self.t0.millis, Self.t0.millis])
            try db.execute(sql: """
                INSERT INTO events (id, account, body_sha256, state, position_uid, partner_candidate_id, received_at,
                  budget_started_at, updated_at, next_attempt_at, partner_open_until, candidate_uid)
                VALUES ('p1', 'default', 'x', 'pending', 'P', 'x1', ?, ?, ?, ?, NULL, NULL),
                       ('w1', 'default', 'x', 'delivered', 'P', 'x2', ?, ?, ?, NULL, ?, 'u-w1')
                """, arguments: [Self.t0.millis, Self.t0.millis, Self.t0.millis, Self.t0.addingTimeInterval(60).millis,
                                 Self.t0.millis, Self.t0.millis, Self.t0.millis, Self.t0.addingTimeInterval(60).millis])
        }
        let now = Self.t0.addingTimeInterval(-3600)
        #expect(try await outbox.beginRebase(by: -3600, now: now, holds: nil))
        let chunks = Mutex(0)
        #expect(try await outbox.finishRebase(onChunk: { chunks.withLock { $0 += 1 } }) == 2)
        #expect(chunks.withLock { $0 } == 1)
        let moved = try await outbox.read { db in
            try Row.fetchAll(db, sql: "SELECT next_attempt_at, partner_open_until FROM events WHERE id IN ('p1', 'w1') ORDER BY id")
                .map { [$0[0] as Millis?, $0[1] as Millis?] }
        }
        #expect(moved == [[now.addingTimeInterval(60).millis, nil], [nil, now.addingTimeInterval(60).millis]])
    }

    /// Found from outside: a time written on the new clock while a rebase went on (an outcome's
    /// window, a claim's lease, a retry's next attempt), in a row not reached yet, was moved back
    /// by the step: the window of a request still at work at the partner ended at once, and the
    /// resend met it. Only the times recorded at the rebase's start move.
    @Test func timesWrittenDuringARebaseAreTheNewClocks() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        try await outbox.write { db in
            for id in ["a", "b"] {
                try db.execute(sql: """
                    INSERT INTO events (id, account, body_sha256, state, position_uid, partner_candidate_id, received_at,
                      budget_started_at, updated_at, next_attempt_at) VALUES (?, 'default', 'x', 'pending', 'P', ?, ?, ?, ?, ?)
                    """, arguments: [id, id, Self.t0.millis, Self.t0.millis, Self.t0.millis, Self.t0.addingTimeInterval(60).millis])
            }
        }
        let now = Self.t0.addingTimeInterval(-3600)
        #expect(try await outbox.beginRebase(by: -3600, now: now, holds: nil))
        // Before the rebase reaches it, "b" is given up on the new clock: its retry in 90 s, its
        // request maybe at the partner for 120 s.
        let retry = now.addingTimeInterval(90).millis
        let open = now.addingTimeInterval(120).millis
        try await outbox.write { db in
            try db.execute(sql: "UPDATE events SET next_attempt_at = ?, partner_open_until = ? WHERE id = 'b'", arguments: [retry, open])
        }
        #expect(try await outbox.finishRebase() == 2)
        let rows = try await outbox.read { db in
            try Row.fetchAll(db, sql: "SELECT id, next_attempt_at, partner_open_until, budget_started_at FROM events ORDER BY id")
                .map { [$0[0] as String, String(describing: $0[1] as Millis?), String(describing: $0[2] as Millis?), String($0[3] as Millis)] }
        }
        // "b"'s budget start, still the old clock's, moves as "a"'s does; its new times stay.
        #expect(rows == [["a", String(describing: now.addingTimeInterval(60).millis as Millis?), "nil", String(now.millis)],
                         ["b", String(describing: retry as Millis?), String(describing: open as Millis?), String(now.millis)]], "\(rows)")
        #expect(try await outbox.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM rebase_rows") } == 0)
    }

    /// A rebase a previous release began and a crash cut short is carried on after the upgrade:
    /// the migration records the rows it had not reached yet.
    @Test func aRebaseAPreviousReleaseLeftIsCarriedOn() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.cleanup() }
        let now = Self.t0.addingTimeInterval(-3600)
        do {
            let queue = try DatabaseQueue(path: dir.file("o.sqlite3"))
            try OutboxSchema.migrator.migrate(queue, upTo: "v9_events_key_busy")
            try await queue.write { db in
                for id in ["done", "left"] {
                    try db.execute(sql: """
                        INSERT INTO events (id, account, body_sha256, state, position_uid, partner_candidate_id, received_at,
                          budget_started_at, updated_at, next_attempt_at) VALUES (?, 'default', 'x', 'pending', 'P', ?, ?, ?, ?, ?)
                        """, arguments: [id, id, now.millis, now.millis, now.millis, id == "done" ? now.addingTimeInterval(60).millis
                                                                                                 : Self.t0.addingTimeInterval(60).millis])
                }
                // The previous release had moved rowid 1 ("done") when it stopped.
                try db.execute(sql: """
                    INSERT INTO wall_clock (id, seen, rebase_step, rebase_now, rebase_last, rebase_done) VALUES (1, ?, -3600000, ?, 2, 1)
                    """, arguments: [now.millis, now.millis])
            }
            try queue.close()
        }
        let outbox = try Outbox(path: dir.file("o.sqlite3"))
        #expect(try await outbox.finishRebase() == 1)
        let next = try await outbox.read { db in try Millis.fetchAll(db, sql: "SELECT next_attempt_at FROM events ORDER BY rowid") }
        #expect(next == [now.addingTimeInterval(60).millis, now.addingTimeInterval(60).millis])
    }

    static func schedules(_ outbox: Outbox) async throws -> [String: (next: Millis?, budget: Millis, lease: Millis?)] {
        try await outbox.read { db in
            var rows: [String: (next: Millis?, budget: Millis, lease: Millis?)] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT id, next_attempt_at, budget_started_at, lease_expires_at FROM events") {
                rows[row[0]] = (row[1], row[2], row[3])
            }
            return rows
        }
    }

    /// The heartbeat notices the step within a tick, says so, and moves the outbox's schedules.
    @Test func theHeartbeatNoticesAStepAndMovesTheSchedules() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(OutboxTests.submission("e1", partnerID: "e1", at: Self.t0), maxBacklog: 10)
        let logs = LogCapture()
        let logger = Logger(label: "t") { RelayLogHandler(label: $0, settings: LogSettings(level: .info, format: .json), output: logs.output) }
        let clock = ManualClock(Self.t0)
        let boot = Mutex(1000.0)
        // A partner's pause of two minutes, in force when the clock goes back.
        let gate = PartnerGateTests.gate(clock)
        await gate.onHoldsChanged { holds in outbox.saveHolds(holds) }
        try await PartnerGateTests.send(gate, "default", AttemptReport(health: .untested, status: 429,
                                                                       accountPauseUntil: Self.t0.addingTimeInterval(120)))
        #expect(try await eventually(timeout: 10) { try await outbox.loadHolds()["account:default"] == Self.t0.addingTimeInterval(120) })
        let heartbeat = Heartbeat(outbox: outbox, interval: Live(3600), metrics: RelayMetrics(), notifier: SystemdNotifier(environment: [:]),
                                  watchdogInterval: 0.2, logger: logger, gate: gate, now: { clock.now }, bootTime: { boot.withLock { $0 } })
        let running = Task { try await heartbeat.run() }
        defer { running.cancel() }
        #expect(await eventually(timeout: 10) { !logs.events("relay.heartbeat").isEmpty })
        clock.advance(-3600)
        #expect(await eventually(timeout: 10) { !logs.events("clock.stepped").isEmpty })
        #expect(logs.events("clock.stepped").first?["step_seconds"] as? Double == -3600)
        // The clock seen is stored each tick, in the new frame once the step is followed.
        #expect(await eventually(timeout: 10) { (try? await outbox.wallClockSeen())?.map { $0 <= clock.now } ?? false })
        let due = try await eventually(timeout: 10) {
            try await outbox.claimNext(now: clock.now, leaseSeconds: 30, maxAgeSeconds: 100_000)?.id == "e1"
        }
        #expect(due)
        // The gate's pause moved back, and stored so (once: not moved again by the outbox).
        #expect(await gate.holds()["account:default"] == Self.t0.addingTimeInterval(120 - 3600))
        #expect(try await outbox.loadHolds()["account:default"] == Self.t0.addingTimeInterval(120 - 3600))
    }

    /// A step forward while a request given up on may still be at the partner: the heartbeat
    /// moves the event's window with the step, so its resend still waits for it (found from
    /// outside: the resend went at once and the partner created the candidate twice). An
    /// outcome read before the step and written after the move is moved too.
    @Test func theHeartbeatKeepsTheWindowOfARequestThatMayStillBeAtThePartnerAcrossAStepForward() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        for id in ["e1", "e2"] {
            _ = try await outbox.accept(OutboxTests.submission(id, partnerID: id, at: Self.t0), maxBacklog: 10)
        }
        // e1 timed out at t0: resent no sooner than t0 + 10 s (partner_open_until).
        let e1 = try #require(try await outbox.claimNext(now: Self.t0, leaseSeconds: 30, maxAgeSeconds: 100_000))
        #expect(try await outbox.complete(e1, outcome: .retry(at: Self.t0.addingTimeInterval(10), status: nil, error: "timeout"),
                                          now: Self.t0, latencyMs: nil, partnerOpenUntil: Self.t0.addingTimeInterval(10)))
        let e2 = try #require(try await outbox.claimNext(now: Self.t0, leaseSeconds: 30, maxAgeSeconds: 100_000))
        let logs = LogCapture()
        let logger = Logger(label: "t") { RelayLogHandler(label: $0, settings: LogSettings(level: .info, format: .json), output: logs.output) }
        let clock = ManualClock(Self.t0)
        let boot = Mutex(1000.0)
        let guarded = GuardedWallClock(baseline: (Self.t0, 1000), wall: { clock.now }, boot: { boot.withLock { $0 } })
        // A partner's pause of two minutes, in force when the clock goes forward.
        let gate = PartnerGateTests.gate(clock)
        await gate.onHoldsChanged { holds in outbox.saveHolds(holds) }
        try await PartnerGateTests.send(gate, "default", AttemptReport(health: .untested, status: 429,
                                                                       accountPauseUntil: Self.t0.addingTimeInterval(120)))
        let heartbeat = Heartbeat(outbox: outbox, interval: Live(3600), metrics: RelayMetrics(), notifier: SystemdNotifier(environment: [:]),
                                  watchdogInterval: 0.2, logger: logger, gate: gate, now: { clock.now },
                                  bootTime: { boot.withLock { $0 } }, guardedClock: guarded)
        let running = Task { try await heartbeat.run() }
        defer { running.cancel() }
        #expect(await eventually(timeout: 10) { !logs.events("relay.heartbeat").isEmpty })
        // One second later, the clock set 30 s forward; e2 (in flight) is given up on with the
        // time read before the heartbeat saw the step.
        boot.withLock { $0 += 1 }
        clock.advance(31)
        // The time a worker read then (the guard's own test checks that it reads so).
        let before = Self.t0.addingTimeInterval(1)
        #expect(await eventually(timeout: 10) { logs.events("clock.stepped").first?["step_seconds"] as? Double == 30 })
        #expect(await eventually(timeout: 10) { guarded.now() == clock.now })
        // e2's lease (30 s from t0) keeps what it had left: not expired 2 s later in real time.
        #expect(try await outbox.recoverLeases(expiredBefore: clock.now, now: clock.now, excluding: []) == 0)
        #expect(try await outbox.complete(e2, outcome: .retry(at: before.addingTimeInterval(10), status: nil, error: "timeout"),
                                          now: before, latencyMs: nil, partnerOpenUntil: before.addingTimeInterval(10)))
        // Neither is sent before its window ends, 10 s after it began in real time.
        #expect(try await outbox.claimNext(now: clock.now, leaseSeconds: 30, maxAgeSeconds: 100_000) == nil)
        #expect(try await outbox.claimNext(now: Self.t0.addingTimeInterval(30 + 9.9), leaseSeconds: 30, maxAgeSeconds: 100_000) == nil)
        #expect(try await outbox.claimNext(now: Self.t0.addingTimeInterval(30 + 10), leaseSeconds: 30, maxAgeSeconds: 100_000)?.id == "e1")
        #expect(try await outbox.claimNext(now: Self.t0.addingTimeInterval(30 + 10.9), leaseSeconds: 30, maxAgeSeconds: 100_000) == nil)
        #expect(try await outbox.claimNext(now: Self.t0.addingTimeInterval(30 + 11), leaseSeconds: 30, maxAgeSeconds: 100_000)?.id == "e2")
        // The pause keeps what it had left, in the gate and stored.
        #expect(await gate.holds()["account:default"] == Self.t0.addingTimeInterval(120 + 30))
        #expect(try await eventually(timeout: 10) { try await outbox.loadHolds()["account:default"] == Self.t0.addingTimeInterval(120 + 30) })
    }

    /// A step forward the heartbeat had not handled when the daemon stopped: handled at the stop,
    /// before the outbox closes (found from outside: a SIGTERM within a second of a +30 s step,
    /// and the restart's resend met the partner still creating the candidate).
    @Test func aStepForwardNotYetHandledIsHandledAtTheStop() async throws {
        let relay = try await RelayHarness()
        let id = try #require(try await relay.post(Candidates.json(partnerID: "stop-1")))
        _ = try await relay.waitFor(id, states: ["delivered"])
        let path = relay.application.configuration.storage.path
        let openUntil = Date().addingTimeInterval(10)
        try await DatabaseQueue(path: path).write { db in
            try db.execute(sql: "UPDATE events SET partner_open_until = ? WHERE id = ?", arguments: [openUntil.millis, id])
        }
        let pausedUntil = Date().addingTimeInterval(20)
        try await PartnerGateTests.send(relay.application.gate, "default", AttemptReport(health: .untested, status: 429,
                                                                                         accountPauseUntil: pausedUntil))
        await relay.application.moveForwardStepAtStop(wall: Date().addingTimeInterval(30), boot: ClockStepDetector.bootSeconds())
        let step = try #require(relay.logs.events("clock.stepped").last?["step_seconds"] as? Double)
        #expect(abs(step - 30) < 0.5)
        let stored = try await DatabaseQueue(path: path).read { db in
            try Int64.fetchOne(db, sql: "SELECT partner_open_until FROM events WHERE id = ?", arguments: [id])
        }
        #expect(abs(Double((stored ?? 0) - openUntil.millis) / 1000 - step) < 0.01)
        let holds = try await relay.application.outbox.loadHolds()
        #expect(abs((holds["account:default"]?.timeIntervalSince(pausedUntil) ?? 0) - step) < 0.01)
        // Nothing more to move: said once.
        await relay.application.moveForwardStepAtStop(wall: Date(), boot: ClockStepDetector.bootSeconds())
        #expect(relay.logs.events("clock.stepped").count == 1)
        await relay.stop()
    }

    /// A step's move that cannot be written (a full disk, a damaged file) is tried again each
    /// second, and said once a minute, not each second (review).
    @Test func aStepThatCannotBeWrittenIsSaidOnceAMinute() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(OutboxTests.submission("f1", partnerID: "f1", at: Self.t0), maxBacklog: 10)
        let f1 = try #require(try await outbox.claimNext(now: Self.t0, leaseSeconds: 30, maxAgeSeconds: 100_000))
        #expect(try await outbox.complete(f1, outcome: .retry(at: Self.t0.addingTimeInterval(10), status: nil, error: "timeout"),
                                          now: Self.t0, latencyMs: nil, partnerOpenUntil: Self.t0.addingTimeInterval(10)))
        try await outbox.pool.writeWithoutTransaction { db in
            try db.execute(sql: """
                CREATE TEMP TRIGGER refuse_move BEFORE UPDATE OF partner_open_until ON events
                BEGIN SELECT RAISE(ABORT, 'refused'); END
                """)
        }
        let logs = LogCapture()
        let logger = Logger(label: "t") { RelayLogHandler(label: $0, settings: LogSettings(level: .info, format: .json), output: logs.output) }
        let clock = ManualClock(Self.t0)
        let boot = Mutex(1000.0)
        let guarded = GuardedWallClock(baseline: (Self.t0, 1000), wall: { clock.now }, boot: { boot.withLock { $0 } })
        let heartbeat = Heartbeat(outbox: outbox, interval: Live(3600), metrics: RelayMetrics(), notifier: SystemdNotifier(environment: [:]),
                                  watchdogInterval: 0.1, logger: logger, now: { clock.now }, bootTime: { boot.withLock { $0 } },
                                  guardedClock: guarded)
        let running = Task { try await heartbeat.run() }
        defer { running.cancel() }
        #expect(await eventually(timeout: 10) { !logs.events("relay.heartbeat").isEmpty })
        clock.advance(30)
        #expect(await eventually(timeout: 10) { !logs.events("clock.stepped").isEmpty })
        try await Task.sleep(for: .seconds(2))  // ~20 tries
        let failures = logs.events("storage.failed").filter { ($0["msg"] as? String)?.contains("step forward") == true }
        #expect(failures.count == 1)
        // Not moved meanwhile, so the workers still read the time before the step.
        #expect(guarded.now() < clock.now)
    }
}
