import CandidateRelayTesting
import Foundation
import GRDB
import Logging
import Synchronization
import Testing
@testable import CandidateRelay

@Suite struct MaintenanceTests {
    static let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

    static func deliver(_ outbox: Outbox, id: String, partnerID: String, at: Date) async throws {
        _ = try await outbox.accept(OutboxTests.submission(id, body: #"{"first_name":"Ada"}"#, partnerID: partnerID, at: at), maxBacklog: 100)
        let claimed = try #require(try await outbox.claimNext(now: at, leaseSeconds: 60, maxAgeSeconds: 1e9))
        try await outbox.complete(claimed, outcome: .delivered(candidateUID: "u-\(id)", status: 201, summary: nil, fullResponse: Data("{}".utf8)),
                                  now: at, latencyMs: 1)
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
        #expect(logs.events("retention.pruned").first?["payloads_erased"] as? String == "1")
        clock.advance(23 * 86_400)
        #expect(try await pruner.runOnce().deleted == 2)
        #expect(try await outbox.record(id: "e1") == nil)
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
        #expect(logs.events("lease.recovered").first?["count"] as? String == "1")
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
