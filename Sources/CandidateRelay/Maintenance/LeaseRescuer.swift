import Foundation
import Logging
import ServiceLifecycle

/// Returns expired leases to `pending` while the relay runs (a worker that hung or lost its
/// database write). Crash leftovers are recovered at start-up, before any worker runs.
public struct LeaseRescuer: Service {
    let outbox: Outbox
    let interval: Double
    let logger: Logger
    let now: @Sendable () -> Date
    /// The events whose leases this process's workers hold (`DeliveryWorkerPool.heldLeases`):
    /// never taken back, however late.
    let held: @Sendable () -> Set<String>

    public init(outbox: Outbox, interval: Double = 5, logger: Logger, now: @escaping @Sendable () -> Date = Date.init,
                held: @escaping @Sendable () -> Set<String> = { [] }) {
        self.outbox = outbox
        self.interval = interval
        self.logger = logger
        self.now = now
        self.held = held
    }

    /// One pass; returns how many leases were taken back.
    @discardableResult
    public func runOnce() async throws -> Int {
        let current = now()
        let count = try await outbox.recoverLeases(expiredBefore: current, now: current, excluding: held())
        if count > 0 {
            logger.event(.warning, "lease.recovered", "expired leases returned to pending", LogFields(numbers: ["count": Double(count)]))
        }
        return count
    }

    public func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do { try await runOnce() } catch {
                logger.event(.error, "storage.failed", "lease rescue failed", LogFields(error: OutboxError.logCode(error)))
            }
            try? await gracefulSleep(seconds: interval)
        }
    }
}

/// Sleeps, returning early on graceful shutdown or cancellation.
func gracefulSleep(seconds: Double) async throws {
    try await cancelWhenGracefulShutdown {
        try await Task.sleep(for: .seconds(seconds))
    }
}
