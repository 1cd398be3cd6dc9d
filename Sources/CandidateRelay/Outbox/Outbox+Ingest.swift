import Foundation
import GRDB

/// What ingest hands the outbox: already authenticated, parsed and validated.
public struct Submission: Sendable {
    public var id: String
    /// The account it arrived for (its path): idempotency and "one in flight" are per account.
    public var account: String
    public var idempotencyKey: String? {
        didSet { erasedIdempotencyKey = idempotencyKey.map(Outbox.erasedKey) }
    }
    /// The key as an erasure leaves it (`Outbox.erasedKey`), which the accept looks for
    /// too: hashed where the submission is made (ingest's event loop), not on the writer's queue.
    private(set) var erasedIdempotencyKey: String?
    public var bodySHA256: String
    public var positionUID: String
    public var partnerCandidateID: String
    /// Exactly what the partner will receive.
    public var payload: Data
    public var receivedAt: Date

    public init(id: String, account: String = AccountConfiguration.defaultID, idempotencyKey: String?, bodySHA256: String,
                positionUID: String, partnerCandidateID: String, payload: Data, receivedAt: Date) {
        self.id = id
        self.account = account
        self.idempotencyKey = idempotencyKey
        self.erasedIdempotencyKey = idempotencyKey.map(Outbox.erasedKey)
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

/// One submission with the backlog limit (per account) in force when it arrived. A class: the
/// group commit copies its batch's items, and a copy of the struct retained each of the
/// submission's strings and its payload (perf: over half a per cent of ingest's CPU in those
/// retains alone).
final class PendingAccept: Sendable {
    let submission: Submission
    let maxBacklog: Int

    init(submission: Submission, maxBacklog: Int) {
        self.submission = submission
        self.maxBacklog = maxBacklog
    }
}

extension Outbox {
    /// Stores a submission durably or returns the event its key already created in its account.
    /// Throws `.idempotencyKeyReused` for a key with another body, `.backlogFull` when the
    /// account holds `maxBacklog` undelivered events
    /// (a replay is answered even then: it adds nothing), `.storage` when the disk fails.
    ///
    /// Concurrent calls share one fsync'd transaction (group commit, `GroupCommit`); each
    /// returns only after the commit holding its event returned.
    public func accept(_ submission: Submission, maxBacklog: Int) async throws -> AcceptResult {
        try await acceptQueue.submit(PendingAccept(submission: submission, maxBacklog: maxBacklog), run: { self.acceptBatch($0, done: $1) })
    }

    /// `accept` for a caller that must not wait (ingest's channel handler, on an event loop):
    /// the same group commit; `completion` runs on SQLite's writer queue once the transaction
    /// holding the submission committed.
    func accept(_ submission: Submission, maxBacklog: Int,
                completion: @escaping @Sendable (Result<AcceptResult, any Error>) -> Void) {
        acceptQueue.submit(PendingAccept(submission: submission, maxBacklog: maxBacklog), run: { self.acceptBatch($0, done: $1) }, completion: completion)
    }

    /// The group commit's transaction: each submission's backlog check and insert (which also
    /// decides its idempotency key), in arrival order (a key repeated within the batch finds the
    /// row inserted before it); the event a key names is read only for one not stored.
    /// Once committed, the backlog cache counts the new events.
    func acceptBatch(_ batch: [PendingAccept], done: @escaping @Sendable (GroupCommit<PendingAccept, AcceptResult>.BatchResult) -> Void) {
        writeBatch({ db in try self.acceptRows(db, batch) }, then: { outcome in
            if case .success(let results) = outcome {
                var created: [String: Int] = [:]
                for (pending, result) in zip(batch, results) {
                    if case .success(.created) = result { created[pending.submission.account, default: 0] += 1 }
                }
                self.backlog.withLock { cache in
                    for (account, count) in created { cache[account, default: (0, .distantPast)].count += count }
                }
            }
            done(outcome)
        })
    }

    private func acceptRows(_ db: Database, _ batch: [PendingAccept]) throws -> [Result<AcceptResult, any Error>] {
        // Every batch: a 202 must not go to a file no restart reads (a look a second let that
        // second's webhooks through).
        if let problem = filesProblem() { throw OutboxError.fileGone(problem) }
        var results: [Result<AcceptResult, any Error>] = []
        results.reserveCapacity(batch.count)
        // Deliveries only lower the counts between refreshes: the cache errs on the high side
        // by at most a second's worth of deliveries; near the limit it is exact.
        var backlogs: [String: Int] = [:]
        let closed = closedAccounts.withLock { $0 }
        for pending in batch {
            let submission = pending.submission
            let account = submission.account
            // A replay is answered as always (it adds nothing), even when its account is full or
            // being removed; a new event for those is not stored.
            var refusal: OutboxError?
            if !closed.isEmpty, closed.contains(account) {
                refusal = .accountClosed
            } else {
                let backlog = try backlogs[account] ?? self.backlogCount(
                    db, account: account, now: submission.receivedAt, limit: pending.maxBacklog,
                    margin: max(batch.count, pending.maxBacklog / 10))
                backlogs[account] = backlog
                if backlog >= pending.maxBacklog { refusal = .backlogFull(pending.maxBacklog) }
            }
            if let refusal {
                if let replay = try Self.replayed(db, submission) {
                    results.append(replay)
                } else {
                    results.append(.failure(refusal))
                }
                continue
            }
            guard try Self.insertUnlessReplayed(db, submission) else {
                // Not stored: its key (as sent, or as an erasure left it) names an event already.
                guard let replay = try Self.replayed(db, submission) else {
                    throw OutboxError.storage("an event was refused by a constraint other than its idempotency key")
                }
                results.append(replay)
                continue
            }
            try PayloadStore.insert(db, eventID: submission.id, body: submission.payload)
            quiet.clear(account)  // due now: the claims after this transaction look again
            backlogs[account, default: 0] += 1
            results.append(.success(.created(EventRecord(inserted: submission))))
        }
        return results
    }

    /// Inserts the submission's event, unless its idempotency key already names one in its
    /// account, as sent or as an erasure left it (`erasedIdempotencyKey`: a replay of a
    /// forgotten candidate's webhook is still a replay, and stores nothing again). True when
    /// inserted.
    ///
    /// One statement (perf: a probe statement before each insert was ~4 % of ingest's CPU):
    /// `OR IGNORE` skips the row when the key as sent is taken (the unique index, which the
    /// insert looks up anyway), and when the erased form is: its `EXISTS` makes `body_sha256`
    /// NULL, which `NOT NULL` refuses. (`INSERT ... SELECT ... WHERE NOT EXISTS` said the same
    /// more plainly but reads the table it writes, so SQLite ran it through a temporary table:
    /// slower than the probe.) A row skipped for any other constraint has no event of its key
    /// to answer with: the caller fails it, nothing is dropped unsaid.
    private static func insertUnlessReplayed(_ db: Database, _ submission: Submission) throws -> Bool {
        let now = submission.receivedAt.millis
        try db.cachedStatement(sql: """
                INSERT OR IGNORE INTO events (id, account, idempotency_key, body_sha256, state, attempts, position_uid,
                  partner_candidate_id, received_at, budget_started_at, updated_at, next_attempt_at)
                VALUES (?1, ?2, ?3,
                  CASE WHEN EXISTS (SELECT 1 FROM events WHERE account = ?2 AND idempotency_key = ?8) THEN NULL ELSE ?4 END,
                  'pending', 0, ?5, ?6, ?7, ?7, ?7, ?7)
                """).execute(
            arguments: [submission.id, submission.account, submission.idempotencyKey, submission.bodySHA256,
                        submission.positionUID, submission.partnerCandidateID, now, submission.erasedIdempotencyKey])
        return db.changesCount > 0
    }

    /// The answer to a submission whose idempotency key names an event already in its account
    /// (as sent, or as an erasure left it): that event, or `idempotencyKeyReused` for another
    /// body. Nil when it names none (no key: none). Only for a submission not stored (refused,
    /// or its insert found the key): a new key costs no lookup of its own.
    private static func replayed(_ db: Database, _ submission: Submission) throws -> Result<AcceptResult, any Error>? {
        guard let key = submission.idempotencyKey, let erasedKey = submission.erasedIdempotencyKey else { return nil }
        guard let row = try Row.fetchOne(
            db.cachedStatement(sql: "SELECT \(EventRecord.columns), body_sha256 FROM events WHERE account = ? AND idempotency_key IN (?, ?)"),
            arguments: [submission.account, key, erasedKey]) else { return nil }
        let existing = EventRecord(row: row)
        guard (row["body_sha256"] as String) == submission.bodySHA256 else {
            return .failure(OutboxError.idempotencyKeyReused(existingID: existing.id))
        }
        return .success(.duplicate(existing))
    }

    /// An account's pending + in-flight events at the start of a batch. Far below the limit, a
    /// cache at most one second old (counted inside a write transaction, then bumped by each
    /// accept; a COUNT per batch costs O(backlog)); within `margin` of it, counted exactly, so
    /// `max_backlog` is exact where it matters.
    func backlogCount(_ db: Database, account: String, now: Date, limit: Int, margin: Int) throws -> Int {
        let cached = backlog.withLock { $0[account] }
        if let cached, now.timeIntervalSince(cached.refreshedAt) < 1, cached.count + margin < limit { return cached.count }
        let count = try Int.fetchOne(
            db.cachedStatement(sql: "SELECT COUNT(*) FROM events WHERE account = ? AND state IN ('pending', 'in_flight')"),
            arguments: [account]) ?? 0
        backlog.withLock { $0[account] = (count, now) }
        return count
    }

    /// Closes `accounts` to new events and returns what they still have to deliver (pending,
    /// in flight), in one job on SQLite's writer queue, the queue every accept commits on: a
    /// submission committed before it is counted, one after it is refused (`accountClosed`).
    /// A reload that removes accounts calls this before it decides; counting first and closing
    /// after let a webhook accepted in between be stored for an account then removed, which
    /// nothing delivered. `openAccounts` undoes it.
    public func closeAccounts(_ accounts: Set<String>) async throws -> [String: (pending: Int, inFlight: Int)] {
        try await write { db in
            self.closedAccounts.withLock { $0.formUnion(accounts) }
            var counts: [String: (pending: Int, inFlight: Int)] = [:]
            for account in accounts {
                let rows = try Row.fetchAll(
                    db, sql: "SELECT state, COUNT(*) AS n FROM events WHERE account = ? AND state IN ('pending', 'in_flight') GROUP BY state",
                    arguments: [account])
                var figures = (pending: 0, inFlight: 0)
                for row in rows {
                    if (row["state"] as String) == "pending" { figures.pending = row["n"] } else { figures.inFlight = row["n"] }
                }
                counts[account] = figures
            }
            return counts
        }
    }

    /// Accepts submissions for `accounts` again (a refused removal, an account added back).
    public func openAccounts(_ accounts: Set<String>) {
        closedAccounts.withLock { $0.subtract(accounts) }
    }

    /// One event's record, `nil` when unknown.
    public func record(id: String) async throws -> EventRecord? {
        try await read { db in
            try Row.fetchOne(db, sql: "SELECT \(EventRecord.columns) FROM events WHERE id = ?", arguments: [id])
                .map(EventRecord.init(row:))
        }
    }

    /// An account's events for a natural key, newest first.
    public func records(account: String = AccountConfiguration.defaultID, positionUID: String,
                        partnerCandidateID: String) async throws -> [EventRecord] {
        try await read { db in
            try Row.fetchAll(
                db, sql: """
                    SELECT \(EventRecord.columns) FROM events
                    WHERE account = ? AND position_uid = ? AND partner_candidate_id = ?
                    ORDER BY received_at DESC, id DESC
                    """,
                arguments: [account, positionUID, partnerCandidateID]).map(EventRecord.init(row:))
        }
    }
}
