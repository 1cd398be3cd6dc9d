/// Failures of the outbox that callers must map (ingest: 503, never a 202 and never a crash).
public enum OutboxError: Error, Sendable, CustomStringConvertible {
    case storage(String)
    /// The outbox's file or its WAL was deleted or replaced while open (`OutboxFileWatch`).
    case fileGone(String)
    case backlogFull(Int)
    case idempotencyKeyReused(existingID: String)

    public var description: String {
        switch self {
        case .storage(let message): "storage: \(message)"
        case .fileGone(let message): "storage: \(message)"
        case .backlogFull(let limit): "backlog above \(limit) events"
        case .idempotencyKeyReused(let id): "idempotency key already used for \(id) with a different body"
        }
    }
}
