import Foundation
import Logging

/// A start on a full disk waits for space instead of exiting.
///
/// Found from outside: the outbox's first write at start (a new WAL after a clean stop, the
/// leases a crash left, the schema check) failed with "database or disk is full" and the daemon
/// exited 1. Under the unit (`Restart=on-failure`, `RestartSec=2`) any restart while the disk
/// was full became a restart loop (under systemd 252: nine restarts in 20 s, each exiting 1),
/// with nothing listening and a crash's worth of lines every 2 s; where systemd's start limit
/// applies, it would leave the unit failed, down after space came back. A running
/// daemon already rides a full disk out (ingest answers 503); now a starting one waits too: it
/// takes the one-daemon lock and keeps it, says why (`storage.full_at_start`, then once a
/// minute), keeps systemd's start timeout from running out (`EXTEND_TIMEOUT_USEC`, with a
/// `STATUS=` saying why), tries again (every 2 s at first, then less often, up to every 30 s: an
/// attempt that needs more room than there is, a migration, fills the disk each time) and starts
/// as usual once space is back. On a filesystem out of inodes where the lock file does not
/// exist yet, the lock is taken once the file can be made. Only `OutboxError.full` is waited
/// on: a held lock, a damaged or newer outbox, a permission still end the start at once.
/// Nothing listens meanwhile (senders' connections are refused; they retry, as for any stopped
/// daemon); SIGTERM ends the wait.
enum StartOnFullDisk {
    static let firstRetrySeconds = 2.0
    static let maxRetrySeconds = 30.0
    static let logEverySeconds = 60.0
    /// What each `EXTEND_TIMEOUT_USEC` asks for: longer than an attempt can take (SQLite waits
    /// up to 10 s for a lock an operator's `purge` or `backup` holds) plus the wait after it.
    static let extendSeconds = 60.0
    /// Asked once an attempt succeeded after a wait: the rest of the start (a migration on a
    /// large outbox, the recoveries) gets systemd's usual start timeout again.
    static let finishSeconds = 90.0

    /// Runs `attempt` until it returns, waiting while it fails with `OutboxError.full`; any other
    /// failure is thrown at once. `now` and `sleep` are the tests' to replace.
    static func retrying<T>(
        directory: String, logger: Logger, notifier: SystemdNotifier?,
        now: () -> Double = { Double(SystemdNotifier.monotonicMicroseconds()) / 1e6 },
        sleep: (Double) async throws -> Void = { try await Task.sleep(nanoseconds: UInt64($0 * 1e9)) },
        _ attempt: () async throws -> T
    ) async throws -> T {
        let start = now()
        var lastLog: Double?
        var retry = firstRetrySeconds
        while true {
            // Before each attempt as well: systemd's start timeout may have run out while the
            // daemon waited, and the attempt itself may take a while.
            if lastLog != nil { _ = notifier?.notify("EXTEND_TIMEOUT_USEC=\(Int(extendSeconds * 1_000_000))") }
            do {
                let result = try await attempt()
                if lastLog != nil {
                    _ = notifier?.notify("STATUS=starting: disk space is back\nEXTEND_TIMEOUT_USEC=\(Int(finishSeconds * 1_000_000))")
                }
                return result
            } catch let error as OutboxError {
                guard case .full = error else { throw error }
                let waited = now() - start
                if lastLog.map({ waited - $0 >= logEverySeconds }) ?? true {
                    lastLog = waited
                    var numbers = ["waited_seconds": waited.rounded(), "retry_seconds": retry]
                    if let free = Outbox.freeSpace(directory: directory)?.bytes { numbers["free_bytes"] = Double(free) }
                    logger.event(.error, "storage.full_at_start",
                                 "the outbox's filesystem is full: not started; trying again every \(Int(firstRetrySeconds)) s at first, "
                                 + "then less often (free space in \(directory), and the daemon starts by itself)",
                                 LogFields(extra: ["reason": error.description, "directory": directory], numbers: numbers))
                }
                _ = notifier?.notify("STATUS=waiting for disk space: the outbox's filesystem (\(directory)) is full\n"
                                     + "EXTEND_TIMEOUT_USEC=\(Int(extendSeconds * 1_000_000))")
                try await sleep(retry)
                retry = min(maxRetrySeconds, retry * 2)
            }
        }
    }
}

extension RelayApplication {
    /// `init`, waiting while the outbox's filesystem is full (`StartOnFullDisk`), with the
    /// one-daemon lock taken first and kept while it waits (a second daemon, `reload`, the
    /// admin commands see this one): what `serve` runs.
    public static func starting(configuration: RelayConfiguration, logSettings: LogSettings,
                                reloader: ConfigurationLoader?) async throws -> RelayApplication {
        let logger = RelayLogHandler.startLogger(logSettings)
        let path = configuration.storage.path
        let directory = (OutboxLock.canonicalPath(path) as NSString).deletingLastPathComponent
        let notifier = SystemdNotifier()
        let lock = try await StartOnFullDisk.retrying(directory: directory, logger: logger, notifier: notifier) {
            try OutboxLock(outboxPath: path)
        }
        let app = try await StartOnFullDisk.retrying(directory: directory, logger: logger, notifier: notifier) {
            try await RelayApplication(configuration: configuration, logSettings: logSettings, reloader: reloader, lock: lock)
        }
        lock.recordHolder()  // its first write may have met the full disk
        return app
    }
}
