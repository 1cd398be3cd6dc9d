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
        try await outbox.pool.read { db in try Row.fetchOne(db, sql: "SELECT payload FROM events WHERE id = ?", arguments: [id])?["payload"] as Data? }
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
}

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

    /// Starts `operation` and waits (for a signal, not a guess) until it sleeps on the clock.
    static func parked<T: Sendable>(_ clock: ManualClock, _ operation: @escaping @Sendable () async throws -> T) async -> Task<T, any Error> {
        let before = clock.sleeping
        let task = Task { try await operation() }
        _ = await eventually(timeout: 10, interval: 0.001) { clock.sleeping > before }
        return task
    }

    /// The resend after a 401 on the circuit's single probe must not wait for that probe.
    @Test func resendDuringAProbeDoesNotWaitForItself() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, failures: 1, cooldown: 0.05)
        await gate.settle(try await gate.admit(), health: .down)
        clock.advance(0.05)
        let probe = try await gate.admit()
        #expect(probe.probe)
        #expect(try await gate.withSlot(for: nil) { true })  // returns without the clock moving
    }

    @Test func aCancelledProbeLetsTheNextRequestProbe() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, failures: 1, cooldown: 0.05)
        await gate.settle(try await gate.admit(), health: .down)
        clock.advance(0.05)
        let probe = try await gate.admit()
        await gate.settle(probe, health: .untested)
        let next = try await gate.admit()
        #expect(next.probe)
    }

    /// A first send admitted before the partner said Retry-After waits it out too; the 401
    /// resend of an attempt already under way does not.
    @Test func aFirstSendWaitsOutAPauseOrderedAfterItsAdmission() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock)
        let admission = try await gate.admit()
        await gate.pause(until: clock.now.addingTimeInterval(0.3))
        let send = await Self.parked(clock) { try await gate.withSlot(for: admission) { clock.now } }
        clock.advance(0.2)
        _ = await eventually(timeout: 10, interval: 0.001) { clock.sleeping > 0 }
        clock.advance(0.1)
        let sentAt = try await send.value
        #expect(sentAt.timeIntervalSince(Date(timeIntervalSince1970: 2_000_000_000)) >= 0.3)
        await gate.pause(until: clock.now.addingTimeInterval(30))
        #expect(try await gate.withSlot(for: nil) { true })
    }

    /// A full window: the next request waits until the oldest answer is a window old.
    @Test func aFullWindowWaitsForTheOldestAnswerToAgeOut() async throws {
        let clock = ManualClock()
        let gate = Self.gate(clock, requests: 2, perSeconds: 10)
        try await gate.withSlot(for: nil) {}
        clock.advance(1)
        try await gate.withSlot(for: nil) {}
        let third = await Self.parked(clock) { try await gate.withSlot(for: nil) { clock.now } }
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
        try await gate.withSlot(for: nil) {}
        let stop = Atomic<Bool>(false)
        let waiting = await Self.parked(clock) {
            try await gate.withSlot(for: nil, giveUp: { stop.load(ordering: .relaxed) }) { true }
        }
        stop.store(true, ordering: .relaxed)
        clock.advance(0.25)  // the next look at the window
        await #expect(throws: CancellationError.self) { try await waiting.value }
    }
}
