import CandidateRelayTesting
import Foundation
import GRDB
import Logging
import PartnerSimulator
import Testing
@testable import CandidateRelay

/// Writes that fail (a full disk) while the daemon delivers and while systemd watches it. Both
/// found from outside on a tmpfs filled to its last byte; the real full disk is
/// `scripts/reliability/scenario_disk.py`'s (it needs root to mount one). Here a write is
/// refused on the writer connection instead.
@Suite struct StorageFailureDeliveryTests {
    /// An outcome that could not be written was still logged `delivery.succeeded` (and counted
    /// as delivered) while its event stayed in flight; the rescuer's resend was then logged
    /// and counted again. Now it is `delivery.outcome_unrecorded`, with the partner's
    /// `candidate_uid` for the operator, and nothing that says it was delivered.
    @Test func anOutcomeThatCouldNotBeWrittenIsNotLoggedAsDelivered() async throws {
        var simulator = PartnerSimulatorConfiguration()
        simulator.faults.latencyMs = 1_500
        let relay = try await RelayHarness(simulator: simulator)
        let id = try #require(try await relay.post(Candidates.json(partnerID: "unrecorded-1")))
        #expect(await eventually(timeout: 10) { (try? await relay.client.record(id))?["state"] as? String == "in_flight" })
        // The request is at the partner for 1.5 s; its outcome's write will be refused.
        try await relay.application.outbox.pool.writeWithoutTransaction { db in
            try db.execute(sql: """
                CREATE TEMP TRIGGER refuse_outcome BEFORE UPDATE OF state ON events
                WHEN NEW.state IN ('delivered', 'linked') BEGIN SELECT RAISE(ABORT, 'refused'); END
                """)
        }
        #expect(await eventually(timeout: 15) { !relay.logs.events("storage.failed").isEmpty })
        await relay.shutdownAndWait()
        let metrics = relay.application.metrics.exposition()

        #expect(relay.logs.events("delivery.succeeded").isEmpty)
        let unrecorded = relay.logs.events("delivery.outcome_unrecorded")
        #expect(unrecorded.count == 1)
        #expect(unrecorded.first?["event_id"] as? String == id)
        #expect(unrecorded.first?["outcome"] as? String == "delivered")
        #expect(unrecorded.first?["status"] as? Int == 201)
        #expect((unrecorded.first?["candidate_uid"] as? String)?.isEmpty == false)
        #expect(metrics.contains(#"candidate_relay_deliveries_total{account="default",outcome="delivered"} 0"#),
                "counted as delivered, never recorded: \(metrics)")
        #expect(metrics.contains(#"candidate_relay_deliveries_total{account="default",outcome="unrecorded"} 1"#), "\(metrics)")
        let state = try await DatabaseQueue(path: relay.application.configuration.storage.path).read { db in
            try String.fetchOne(db, sql: "SELECT state FROM events WHERE id = ?", arguments: [id])
        }
        #expect(state == "in_flight")  // the rescuer sends it again; the partner's 409 links it
        await relay.simulator.stop()
        relay.directory.cleanup()
    }

    /// The watchdog's probe returns once the writer answers, refused or not: a write refused
    /// for want of space sent no `WATCHDOG=1`, and systemd aborted the daemon 30 s into a full
    /// disk (which a restart does not mend: the start then waits for space, listening on nothing).
    @Test func theWatchdogIsPettedWhileEveryWriteIsRefused() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        let socket = try NotifySocket()
        defer { socket.close() }
        try await outbox.pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA query_only = 1") }
        await #expect(throws: (any Error).self) {
            try await outbox.pool.write { db in try db.execute(sql: "PRAGMA user_version = 0") }
        }
        let heartbeat = Heartbeat(outbox: outbox, interval: Live(3600), metrics: RelayMetrics(),
                                  notifier: SystemdNotifier(environment: ["NOTIFY_SOCKET": socket.path]),
                                  watchdogInterval: 0.2, logger: Logger(label: "t") { _ in SwiftLogNoOpLogHandler() })
        let running = Task { try await heartbeat.run() }
        #expect(await eventually(timeout: 10) { socket.messages.filter { $0 == "WATCHDOG=1" }.count >= 2 })
        running.cancel()
        _ = try? await running.value
    }

    /// Found from outside: a reload that shortened `logging.heartbeat_seconds` waited out the
    /// old interval (60 s by default) before the next beat; the interval is read at every tick.
    @Test func aShorterHeartbeatIntervalAppliesAtOnce() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        let logs = LogCapture()
        let interval = Live(3600.0)
        let heartbeat = Heartbeat(outbox: outbox, interval: interval, metrics: RelayMetrics(), notifier: SystemdNotifier(environment: [:]),
                                  watchdogInterval: nil,
                                  logger: Logger(label: "t") { RelayLogHandler(label: $0, settings: LogSettings(level: .info, format: .json), output: logs.output) })
        let running = Task { try await heartbeat.run() }
        #expect(await eventually(timeout: 10) { logs.events("relay.heartbeat").count == 1 })
        interval.set(0.2)
        #expect(await eventually(timeout: 10) { logs.events("relay.heartbeat").count >= 3 })
        running.cancel()
        _ = try? await running.value
    }

    /// The same for a request cut off by shutdown's grace period: its hand-back could not be
    /// written, so it is not `delivery.interrupted` ("handed back to pending"), which it is not.
    @Test func aHandBackThatCouldNotBeWrittenIsNotLoggedAsInterrupted() async throws {
        var simulator = PartnerSimulatorConfiguration()
        simulator.faults.latencyMs = 4_000
        let relay = try await RelayHarness(simulator: simulator) { $0.delivery.shutdownGraceSeconds = 0.5 }
        let id = try #require(try await relay.post(Candidates.json(partnerID: "unrecorded-2")))
        #expect(await eventually(timeout: 10) { (try? await relay.client.record(id))?["state"] as? String == "in_flight" })
        try await relay.application.outbox.pool.writeWithoutTransaction { db in
            try db.execute(sql: """
                CREATE TEMP TRIGGER refuse_hand_back BEFORE UPDATE OF state ON events
                WHEN NEW.state = 'pending' BEGIN SELECT RAISE(ABORT, 'refused'); END
                """)
        }
        await relay.shutdownAndWait()
        #expect(relay.logs.events("delivery.interrupted").isEmpty)
        let unrecorded = relay.logs.events("delivery.outcome_unrecorded")
        #expect(unrecorded.count == 1)
        #expect(unrecorded.first?["event_id"] as? String == id)
        #expect(unrecorded.first?["outcome"] as? String == "interrupted")
        #expect(relay.application.metrics.exposition().contains(#"candidate_relay_deliveries_total{account="default",outcome="interrupted"} 0"#))
        await relay.simulator.stop()
        relay.directory.cleanup()
    }
}
