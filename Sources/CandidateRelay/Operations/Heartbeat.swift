import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// Logs `relay.heartbeat` every `heartbeat_seconds` with counts per state, oldest pending age and
/// the deliveries and failures since the last beat; refreshes the gauges and systemd's STATUS=;
/// pets the systemd watchdog only while the event loop and the database answer.
public struct Heartbeat: Service {
    let outbox: Outbox
    let interval: Live<Double>
    let metrics: RelayMetrics
    let notifier: SystemdNotifier
    let watchdogInterval: Double?
    let logger: Logger
    let isReady: @Sendable () -> Bool
    let now: @Sendable () -> Date

    public init(outbox: Outbox, interval: Live<Double>, metrics: RelayMetrics, notifier: SystemdNotifier,
                watchdogInterval: Double?, logger: Logger, isReady: @escaping @Sendable () -> Bool = { true },
                now: @escaping @Sendable () -> Date = Date.init) {
        self.isReady = isReady
        self.outbox = outbox
        self.interval = interval
        self.metrics = metrics
        self.notifier = notifier
        self.watchdogInterval = watchdogInterval
        self.logger = logger
        self.now = now
    }

    /// Logs one heartbeat; `previous` are the delivery totals at the previous beat.
    public func beat(previous: [String: Int]) async throws -> [String: Int] {
        let status = try await refreshStatus()
        let totals = metrics.deliveryTotals()
        var numbers: [String: Double] = [:]
        for state in EventState.allCases { numbers["count_\(state.rawValue)"] = Double(status.counts[state] ?? 0) }
        // 0 when nothing waits, so alert queries compare numbers without a null case.
        numbers["oldest_pending_age_seconds"] = ((status.oldestPendingAgeSeconds ?? 0) * 10).rounded() / 10
        numbers["delivered_since_last"] = Double((totals["delivered"] ?? 0) + (totals["linked"] ?? 0) - (previous["delivered"] ?? 0) - (previous["linked"] ?? 0))
        numbers["failures_since_last"] = Double((totals["retry"] ?? 0) + (totals["dead"] ?? 0) - (previous["retry"] ?? 0) - (previous["dead"] ?? 0))
        logger.event(.info, "relay.heartbeat", "relay alive", LogFields(numbers: numbers))
        return totals
    }

    static func statusLine(_ status: OutboxStatus) -> String {
        EventState.allCases.map { "\($0.rawValue) \(status.counts[$0] ?? 0)" }.joined(separator: ", ")
    }

    /// Reads the counts, refreshes the gauges and sends STATUS= (each beat, and between beats
    /// when the counts changed, at most once a tick).
    @discardableResult
    public func refreshStatus() async throws -> OutboxStatus {
        let status = try await outbox.status(now: now())
        metrics.update(from: status)
        notifier.notify("STATUS=" + Self.statusLine(status))
        return status
    }

    public func run() async throws {
        var previous: [String: Int] = [:]
        var nextBeat = Date.distantPast
        var statusChanges = metrics.changeCount
        let tick = min(watchdogInterval ?? 1, 1)
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            let current = now()
            // The first beat waits for READY=1 (whose STATUS= says "listening on ..."), so the
            // counts are what `systemctl status` shows from the first second on.
            if current >= nextBeat && isReady() {
                statusChanges = metrics.changeCount
                do { previous = try await beat(previous: previous) } catch {
                    logger.event(.error, "storage.failed", "heartbeat could not read the outbox", LogFields(error: "storage_error"))
                }
                nextBeat = current.addingTimeInterval(interval.value)
            } else if metrics.changeCount != statusChanges {
                // `systemctl status` follows the counts within a second, not a heartbeat.
                statusChanges = metrics.changeCount
                try? await refreshStatus()
            }
            // systemd wants READY=1 before the first WATCHDOG=1.
            if watchdogInterval != nil, isReady(), await outbox.probeResponsive() {
                notifier.notify("WATCHDOG=1")
            }
            try? await gracefulSleep(seconds: tick)
        }
    }
}
