import Foundation
import Logging
import Synchronization

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
/// daemon). SIGTERM or SIGINT ends the wait: `relay.stopped`, exit 0 (`StartStopSignals`).
public enum StartOnFullDisk {
    /// A SIGTERM or SIGINT came while the start waited for disk space: nothing started.
    public struct Stopped: Error, CustomStringConvertible {
        public var description: String { "stopped while waiting for disk space" }
    }

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
    /// failure is thrown at once, and `Stopped` once `stopRequested` after a wait. `now`,
    /// `sleep` and `stopRequested` are the tests' to replace (the default `sleep` traps SIGTERM
    /// and SIGINT, and returns early on one).
    static func retrying<T>(
        directory: String, logger: Logger, notifier: SystemdNotifier?,
        now: () -> Double = { Double(SystemdNotifier.monotonicMicroseconds()) / 1e6 },
        sleep: (Double) async throws -> Void = { try await StartStopSignals.shared.sleep(seconds: $0) },
        stopRequested: () -> Bool = { StartStopSignals.shared.requested },
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
                if stopRequested() { throw Stopped() }
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
        do {
            let lock = try await StartOnFullDisk.retrying(directory: directory, logger: logger, notifier: notifier) {
                try OutboxLock(outboxPath: path)
            }
            let app = try await StartOnFullDisk.retrying(directory: directory, logger: logger, notifier: notifier) {
                try await RelayApplication(configuration: configuration, logSettings: logSettings, reloader: reloader, lock: lock)
            }
            lock.recordHolder()  // its first write may have met the full disk
            StartStopSignals.shared.hand(to: app)
            return app
        } catch let stopped as StartOnFullDisk.Stopped {
            _ = notifier.notify("STOPPING=1")
            logger.event(.notice, "relay.stopped", "candidate-relay stopped: a signal ended its wait for disk space (it never started)")
            throw stopped
        }
    }
}

/// SIGTERM and SIGINT while a start waits for disk space (found from outside: their default
/// action ended the process unannounced, no `relay.stopped`, and by a signal, not with exit 0).
///
/// Armed by the first wait only (a start that never waits is untouched), and then for the
/// process's life: the application's own handlers (ServiceLifecycle's) come later, and a signal
/// in between must neither be lost (systemd would wait out `TimeoutStopSec=` and SIGKILL) nor
/// end the process unannounced. Once the application exists, a signal trapped here asks it to
/// stop, as its own handler does (the two ask the same group; asking twice is harmless).
final class StartStopSignals: Sendable {
    static let shared = StartStopSignals()

    private struct State: @unchecked Sendable {  // the sources are only touched under the lock
        var sources: [DispatchSourceSignal] = []
        var received = false
        var application: RelayApplication?
    }
    private let state = Mutex(State())

    var requested: Bool { state.withLock { $0.received } }

    /// Traps SIGTERM and SIGINT (once), then sleeps `seconds`, or less if one of them came.
    func sleep(seconds: Double) async throws {
        arm()
        let deadline = ContinuousClock.now + .seconds(seconds)
        while !requested, ContinuousClock.now < deadline {
            try await Task.sleep(for: min(.milliseconds(50), deadline - ContinuousClock.now))
        }
    }

    /// The started application, which a signal from now on (or one that came already) stops.
    func hand(to application: RelayApplication) {
        let received = state.withLock { state -> Bool in
            guard !state.sources.isEmpty else { return false }
            state.application = application
            return state.received
        }
        if received { Task { await application.shutdown() } }
    }

    private func arm() {
        state.withLock { state in
            guard state.sources.isEmpty else { return }
            for number in [SIGTERM, SIGINT] {
                signal(number, SIG_IGN)  // else the default action runs too (dispatch's sources need it)
                let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
                source.setEventHandler { [self] in fired() }
                source.resume()
                state.sources.append(source)
            }
        }
    }

    private func fired() {
        let application = state.withLock { state -> RelayApplication? in
            state.received = true
            return state.application
        }
        if let application { Task { await application.shutdown() } }
    }
}
