import CandidateRelayTesting
import Foundation
import GRDB
import Logging
import Synchronization
import Testing
@testable import CandidateRelay

@Suite struct MaintenanceTests {
    static let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

    /// An event stored, claimed and settled with `outcome`.
    static func settled(_ outbox: Outbox, id: String, partnerID: String, at: Date, body: String, outcome: RecordedOutcome) async throws {
        _ = try await outbox.accept(OutboxTests.submission(id, body: body, partnerID: partnerID, at: at), maxBacklog: 100)
        let claimed = try #require(try await outbox.claimNext(now: at, leaseSeconds: 60, maxAgeSeconds: 1e9))
        try await outbox.complete(claimed, outcome: outcome, now: at, latencyMs: 1)
    }

    static func deliver(_ outbox: Outbox, id: String, partnerID: String, at: Date, body: String = #"{"first_name":"Ada"}"#) async throws {
        try await settled(outbox, id: id, partnerID: partnerID, at: at, body: body,
                          outcome: .delivered(candidateUID: "u-\(id)", status: 201, summary: nil, fullResponse: Data("{}".utf8)))
    }

    static func payload(_ outbox: Outbox, _ id: String) async throws -> Data? {
        try await outbox.pool.read { db in try Row.fetchOne(db, sql: "SELECT body FROM payloads WHERE event_id = ?", arguments: [id])?["body"] as Data? }
    }

    @Test func prunerErasesPayloadsThenDeletesRecordsOnTime() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.cleanup() }
        let outbox = try Outbox(path: dir.file("o.sqlite3"))
        let clock = ManualClock(Date(timeIntervalSince1970: 2_000_000_000))
        try await Self.deliver(outbox, id: "e1", partnerID: "A", at: clock.now)
        // A dead event keeps its payload until retried or purged.
        _ = try await outbox.accept(OutboxTests.submission("d1", body: "{}", partnerID: "B", at: clock.now), maxBacklog: 100)
        let claimed = try #require(try await outbox.claimNext(now: clock.now, leaseSeconds: 60, maxAgeSeconds: 1e9))
        try await outbox.complete(claimed, outcome: .dead(status: 404, error: "position_not_found"), now: clock.now, latencyMs: 1)

        let storage = Live(StorageConfiguration(path: outbox.path, payloadRetentionDays: 7, recordRetentionDays: 30))
        let logs = LogCapture()
        let logger = Logger(label: "t") { RelayLogHandler(label: $0, settings: LogSettings(level: .info, format: .json), output: logs.output) }
        let pruner = RetentionPruner(outbox: outbox, storage: storage, logger: logger, now: { clock.now })
        clock.advance(6.9 * 86_400)
        #expect(try await pruner.runOnce() == (0, 0))
        #expect(try await Self.payload(outbox, "e1") != nil)
        clock.advance(0.2 * 86_400)
        #expect(try await pruner.runOnce() == (1, 0))
        #expect(try await Self.payload(outbox, "e1") == nil)
        #expect(try await Self.payload(outbox, "d1") != nil)
        #expect(try await outbox.record(id: "e1")?.candidateUID == "u-e1")
        #expect(logs.events("retention.pruned").first?["payloads_erased"] as? Int == 1)
        // The partner's full answer goes with the payload; the next pass finds nothing more.
        let full = try await outbox.pool.read { db in
            try Row.fetchOne(db, sql: "SELECT partner_response_full FROM events WHERE id = 'e1'")?["partner_response_full"] as Data?
        }
        #expect(full == nil)
        #expect(try await pruner.runOnce() == (0, 0))
        clock.advance(23 * 86_400)
        #expect(try await pruner.runOnce().deleted == 2)
        #expect(try await outbox.record(id: "e1") == nil)
    }

    /// A stop while a pass runs (another service failing at start cancels the group) throws
    /// `CancellationError` out of the outbox: that is the stop, not the disk's failure (found
    /// from outside: `storage.failed` `CancellationError` came before a failed start's
    /// `relay.failed`, pointing the operator at the disk).
    @Test func aPassCancelledByAStopIsNoStorageFailure() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.cleanup() }
        let outbox = try Outbox(path: dir.file("o.sqlite3"))
        let storage = Live(StorageConfiguration(path: outbox.path, payloadRetentionDays: 7, recordRetentionDays: 30))
        let logs = LogCapture()
        let logger = Logger(label: "t") { RelayLogHandler(label: $0, settings: LogSettings(level: .info, format: .json), output: logs.output) }
        // The pass's own task is cancelled as it starts, before the outbox is asked.
        let pruner = RetentionPruner(outbox: outbox, storage: storage, logger: logger, now: {
            withUnsafeCurrentTask { $0?.cancel() }
            return Date()
        })
        let cancelled = await Task { do { try await pruner.runOnce(); return false } catch { return error is CancellationError } }.value
        #expect(cancelled)  // what `run` meets: the outbox's answer to a cancelled task
        try await pruner.run()
        #expect(logs.events("storage.failed").isEmpty, "\(logs.all)")
    }

    /// Erasing a payload keeps only the code of the partner's messages (they may quote the
    /// candidate), in the record and in the history; a later pass leaves them alone.
    @Test func purgeErasesMessagesWithThePayloadsItFinds() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.cleanup() }
        let outbox = try Outbox(path: dir.file("o.sqlite3"))
        let now = Date(timeIntervalSince1970: 2_000_000_000)
        for (id, partnerID) in [("d1", "A"), ("d2", "B")] {
            _ = try await outbox.accept(OutboxTests.submission(id, body: "{}", partnerID: partnerID, at: now), maxBacklog: 100)
            let claimed = try #require(try await outbox.claimNext(now: now, leaseSeconds: 60, maxAgeSeconds: 1e9))
            try await outbox.complete(claimed, outcome: .dead(status: 422, error: "invalid_email: ada@example.test is not valid"),
                                      now: now, latencyMs: 1)
        }
        _ = try await outbox.accept(OutboxTests.submission("p1", body: "{}", partnerID: "C", at: now), maxBacklog: 100)
        let later = now.addingTimeInterval(10)
        #expect(try await outbox.prune(payloadBefore: later, recordBefore: .distantPast, includeDead: false, now: later) == (0, 0))
        #expect(try await outbox.prune(payloadBefore: later, recordBefore: .distantPast, includeDead: true, now: later) == (2, 0))
        for id in ["d1", "d2"] {
            #expect(try await Self.payload(outbox, id) == nil)
            #expect(try await outbox.record(id: id)?.lastError == "invalid_email")
            #expect(try await outbox.history(id: id).map(\.error) == ["invalid_email"])
        }
        #expect(try await Self.payload(outbox, "p1") != nil)  // pending: never erased by retention
        #expect(try await outbox.prune(payloadBefore: later, recordBefore: .distantPast, includeDead: true, now: later) == (0, 0))
    }

    static func dead(_ outbox: Outbox, id: String, partnerID: String, at: Date, body: String = #"{"first_name":"Ada"}"#) async throws {
        try await settled(outbox, id: id, partnerID: partnerID, at: at, body: body, outcome: .dead(status: 404, error: "position_not_found"))
    }

    /// `count` copies of the settled event `seed`, payload included (ids `<prefix>00000`...), in
    /// one transaction: a big outbox without a commit per event.
    static func clone(_ outbox: Outbox, _ seed: String, prefix: String, count: Int) async throws {
        try await outbox.pool.write { db in
            for index in 0..<count {
                let id = prefix + String(String(100_000 + index).dropFirst())
                try db.execute(sql: """
                    INSERT INTO events (id, account, idempotency_key, body_sha256, state, attempts, lease, position_uid,
                      partner_candidate_id, candidate_uid, received_at, budget_started_at, updated_at, next_attempt_at,
                      lease_expires_at, last_status, last_error, partner_response, partner_response_full, payload_erased_at)
                    SELECT ?, account, NULL, body_sha256, state, attempts, lease, position_uid, ?, candidate_uid, received_at,
                      budget_started_at, updated_at, next_attempt_at, lease_expires_at, last_status, last_error, partner_response,
                      partner_response_full, payload_erased_at
                    FROM events WHERE id = ?
                    """, arguments: [id, id, seed])
                try db.execute(sql: "INSERT INTO payloads (event_id, body) SELECT ?, body FROM payloads WHERE event_id = ?",
                               arguments: [id, seed])
            }
        }
    }

    /// A big purge (the admin CLI's, or the retention pass after a lowered retention) is many
    /// short transactions: between them another connection takes the write lock at once, as the
    /// daemon's group commits do. In one transaction, 300,000 payloads held every 202 for 7.9 s.
    @Test func aBigPurgeLetsOtherWritersInBetweenItsTransactions() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        let now = Date(timeIntervalSince1970: 2_000_000_000)
        try await Self.deliver(outbox, id: "e", partnerID: "A", at: now)
        try await Self.clone(outbox, "e", prefix: "c", count: 1_199)
        // Another process's connection, which waits for no lock: busy is an error at once.
        let other = try DatabaseQueue(path: dir.file("o.sqlite3"))
        let seen = Mutex<[[Int]]>([])
        let pause = MaintenancePause { _ in
            try await other.write { db in
                let left = [try Int.fetchOne(db, sql: "SELECT count(*) FROM payloads")!, try Int.fetchOne(db, sql: "SELECT count(*) FROM events")!]
                seen.withLock { $0.append(left) }
            }
        }
        let later = now.addingTimeInterval(10)
        #expect(try await outbox.prune(payloadBefore: later, recordBefore: later, includeDead: true, now: later, pause: pause) == (1_200, 1_200))
        // Erased 500 at a time, then deleted 500 at a time (the last, short chunk ends it).
        #expect(seen.withLock { $0 } == [[700, 1_200], [200, 1_200], [0, 1_200], [0, 700], [0, 200]])
        #expect(try await outbox.pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM events") } == 0)
    }

    /// A chunk is also bounded by its payloads' bytes: `secure_delete` overwrites each, and 500
    /// payloads of 1 MB held the writer for seconds again.
    @Test func chunksAreBoundedByCountAndBytes() async throws {
        let mb = 1 << 20
        let sizes = [3 * mb, 3 * mb, 3 * mb, 20 * mb, 1, 1]
        let items = sizes.enumerated().map { (id: "e\($0.offset)", bytes: $0.element) }
        #expect(Outbox.chunks(items).map(Array.init) == [["e0", "e1"], ["e2"], ["e3"], ["e4", "e5"]])
        let many = (0..<1_001).map { (id: "s\($0)", bytes: 100) }
        #expect(Outbox.chunks(many).map(\.count) == [500, 500, 1])
        #expect(Outbox.chunks([(id: String, bytes: Int)]()).isEmpty)

        // In a purge: five 3 MB payloads are erased two, two, then one at a time.
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        let now = Date(timeIntervalSince1970: 2_000_000_000)
        let big = String(repeating: "x", count: 3 * mb)
        try await Self.deliver(outbox, id: "e", partnerID: "A", at: now, body: big)
        try await Self.clone(outbox, "e", prefix: "c", count: 4)
        let left = Mutex<[Int]>([])
        let pause = MaintenancePause { _ in
            let count = try await outbox.pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM payloads")! }
            left.withLock { $0.append(count) }
        }
        let later = now.addingTimeInterval(10)
        #expect(try await outbox.prune(payloadBefore: later, recordBefore: .distantPast, includeDead: true, now: later, pause: pause) == (5, 0))
        #expect(left.withLock { $0 } == [3, 1, 0])

        // Deleting records deletes their payloads too: bounded the same way.
        let (dir2, records) = try OutboxTests.open()
        defer { dir2.cleanup() }
        try await Self.dead(records, id: "e", partnerID: "A", at: now, body: big)
        try await Self.clone(records, "e", prefix: "c", count: 4)
        let recordsLeft = Mutex<[Int]>([])
        let countRecords = MaintenancePause { _ in
            let count = try await records.pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM events")! }
            recordsLeft.withLock { $0.append(count) }
        }
        #expect(try await records.prune(payloadBefore: .distantPast, recordBefore: later, includeDead: false, now: later, pause: countRecords) == (0, 5))
        #expect(recordsLeft.withLock { $0 } == [3, 1])
    }

    /// The events to erase are read first, then erased a chunk at a time: one that changed in
    /// between (retried, so pending again and about to be sent) keeps its payload.
    @Test func aPurgeLeavesAnEventRetriedSinceItsRead() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        let now = Date(timeIntervalSince1970: 2_000_000_000)
        try await Self.dead(outbox, id: "a", partnerID: "A", at: now)
        try await Self.clone(outbox, "a", prefix: "d", count: 600)  // d00599 is last: in the second chunk
        let retried = Mutex(false)
        let pause = MaintenancePause { _ in
            guard !retried.withLock({ $0 }) else { return }
            retried.withLock { $0 = true }
            let result = try await outbox.retry(ids: ["d00599"], now: now)
            #expect(result.retried == ["d00599"])
        }
        let later = now.addingTimeInterval(10)
        #expect(try await outbox.prune(payloadBefore: later, recordBefore: .distantPast, includeDead: true, now: later, pause: pause) == (600, 0))
        #expect(try await Self.payload(outbox, "d00599") != nil)
        #expect(try await outbox.record(id: "d00599")?.state == .pending)
        #expect(try await Self.payload(outbox, "d00598") == nil)
    }

    /// `retry --all-dead` over more dead events than one transaction takes retries them all.
    @Test func retryingManyDeadEventsTakesThemAllInChunks() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        let now = Date(timeIntervalSince1970: 2_000_000_000)
        try await Self.dead(outbox, id: "a", partnerID: "A", at: now)
        try await Self.clone(outbox, "a", prefix: "d", count: 1_100)
        let pauses = Mutex(0)
        let result = try await outbox.retry(ids: nil, now: now, pause: MaintenancePause { _ in pauses.withLock { $0 += 1 } })
        #expect(result.retried.count == 1_101 && result.skipped.isEmpty)
        #expect(pauses.withLock { $0 } == 3)
        #expect(try await outbox.status(now: now).counts[.dead, default: 0] == 0)
    }

    @Test func rescuerReturnsOnlyExpiredLeases() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.cleanup() }
        let outbox = try Outbox(path: dir.file("o.sqlite3"))
        let clock = ManualClock(Date(timeIntervalSince1970: 2_000_000_000))
        _ = try await outbox.accept(OutboxTests.submission("e1", at: clock.now), maxBacklog: 100)
        _ = try #require(try await outbox.claimNext(now: clock.now, leaseSeconds: 60, maxAgeSeconds: 1e9))
        let logs = LogCapture()
        let logger = Logger(label: "t") { RelayLogHandler(label: $0, settings: LogSettings(level: .info, format: .json), output: logs.output) }
        let rescuer = LeaseRescuer(outbox: outbox, logger: logger, now: { clock.now })
        clock.advance(59)
        #expect(try await rescuer.runOnce() == 0)
        clock.advance(2)
        #expect(try await rescuer.runOnce() == 1)
        #expect(try await outbox.record(id: "e1")?.state == .pending)
        #expect(logs.events("lease.recovered").first?["count"] as? Int == 1)
    }

    /// A lease a live worker still holds is not taken back, however late: the process was
    /// frozen (SIGSTOP) past its expiry, and the worker has the partner's answer to record
    /// (taken back, the 201 was thrown away and the candidate sent again).
    @Test func rescuerLeavesTheLeasesItsWorkersHold() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.cleanup() }
        let outbox = try Outbox(path: dir.file("o.sqlite3"))
        let clock = ManualClock(Date(timeIntervalSince1970: 2_000_000_000))
        _ = try await outbox.accept(OutboxTests.submission("e1", partnerID: "C1", at: clock.now), maxBacklog: 100)
        _ = try await outbox.accept(OutboxTests.submission("e2", partnerID: "C2", at: clock.now), maxBacklog: 100)
        _ = try #require(try await outbox.claimNext(now: clock.now, leaseSeconds: 60, maxAgeSeconds: 1e9))
        _ = try #require(try await outbox.claimNext(now: clock.now, leaseSeconds: 60, maxAgeSeconds: 1e9))
        let held = Mutex<Set<String>>(["e1"])
        let logger = Logger(label: "t") { RelayLogHandler(label: $0, settings: LogSettings(level: .info, format: .json), output: LogCapture().output) }
        let rescuer = LeaseRescuer(outbox: outbox, logger: logger, now: { clock.now }, held: { held.withLock { $0 } })
        clock.advance(3_600)
        #expect(try await rescuer.runOnce() == 1)
        #expect(try await outbox.record(id: "e1")?.state == .inFlight)
        #expect(try await outbox.record(id: "e2")?.state == .pending)
        // Once its worker lets go (recorded, or given up), the rescuer takes it back.
        held.withLock { $0 = [] }
        #expect(try await rescuer.runOnce() == 1)
        #expect(try await outbox.record(id: "e1")?.state == .pending)
    }
}
