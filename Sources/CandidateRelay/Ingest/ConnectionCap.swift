import Foundation
import HummingbirdCore
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Inbound connections are capped below the process's file descriptor limit, so that `accept`
/// never meets EMFILE. It did, found from outside: 400 idle connections against a limit of 256
/// (systemd's default soft limit is 1024) and an event loop spun at 100 % of a core, because
/// SwiftNIO's accept loop retries at once when `accept` fails (its back-off never engages:
/// the failed accept leaves the read pending), while the partner requests, the outbox's files
/// and the token fetches found no descriptor left. At the cap the server stops accepting: new
/// connections wait in the kernel's listen backlog until one closes (idle ones close after 60 s).
struct ConnectionCap: AvailableConnectionsDelegate {
    let limit: Int
    private var open = 0
    private let logger: Logger
    private let throttle = LogThrottle(seconds: 60)

    init(limit: Int, logger: Logger) {
        self.limit = limit
        self.logger = logger
    }

    mutating func connectionOpened() {
        open += 1
        if open == limit, let suppressed = throttle.admit(now: Date()) {
            logger.event(.warning, "ingest.connections_full",
                         "\(open) inbound connections are open, the most this daemon accepts (below its file descriptor limit); "
                         + "new ones wait in the listen backlog until one closes",
                         LogFields(numbers: ["connections": Double(open), "suppressed": Double(suppressed)]))
        }
    }

    mutating func connectionClosed() {
        open -= 1
    }

    func isAcceptingNewConnections() -> Bool {
        open < limit
    }

    /// Raises the soft limit on open files to the hard one (at most 65,536; under systemd the
    /// unit's `LimitNOFILE=` sets both, and `setrlimit` is filtered), then leaves room below it
    /// for everything else the daemon opens: the outbox's files for the writer and three
    /// readers, a connection per worker and spare to the partner, token fetches, logs, event
    /// loops. Returns the inbound cap and the limit it came from.
    static func fromFileLimit() -> (cap: Int, fileLimit: Int) {
        var limits = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits) == 0 else { return (768, 1024) }
        let wanted = min(limits.rlim_max, 65_536)
        if limits.rlim_cur < wanted {
            var raised = limits
            raised.rlim_cur = wanted
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limits = raised }
        }
        let fileLimit = Int(clamping: limits.rlim_cur)
        return (cap(fileLimit: fileLimit), fileLimit)
    }

    /// A quarter of the limit, at least 512 descriptors, kept for the rest (the partner
    /// connections alone may reach `max(64, workers) + 64`); never under 32, or a quarter of a
    /// limit under 128.
    static func cap(fileLimit: Int) -> Int {
        max(min(32, fileLimit / 4), fileLimit - max(512, fileLimit / 4))
    }

    /// Below this limit the daemon does not start (exit 78): it holds ~30 descriptors idle
    /// (event loops, the outbox's writer and readers, logs), and found from outside, under
    /// `ulimit -n 32` a flood of connections took the rest and left ingest dead for good, at 16
    /// SwiftNIO crashed at start.
    static let minimumFileLimit = 128

    /// Raises the soft open-files limit (`fromFileLimit`) and says why the daemon cannot run
    /// when even the hard one is under `minimumFileLimit`. Called first thing by `serve`: at the
    /// lowest limits, SwiftNIO's first event loop fails before any of the daemon's own code.
    static func startProblem() -> String? {
        let limit = fromFileLimit().fileLimit
        guard limit < minimumFileLimit else { return nil }
        return "the open-files limit is \(limit), under the \(minimumFileLimit) the daemon needs "
            + "(\(lowFileLimit) or more recommended): raise LimitNOFILE= (or ulimit -n)"
    }

    /// Below this limit (Linux's usual soft limit; a lower one was set on purpose) the daemon
    /// cannot keep its 512 descriptors for the rest and a useful inbound cap: it says so at
    /// start (`relay.open_files_low`).
    static let lowFileLimit = 1024
}

extension RelayApplication {
    /// `ConnectionCap.startProblem`, for `serve`.
    public static func openFilesProblem() -> String? { ConnectionCap.startProblem() }
}
