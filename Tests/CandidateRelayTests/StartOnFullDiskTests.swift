import CandidateRelayTesting
import Foundation
import GRDB
import Logging
import Synchronization
import Testing
@testable import CandidateRelay

/// A start on a full disk waits for space (`StartOnFullDisk`). The real full disk, a tmpfs filled
/// before a restart, is `scripts/reliability/scenario_disk.py`'s (it needs root to mount one).
@Suite struct StartOnFullDiskTests {
    struct Refused: Error, CustomStringConvertible {
        var description: String
    }

    /// Fails `failures` times with `error`, then returns the number of calls.
    final class Attempts: Sendable {
        let calls = Mutex(0)
        let failures: Int
        let error: any Error & Sendable
        init(failures: Int, error: any Error & Sendable) {
            self.failures = failures
            self.error = error
        }
        func run() throws -> Int {
            let call = calls.withLock { $0 += 1; return $0 }
            if call <= failures { throw error }
            return call
        }
    }

    static func logger(_ logs: LogCapture) -> Logger {
        Logger(label: "t") { RelayLogHandler(label: $0, settings: LogSettings(level: .info, format: .json), output: logs.output) }
    }

    @Test func aFullDiskIsWaitedOutSaidOnceAMinuteAndSystemdKeepsWaiting() async throws {
        let logs = LogCapture()
        let socket = try NotifySocket()
        defer { socket.close() }
        let clock = Mutex(0.0)
        let slept = Mutex<[Double]>([])
        // 8 failures: waits of 2, 4, 8, 16, 30, 30, 30, 30 s (150 s), each attempt a second; said at 0, 65 and 127 s.
        let attempts = Attempts(failures: 8, error: OutboxError.full("cannot open x: SQLite error 13: database or disk is full"))
        let calls = try await StartOnFullDisk.retrying(
            directory: "/var/lib/candidate-relay", logger: Self.logger(logs),
            notifier: SystemdNotifier(environment: ["NOTIFY_SOCKET": socket.path]),
            now: { clock.withLock { $0 } },
            sleep: { seconds in
                // Each wait follows 2k - 1 datagrams (k STATUS, k - 1 extensions before attempts):
                // taken before going on, as systemd reads them; a burst past the socket's queue
                // (ten datagrams) would be dropped by the non-blocking sender (a flaky CI run).
                let waits = slept.withLock { $0.append(seconds); return $0.count }
                #expect(await eventually(timeout: 10) { socket.messages.count >= 2 * waits - 1 })
                clock.withLock { $0 += seconds + 1 }  // each attempt takes a second
            }) { try attempts.run() }
        #expect(calls == 9)
        #expect(slept.withLock { $0 } == [2, 4, 8, 16, 30, 30, 30, 30])
        let lines = logs.events("storage.full_at_start")
        #expect(lines.map { $0["waited_seconds"] as? Double } == [0, 65, 127])
        #expect(lines.first?["directory"] as? String == "/var/lib/candidate-relay")
        #expect((lines.first?["reason"] as? String)?.contains("disk is full") == true)
        #expect(lines.first?["level"] as? String == "error")
        // Each wait, and each attempt after one, keeps systemd's start timeout from running out;
        // the waits say why; the success gives the rest of the start the usual timeout.
        #expect(await eventually { socket.messages.count == 8 + 8 + 1 })
        let messages = socket.messages
        #expect(messages.filter { $0.hasPrefix("STATUS=waiting for disk space") && $0.contains("EXTEND_TIMEOUT_USEC=60000000") }.count == 8)
        #expect(messages.filter { $0 == "EXTEND_TIMEOUT_USEC=60000000" }.count == 8)
        #expect(messages.last == "STATUS=starting: disk space is back\nEXTEND_TIMEOUT_USEC=90000000")
    }

    /// A SIGTERM or SIGINT that cut a wait short ends the start there (`Stopped`): no attempt
    /// after it (found from outside: the signal's default action ended the process unannounced).
    @Test func aStopRequestedDuringAWaitEndsTheStart() async throws {
        let logs = LogCapture()
        let attempts = Attempts(failures: 100, error: OutboxError.full("cannot open x: SQLite error 13: database or disk is full"))
        let signalled = Mutex(false)
        await #expect(throws: StartOnFullDisk.Stopped.self) {
            try await StartOnFullDisk.retrying(
                directory: "/tmp", logger: Self.logger(logs), notifier: nil,
                sleep: { _ in if attempts.calls.withLock({ $0 }) == 2 { signalled.withLock { $0 = true } } },
                stopRequested: { signalled.withLock { $0 } }) { try attempts.run() }
        }
        #expect(attempts.calls.withLock { $0 } == 2)
    }

    /// A signal that came while the start waited, or while it finished, stops the application
    /// once it exists, before its `run()` made the service group: `run()` then starts and stops
    /// at once (before, such a `shutdown()` was lost, and the daemon ran on).
    @Test func aShutdownBeforeRunStopsTheRunAtOnce() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.cleanup() }
        let logs = LogCapture()
        let config = DemoMode.configuration(stateDirectory: dir.path, simulatorURL: "http://127.0.0.1:9", port: 0)
        let app = try await RelayApplication(configuration: config, logSettings: LogSettings(level: .info, format: .json),
                                             output: logs.output, environment: [:])
        await app.shutdown()
        let stopped = try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask { try await app.run(); return true }
            group.addTask { try await Task.sleep(for: .seconds(20)); return false }
            let first = try await group.next() ?? false
            group.cancelAll()
            return first
        }
        #expect(stopped)
        #expect(logs.events("relay.stopped").count == 1)
        // Never "ready" after "stopping" (found from outside: READY=1 went after STOPPING=1).
        let order = logs.all.compactMap { line -> String? in
            ["relay.started", "relay.stopping"].first { line.contains("\"event\":\"\($0)\"") }
        }
        #expect(order == ["relay.stopping"] || order == ["relay.started", "relay.stopping"], "\(order)")
    }

    /// Only a full disk is waited on: a held lock, a damaged or newer outbox end the start at
    /// once, whatever the free space (found in review: a free-space test took them all for a
    /// full disk on a nearly full one, and waited for ever).
    @Test(arguments: [
        OutboxLock.AlreadyLocked(path: "/x.lock") as any Error & Sendable,
        OutboxError.damaged("SQLite error 11: database disk image is malformed"),
        OutboxError.newerRelease("cannot open x: it was written by a newer candidate-relay"),
        OutboxError.storage("cannot open x: SQLite error 10: disk I/O error"),
    ])
    func anyOtherFailureEndsTheStartAtOnce(error: any Error & Sendable) async throws {
        let logs = LogCapture()
        let attempts = Attempts(failures: 1, error: error)
        await #expect(throws: (any Error).self) {
            try await StartOnFullDisk.retrying(directory: "/tmp", logger: Self.logger(logs), notifier: nil,
                                               sleep: { _ in Issue.record("waited") }) { try attempts.run() }
        }
        #expect(attempts.calls.withLock { $0 } == 1)
        #expect(logs.events("storage.full_at_start").isEmpty)
    }

    /// SQLite's "full" and ENOSPC are `.full`; an I/O error only on a filesystem with (nearly) no
    /// room; other errors never.
    @Test func whatCountsAsAFullDisk() throws {
        let dir = try TemporaryDirectory()
        defer { dir.cleanup() }
        let path = dir.file("state/outbox.sqlite3")  // its directory does not exist: the parent's filesystem
        func isFull(_ error: OutboxError) -> Bool { if case .full = error { true } else { false } }
        #expect(isFull(Outbox.fullOrStorage(DatabaseError(resultCode: .SQLITE_FULL), path: path, "m")))
        #expect(isFull(OutboxLock.failure(ENOSPC, "cannot open lock file")))
        #expect(isFull(OutboxLock.failure(EDQUOT, "cannot open lock file")))
        #expect(!isFull(OutboxLock.failure(EACCES, "cannot open lock file")))
        #expect(!isFull(Outbox.fullOrStorage(DatabaseError(resultCode: .SQLITE_CORRUPT), path: path, "m")))
        #expect(!isFull(Outbox.fullOrStorage(Refused(description: "SQLite error 13: x"), path: path, "m")))
        // A temporary directory has room: an I/O error there is not a full disk.
        #expect((Outbox.freeSpace(directory: dir.file("a/b/c"))?.bytes ?? 0) > Outbox.nearlyFullBytes)
        #expect(!isFull(Outbox.fullOrStorage(DatabaseError(resultCode: .SQLITE_IOERR), path: path, "m")))
        #expect(!isFull(Outbox.fullOrStorage(DatabaseError(resultCode: .SQLITE_CANTOPEN), path: path, "m")))
    }
}
