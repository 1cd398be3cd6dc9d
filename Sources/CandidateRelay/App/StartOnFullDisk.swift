import Foundation
import Logging

/// A start on a full disk waits for space instead of exiting.
///
/// Found from outside: the outbox's first write at start (a new WAL after a clean stop, the
/// leases a crash left, the schema check) failed with "database or disk is full" and the daemon
/// exited 1. Under the unit (`Restart=on-failure`, `RestartSec=2`) any restart while the disk
/// was full then failed every 2 s, and systemd's start limit (5 starts in 10 s) left the unit
/// failed for good: it stayed down after space came back, until an operator noticed. A running
/// daemon already rides a full disk out (ingest answers 503); now a starting one waits too: it
/// says why (`storage.full_at_start`, then once a minute), keeps systemd's start timeout from
/// running out (`EXTEND_TIMEOUT_USEC`, with a `STATUS=` saying why), tries again every 2 s and
/// starts as usual once space is back. Nothing listens meanwhile (senders get a refused
/// connection and retry, as for any stopped daemon); SIGTERM ends the wait at once.
enum StartOnFullDisk {
    static let retrySeconds = 2.0
    static let logEverySeconds = 60.0
    /// Below this, a failed start is taken for a full disk whatever SQLite called it (a failed
    /// grow of the shared-memory file is "disk I/O error").
    static let nearlyFullBytes = 1 << 20

    /// Whether `error`, a failed start, is the outbox's filesystem being full.
    static func isDiskFull(_ error: any Error, storagePath: String) -> Bool {
        let text = String(describing: error)
        // SQLITE_FULL (GRDB's "SQLite error 13: database or disk is full"), or ENOSPC / EDQUOT
        // from a call of our own (the lock file, the directory).
        if text.contains("SQLite error 13:") || text.contains(String(cString: strerror(ENOSPC)))
            || text.contains(String(cString: strerror(EDQUOT))) {
            return true
        }
        guard let space = freeSpace(directory: (storagePath as NSString).deletingLastPathComponent) else { return false }
        return space.bytes < nearlyFullBytes || space.inodes == 0
    }

    /// Bytes and inodes an unprivileged writer may still use in `directory`'s filesystem, or of
    /// the nearest existing parent's.
    static func freeSpace(directory: String) -> (bytes: Int, inodes: Int)? {
        var directory = directory.isEmpty ? "." : directory
        var stats = statvfs()
        while statvfs(directory, &stats) != 0 {
            let parent = (directory as NSString).deletingLastPathComponent
            guard !parent.isEmpty, parent != directory else { return nil }
            directory = parent
        }
        return (Int(stats.f_bavail) * Int(stats.f_frsize), Int(stats.f_favail))
    }

    /// Runs `attempt` until it returns, waiting while it fails for a full disk; any other
    /// failure is thrown at once. `sleep` and `isFull` are the tests' to replace.
    static func retrying<T>(
        storagePath: String, logger: Logger, notifier: SystemdNotifier?,
        isFull: (any Error) -> Bool,
        sleep: (Double) async throws -> Void = { try await Task.sleep(nanoseconds: UInt64($0 * 1e9)) },
        _ attempt: () async throws -> T
    ) async throws -> T {
        let directory = (storagePath as NSString).deletingLastPathComponent
        var waited = 0.0
        var lastLog: Double?
        while true {
            do {
                return try await attempt()
            } catch where isFull(error) {
                if lastLog.map({ waited - $0 >= logEverySeconds }) ?? true {
                    lastLog = waited
                    let space = freeSpace(directory: directory)
                    logger.event(.error, "storage.full_at_start",
                                 "the outbox's filesystem is full: not started; trying again every \(Int(retrySeconds)) s "
                                 + "(free space in \(directory), and the daemon starts by itself)",
                                 LogFields(extra: ["reason": String(describing: error), "directory": directory],
                                           numbers: ["free_bytes": Double(space?.bytes ?? 0), "waited_seconds": waited.rounded()]))
                }
                _ = notifier?.notify(
                    "STATUS=waiting for disk space: the outbox's filesystem (\(directory)) is full\n"
                    + "EXTEND_TIMEOUT_USEC=\(Int(retrySeconds * 5 * 1_000_000))")
                try await sleep(retrySeconds)
                waited += retrySeconds
            }
        }
    }
}

extension RelayApplication {
    /// `init`, waiting while the outbox's filesystem is full (`StartOnFullDisk`): what `serve` runs.
    public static func starting(configuration: RelayConfiguration, logSettings: LogSettings,
                                reloader: ConfigurationLoader?) async throws -> RelayApplication {
        var logger = Logger(label: "relay") { RelayLogHandler(label: $0, settings: logSettings) }
        logger.logLevel = .trace
        let path = configuration.storage.path
        return try await StartOnFullDisk.retrying(
            storagePath: path, logger: logger, notifier: SystemdNotifier(),
            isFull: { StartOnFullDisk.isDiskFull($0, storagePath: path) }) {
            try await RelayApplication(configuration: configuration, logSettings: logSettings, reloader: reloader)
        }
    }
}
