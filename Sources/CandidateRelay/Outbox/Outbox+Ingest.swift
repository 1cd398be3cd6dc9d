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

/// One submission with the backlog limit in force when it arrived.
struct PendingAccept: Sendable {
    var submission: Submission
    var maxBacklog: Int
}

extension Outbox {
    /// Stores a submission durably or returns the event its key already created. Throws
    /// `.idempotencyKeyReused` for a key with another body, `.backlogFull` above `maxBacklog`
    /// (a replay is answered even then: it adds nothing), `.storage` when the disk fails.
    ///
    /// Concurrent calls share one fsync'd transaction (group commit, `GroupCommit`); each
    /// returns only after the commit holding its event returned.
    public func accept(_ submission: Submission, maxBacklog: Int) async throws -> AcceptResult {
        try await acceptQueue.submit(PendingAccept(submission: submission, maxBacklog: maxBacklog)) { batch in
            try await self.acceptBatch(batch)
        }
    }

    /// The group commit's transaction: each submission's key lookup, backlog check and insert,
    /// in arrival order (a key repeated within the batch finds the row inserted before it).
    func acceptBatch(_ batch: [PendingAccept]) async throws -> [Result<AcceptResult, any Error>] {
        let results: [Result<AcceptResult, any Error>] = try await write { db in
            var results: [Result<AcceptResult, any Error>] = []
            results.reserveCapacity(batch.count)
            // Deliveries only lower the count between refreshes: the cache errs on the high side
            // by at most a second's worth of deliveries; near the limit it is exact.
            let limit = batch.map(\.maxBacklog).min() ?? 0
            var backlog = try self.backlogCount(db, now: batch[0].submission.receivedAt, limit: limit,
                                                margin: max(batch.count, limit / 10))
            for pending in batch {
                let submission = pending.submission
                if let key = submission.idempotencyKey,
                   let row = try Row.fetchOne(db.cachedStatement(sql: "SELECT \(EventRecord.columns), body_sha256 FROM events WHERE idempotency_key = ?"),
                    arguments: [key]) {
                    let existing = EventRecord(row: row)
                    guard (row["body_sha256"] as String) == submission.bodySHA256 else {
                        results.append(.failure(OutboxError.idempotencyKeyReused(existingID: existing.id)))
                        continue
                    }
                    results.append(.success(.duplicate(existing)))
                    continue
                }
                if backlog >= pending.maxBacklog {
                    results.append(.failure(OutboxError.backlogFull(pending.maxBacklog)))
                    continue
                }
                let now = submission.receivedAt.millis
                try db.cachedStatement(sql: """
                        INSERT INTO events (id, idempotency_key, body_sha256, state, attempts, position_uid,
                          partner_candidate_id, payload, received_at, budget_started_at, updated_at, next_attempt_at)
                        VALUES (?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?, ?, ?)
                        """).execute(
                    arguments: [submission.id, submission.idempotencyKey, submission.bodySHA256, submission.positionUID,
                                submission.partnerCandidateID, submission.payload, now, now, now, now])
                backlog += 1
                results.append(.success(.created(EventRecord(inserted: submission))))
            }
            return results
        }
        let created = results.filter { if case .success(.created) = $0 { true } else { false } }.count
        backlog.withLock { $0.count += created }
        return results
    }

    /// Pending + in-flight events at the start of a batch. Far below the limit, a cache at most
    /// one second old (counted inside a write transaction, then bumped by each accept; a COUNT
    /// per batch costs O(backlog)); within `margin` of it, counted exactly, so `max_backlog` is
    /// exact where it matters.
    func backlogCount(_ db: Database, now: Date, limit: Int, margin: Int) throws -> Int {
        let cached = backlog.withLock { $0 }
        if now.timeIntervalSince(cached.refreshedAt) < 1, cached.count + margin < limit { return cached.count }
        let count = try Int.fetchOne(db.cachedStatement(sql: "SELECT COUNT(*) FROM events WHERE state IN ('pending', 'in_flight')")) ?? 0
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
