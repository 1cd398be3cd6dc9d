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
        let slept = Mutex<[Double]>([])
        // 40 failures: 80 s of waiting, two log lines (at 0 s and at 60 s).
        let attempts = Attempts(failures: 40, error: Refused(description: "storage: SQLite error 13: database or disk is full"))
        let calls = try await StartOnFullDisk.retrying(
            storagePath: "/var/lib/candidate-relay/outbox.sqlite3", logger: Self.logger(logs),
            notifier: SystemdNotifier(environment: ["NOTIFY_SOCKET": socket.path]),
            isFull: { StartOnFullDisk.isDiskFull($0, storagePath: "/var/lib/candidate-relay/outbox.sqlite3") },
            sleep: { seconds in slept.withLock { $0.append(seconds) } }) { try attempts.run() }
        #expect(calls == 41)
        #expect(slept.withLock { $0 } == Array(repeating: StartOnFullDisk.retrySeconds, count: 40))
        let lines = logs.events("storage.full_at_start")
        #expect(lines.count == 2)
        #expect(lines.map { $0["waited_seconds"] as? Double } == [0, 60])
        #expect(lines.first?["directory"] as? String == "/var/lib/candidate-relay")
        #expect((lines.first?["reason"] as? String)?.contains("disk is full") == true)
        #expect(lines.first?["level"] as? String == "error")
        // Each wait keeps systemd's start timeout from running out, and says why.
        #expect(await eventually { socket.messages.count == 40 })
        #expect(socket.messages.allSatisfy {
            $0.contains("EXTEND_TIMEOUT_USEC=10000000") && $0.hasPrefix("STATUS=waiting for disk space")
        })
    }

    @Test func anyOtherFailureEndsTheStartAtOnce() async throws {
        let logs = LogCapture()
        let attempts = Attempts(failures: 1, error: Refused(description: "storage: cannot lock /tmp/x.sqlite3"))
        let dir = try TemporaryDirectory()
        defer { dir.cleanup() }
        let path = dir.file("outbox.sqlite3")
        await #expect(throws: Refused.self) {
            try await StartOnFullDisk.retrying(storagePath: path, logger: Self.logger(logs), notifier: nil,
                                               isFull: { StartOnFullDisk.isDiskFull($0, storagePath: path) },
                                               sleep: { _ in Issue.record("waited") }) { try attempts.run() }
        }
        #expect(attempts.calls.withLock { $0 } == 1)
        #expect(logs.events("storage.full_at_start").isEmpty)
    }

    /// SQLite's "full", ENOSPC from a call of our own; not a locked or damaged outbox on a disk
    /// with room (a temporary directory here).
    @Test func whatCountsAsAFullDisk() throws {
        let dir = try TemporaryDirectory()
        defer { dir.cleanup() }
        let path = dir.file("state/outbox.sqlite3")  // its directory does not exist: the parent's filesystem
        #expect(StartOnFullDisk.isDiskFull(OutboxError.storage("cannot open \(path): \(DatabaseError(resultCode: .SQLITE_FULL))"),
                                           storagePath: path))
        #expect(StartOnFullDisk.isDiskFull(OutboxError.storage("cannot open lock file \(path).lock: \(String(cString: strerror(ENOSPC)))"),
                                           storagePath: path))
        #expect(!StartOnFullDisk.isDiskFull(OutboxError.storage("cannot lock \(path)"), storagePath: path))
        #expect(!StartOnFullDisk.isDiskFull(OutboxError.damaged("\(DatabaseError(resultCode: .SQLITE_CORRUPT))"), storagePath: path))
        #expect(!StartOnFullDisk.isDiskFull(OutboxError.storage("\(DatabaseError(resultCode: .SQLITE_IOERR))"), storagePath: path))
        #expect((StartOnFullDisk.freeSpace(directory: dir.file("a/b/c"))?.bytes ?? 0) > 0)
    }
}
