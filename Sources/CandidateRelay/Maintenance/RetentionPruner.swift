import Foundation
import Logging
import ServiceLifecycle

/// Erases the personal payload of delivered/linked events after `payload_retention_days` and
/// deletes records after `record_retention_days`. Dead events keep their payload until they are
/// retried or purged by an operator.
public struct RetentionPruner: Service {
    let outbox: Outbox
    let storage: Live<StorageConfiguration>
    let interval: Double
    let logger: Logger
    let now: @Sendable () -> Date

    public init(outbox: Outbox, storage: Live<StorageConfiguration>, interval: Double = 3600, logger: Logger,
                now: @escaping @Sendable () -> Date = Date.init) {
        self.outbox = outbox
        self.storage = storage
        self.interval = interval
        self.logger = logger
        self.now = now
    }

    @discardableResult
    public func runOnce() async throws -> (erased: Int, deleted: Int) {
        let current = now()
        let config = storage.value
        let result = try await outbox.prune(
            payloadBefore: current.addingTimeInterval(-config.payloadRetentionDays * 86_400),
            recordBefore: current.addingTimeInterval(-config.recordRetentionDays * 86_400),
            includeDead: false, now: current)
        if result.erased > 0 {
            // Erased payloads' older copies leave the WAL too; a few milliseconds of the writer, hourly.
            await outbox.truncateWAL()
        }
        if result.erased > 0 || result.deleted > 0 {
            logger.event(.info, "retention.pruned", "retention applied",
                         LogFields(numbers: ["payloads_erased": Double(result.erased), "records_deleted": Double(result.deleted)]))
        }
        return result
    }

    public func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do { try await runOnce() } catch {
                // A stop (another service failed at start, say) cancels the pass: not the disk's
                // failure (found from outside: `storage.failed` `CancellationError` before `relay.failed`).
                if error is CancellationError || Task.isCancelled || Task.isShuttingDownGracefully { break }
                logger.event(.error, "storage.failed", "retention pass failed", LogFields(error: OutboxError.logCode(error)))
            }
            try? await gracefulSleep(seconds: interval)
        }
    }
}
