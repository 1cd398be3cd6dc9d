import Foundation
import GRDB

/// What ingest hands the outbox: already authenticated, parsed and validated.
public struct Submission: Sendable {
    public var id: String
    public var idempotencyKey: String?
    public var bodySHA256: String
    public var positionUID: String
    public var partnerCandidateID: String
    /// Exactly what the partner will receive.
    public var payload: Data
    public var receivedAt: Date

    public init(id: String, idempotencyKey: String?, bodySHA256: String, positionUID: String, partnerCandidateID: String, payload: Data, receivedAt: Date) {
        self.id = id
        self.idempotencyKey = idempotencyKey
        self.bodySHA256 = bodySHA256
        self.positionUID = positionUID
        self.partnerCandidateID = partnerCandidateID
        self.payload = payload
        self.receivedAt = receivedAt
    }
}

/// The result of `accept`: a new durable event, or the one an idempotency key already named.
public enum AcceptResult: Sendable {
    case created(EventRecord)
    case duplicate(EventRecord)
}

extension Outbox {
    /// Looks up an idempotency key before any body work (cheap replay path).
    public func event(idempotencyKey: String) async throws -> (record: EventRecord, bodySHA256: String)? {
        try await read { db in
            guard let row = try Row.fetchOne(
                db, sql: "SELECT \(EventRecord.columns), body_sha256 FROM events WHERE idempotency_key = ?",
                arguments: [idempotencyKey]) else { return nil }
            return (EventRecord(row: row), row["body_sha256"])
        }
    }

    /// Stores a submission durably (one fsync'd transaction) or returns the event its key already
    /// created. Throws `.idempotencyKeyReused` for a key with another body, `.backlogFull` above
    /// `maxBacklog`, `.storage` when the disk fails.
    public func accept(_ submission: Submission, maxBacklog: Int) async throws -> AcceptResult {
        // A replay is answered even when the backlog is full: it adds nothing.
        if let key = submission.idempotencyKey, let existing = try await event(idempotencyKey: key) {
            guard existing.bodySHA256 == submission.bodySHA256 else { throw OutboxError.idempotencyKeyReused(existingID: existing.record.id) }
            return .duplicate(existing.record)
        }
        if try await backlogCount() >= maxBacklog { throw OutboxError.backlogFull(maxBacklog) }
        let result: AcceptResult = try await write { db in
            // Checked again inside the transaction: two requests with one key may race.
            if let key = submission.idempotencyKey,
               let row = try Row.fetchOne(
                db, sql: "SELECT \(EventRecord.columns), body_sha256 FROM events WHERE idempotency_key = ?",
                arguments: [key]) {
                let existing = EventRecord(row: row)
                guard (row["body_sha256"] as String) == submission.bodySHA256 else {
                    throw OutboxError.idempotencyKeyReused(existingID: existing.id)
                }
                return .duplicate(existing)
            }
            let now = submission.receivedAt.millis
            try db.execute(
                sql: """
                    INSERT INTO events (id, idempotency_key, body_sha256, state, attempts, position_uid,
                      partner_candidate_id, payload, received_at, budget_started_at, updated_at, next_attempt_at)
                    VALUES (?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [submission.id, submission.idempotencyKey, submission.bodySHA256, submission.positionUID,
                            submission.partnerCandidateID, submission.payload, now, now, now, now])
            guard let row = try Row.fetchOne(db, sql: "SELECT \(EventRecord.columns) FROM events WHERE id = ?", arguments: [submission.id]) else {
                throw OutboxError.storage("inserted event \(submission.id) not found")
            }
            return .created(EventRecord(row: row))
        }
        if case .created = result {
            backlog.withLock { $0.count += 1 }
        }
        return result
    }

    /// Pending + in-flight events, from a cache at most one second old.
    func backlogCount(now: Date = Date()) async throws -> Int {
        let cached = backlog.withLock { $0 }
        if now.timeIntervalSince(cached.refreshedAt) < 1 { return cached.count }
        let count = try await read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM events WHERE state IN ('pending', 'in_flight')") ?? 0
        }
        backlog.withLock { $0 = (count, now) }
        return count
    }

    /// One event's record, `nil` when unknown.
    public func record(id: String) async throws -> EventRecord? {
        try await read { db in
            try Row.fetchOne(db, sql: "SELECT \(EventRecord.columns) FROM events WHERE id = ?", arguments: [id])
                .map(EventRecord.init(row:))
        }
    }

    /// Events for a natural key, newest first.
    public func records(positionUID: String, partnerCandidateID: String) async throws -> [EventRecord] {
        try await read { db in
            try Row.fetchAll(
                db, sql: """
                    SELECT \(EventRecord.columns) FROM events
                    WHERE position_uid = ? AND partner_candidate_id = ?
                    ORDER BY received_at DESC, id DESC
                    """,
                arguments: [positionUID, partnerCandidateID]).map(EventRecord.init(row:))
        }
    }
}
