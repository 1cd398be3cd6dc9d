/// Failures of the outbox that callers must map (ingest: 503, never a 202 and never a crash).
public enum OutboxError: Error, Sendable, CustomStringConvertible {
    case storage(String)
    /// The outbox's file or its WAL was deleted or replaced while open (`OutboxFileWatch`).
    case fileGone(String)
    case backlogFull(Int)
    case idempotencyKeyReused(existingID: String)
    /// The account is being removed by a reload (`Outbox.closeAccounts`): nothing more is stored for it.
    case accountClosed
    /// SQLite found the file damaged (`Outbox.damage`): nothing more is stored in it.
    case damaged(String)
    /// The outbox's filesystem is full: SQLite's `SQLITE_FULL`, `ENOSPC`/`EDQUOT` from a call of
    /// our own, or an I/O error while (nearly) no space or inode is left (`Outbox.fullOrStorage`).
    case full(String)
    /// The outbox was migrated by a newer release, whose schema this one does not know.
    case newerRelease(String)

    /// The `error` field of a log line about a failed outbox call (ingest's and the workers'):
    /// a code, never the message, which may quote a stored value.
    static func logCode(_ error: any Error) -> String {
        if case OutboxError.storage = error { return "storage_error" }
        if case OutboxError.fileGone = error { return "outbox_file_gone" }
        if case OutboxError.damaged = error { return "outbox_damaged" }
        if case OutboxError.full = error { return "storage_full" }
        if case OutboxError.newerRelease = error { return "outbox_newer_release" }
        return String(describing: type(of: error))
    }

    public var description: String {
        switch self {
        case .storage(let message): "storage: \(message)"
        case .fileGone(let message): "storage: \(message)"
        case .backlogFull(let limit): "backlog above \(limit) events"
        case .idempotencyKeyReused(let id): "idempotency key already used for \(id) with a different body"
        case .accountClosed: "the account is being removed"
        case .damaged(let message): "storage: \(message)"
        case .full(let message): "storage: \(message)"
        case .newerRelease(let message): "storage: \(message)"
        }
    }
}
