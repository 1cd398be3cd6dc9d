import Crypto
import Foundation
import GRDB
#if canImport(Glibc)
import Glibc
#endif

/// What `forget` erased, reported to the operator.
public struct ForgetReport: Sendable, Equatable {
    public var events: [String]
    public var pendingStopped: Int
    /// Events in flight at the erasure: a request already out may still give the partner the data.
    public var inFlight: Int
    /// Events delivered or linked before it: the partner holds the candidate.
    public var atPartner: Int

    public init(events: [String], pendingStopped: Int, inFlight: Int = 0, atPartner: Int = 0) {
        self.events = events
        self.pendingStopped = pendingStopped
        self.inFlight = inFlight
        self.atPartner = atPartner
    }
}

extension Outbox {
    /// Counts per state, oldest pending age, last delivery (for `status`, heartbeats, STATUS=),
    /// in total and per account. With `account`, every figure is that account's alone, and
    /// `accounts` holds that one account (zeros when it has no events).
    public func status(now: Date, account: String? = nil) async throws -> OutboxStatus {
        try await read { db in
            var status = try Self.unsettledStatus(db, now: now, account: account)
            status.addSettled(try Self.countsByAccount(db, account: account))
            if let account, status.accounts[account] == nil { status.accounts[account] = AccountStatus() }
            return status
        }
    }

    /// Newest first, optionally one state only, optionally one account only (nil: every account).
    public func list(state: EventState?, account: String? = nil, limit: Int) async throws -> [EventRecord] {
        try await read { db in
            var conditions: [String] = []
            var arguments: StatementArguments = []
            if let state {
                conditions.append("state = ?")
                arguments += [state.rawValue]
            }
            if let account {
                conditions.append("account = ?")
                arguments += [account]
            }
            arguments += [limit]
            let filter = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
            return try Row.fetchAll(
                db, sql: "SELECT \(EventRecord.columns) FROM events \(filter) ORDER BY received_at DESC, id DESC LIMIT ?",
                arguments: arguments).map(EventRecord.init(row:))
        }
    }

    /// Every attempt of one event, oldest first.
    public func history(id: String) async throws -> [AttemptRecord] {
        try await read { db in
            try Row.fetchAll(
                db, sql: "SELECT attempt, at, outcome, status, error, latency_ms FROM attempts WHERE event_id = ? ORDER BY at, rowid",
                arguments: [id]
            ).map { row in
                AttemptRecord(attempt: row["attempt"], at: Date(millis: row["at"]), outcome: row["outcome"],
                              status: row["status"], error: row["error"], latencyMs: row["latency_ms"])
            }
        }
    }

    /// How many events one transaction of `retry`, `prune` erasure or deletion takes. Each
    /// such transaction holds SQLite's writer, and with it every 202 of the daemon (in another
    /// process too: the admin CLI): one transaction over a whole outbox held them for seconds
    /// (`purge` of 300,000 payloads: 7.9 s, one webhook answered after 6 s; past the daemon's
    /// 10 s busy timeout, they fail). 500 takes ~10–20 ms.
    static let maintenanceChunk = 500
    /// And how many payload bytes one erasure or deletion takes (one payload more than this is a
    /// chunk of its own): `secure_delete` overwrites each (~80 MB/s here), so 500 payloads of
    /// 1 MB would hold the writer for seconds again.
    static let maintenanceChunkBytes = 8 << 20

    /// Dead events whose payload retention or `purge` erased: no retry can resend them. Not
    /// those `forget` made dead (`last_error = 'erased'`, or `payload_erased` as versions before
    /// this one wrote it for an event forgotten while its request was out): an erasure is not to
    /// be resent (review).
    public func deadWithoutPayload(account: String? = nil) async throws -> Int {
        try await read { db in
            try Int.fetchOne(
                db, sql: """
                    SELECT COUNT(*) FROM events WHERE state = 'dead' AND NOT \(PayloadStore.exists)
                      AND coalesce(last_error, '') NOT IN ('erased', 'payload_erased') \(account == nil ? "" : "AND account = ?")
                    """,
                arguments: account.map { [$0] } ?? []) ?? 0
        }
    }

    /// What `retry` did: the events moved back to pending, those left as they were, those held
    /// until their last request can no longer be at the partner, and the dead events left alone
    /// for belonging to no account in `onlyAccounts` (named ids: each with its account;
    /// `--all-dead`: a count per account).
    public struct RetryResult: Sendable {
        public var retried: [String] = []
        public var skipped: [String] = []
        public var heldUntil: [String: Date] = [:]
        public var outsideIDs: [(id: String, account: String)] = []
        public var outsideCounts: [String: Int] = [:]
    }

    /// Whether `account` has any event (the leading column of `events_due`: one seek).
    public func hasEvents(account: String) async throws -> Bool {
        try await read { db in try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM events WHERE account = ?)", arguments: [account]) ?? false }
    }

    /// Moves dead events back to pending now with a fresh attempt budget; the history stays.
    /// An id that is not dead (or has no payload left to send) is returned as skipped.
    /// `ids == nil` means every dead event; `account` keeps both forms to that account's events.
    /// `onlyAccounts`: the accounts the config names, when known; dead events of any other are
    /// left dead (found from outside: an account a reload had removed got its dead events back
    /// as pending, which nothing sends, nor erases: not terminal, retention passes them by).
    /// In transactions of `maintenanceChunk` events, with `pause` between them (see `prune`).
    public func retry(ids: [String]?, account: String? = nil, onlyAccounts: Set<String>? = nil, now: Date,
                      pause: MaintenancePause = .none) async throws -> RetryResult {
        var total = RetryResult()
        var targets: [String]
        if let ids {
            // An id given twice is retried once (found from outside: the second found it pending,
            // and the command said "skipped" and failed, for an id it had just retried).
            var seen = Set<String>()
            targets = ids.filter { seen.insert($0).inserted }
            if let onlyAccounts {
                let named = ContractJSON.string(targets)  // a list as one argument, for `json_each(?)`
                let accounts = try await read { db in
                    try Dictionary(Row.fetchAll(db, sql: "SELECT id, account FROM events WHERE id IN (SELECT value FROM json_each(?))",
                                                arguments: [named]).map { ($0["id"] as String, $0["account"] as String) },
                                   uniquingKeysWith: { first, _ in first })
                }
                total.outsideIDs = targets.compactMap { id in accounts[id].flatMap { onlyAccounts.contains($0) ? nil : (id, $0) } }
                let outside = Set(total.outsideIDs.map(\.id))
                targets.removeAll { outside.contains($0) }
            }
        } else {
            let known = onlyAccounts.map { ContractJSON.string(Array($0)) }
            (targets, total.outsideCounts) = try await read { db in
                let condition = "state = 'dead' AND \(PayloadStore.exists) \(account == nil ? "" : "AND account = :account")"
                let arguments: StatementArguments = account.map { ["account": $0, "known": known] } ?? ["known": known]
                let targets = try String.fetchAll(
                    db, sql: """
                        SELECT id FROM events WHERE \(condition)
                          AND (:known IS NULL OR account IN (SELECT value FROM json_each(:known)))
                        ORDER BY received_at
                        """, arguments: arguments)
                guard known != nil else { return (targets, [:]) }
                let outside = try Row.fetchAll(
                    db, sql: """
                        SELECT account, COUNT(*) AS n FROM events WHERE \(condition)
                          AND account NOT IN (SELECT value FROM json_each(:known)) GROUP BY account
                        """, arguments: arguments)
                return (targets, Dictionary(uniqueKeysWithValues: outside.map { ($0["account"] as String, $0["n"] as Int) }))
            }
        }
        // Dead events leave the settled states: recounted, even if a later chunk fails.
        defer { if !total.retried.isEmpty { invalidateSettled() } }
        for chunk in Self.chunks(targets.map { (id: $0, bytes: 0) }) {
            let started = ContinuousClock.now
            let result = try await write { db -> RetryResult in
                self.quiet.clearAll()
                var result = RetryResult()
                for id in chunk {
                    // The condition again: the event may have changed since it was read. Due now,
                    // or when its last request, given up without an answer, can no longer be at
                    // the partner (`partner_open_until`; found from outside: a retry right after
                    // a timeout made the event dead resent it at once, and the partner created
                    // the candidate twice).
                    guard let due = try Millis.fetchOne(
                        db, sql: """
                            UPDATE events SET state = 'pending', attempts = 0, next_attempt_at = MAX(?, coalesce(partner_open_until, 0)),
                              updated_at = ?, budget_started_at = ?, last_error = NULL
                            WHERE id = ? AND state = 'dead' AND \(PayloadStore.exists) AND account = coalesce(?, account)
                            RETURNING next_attempt_at
                            """,
                        arguments: [now.millis, now.millis, now.millis, id, account]) else {
                        result.skipped.append(id)
                        continue
                    }
                    result.retried.append(id)
                    if due > now.millis { result.heldUntil[id] = Date(millis: due) }
                }
                return result
            }
            total.retried += result.retried
            total.skipped += result.skipped
            total.heldUntil.merge(result.heldUntil) { $1 }
            try await pause.after(ContinuousClock.now - started)
        }
        return total
    }

    /// Erases the personal payload (and the partner's full answer) of delivered/linked events
    /// last updated before `payloadBefore` — and of dead ones too when `includeDead` — and
    /// deletes whole records last updated before `recordBefore`, of `account` only when it is
    /// given. Returns (erased, deleted).
    ///
    /// The events to erase are found in a read, off the writer, and erased in transactions of
    /// `maintenanceChunk`, each checking the condition again; records are deleted likewise.
    /// `pause` runs between them: the admin CLI leaves the daemon's writes room in between
    /// (SQLite's lock is not fair: a process that takes it back at once can starve the other).
    /// A failure part way keeps what was done: the next run does the rest.
    public func prune(payloadBefore: Date, recordBefore: Date, includeDead: Bool, account: String? = nil,
                      now: Date, pause: MaintenancePause = .none) async throws -> (erased: Int, deleted: Int) {
        let states = includeDead ? "('delivered', 'linked', 'dead')" : "('delivered', 'linked')"
        let inAccount = account == nil ? "" : "AND account = ?"
        let accountArgument: StatementArguments = account.map { [$0] } ?? []
        // What to erase is found from the payloads table, which holds only what is not erased
        // yet (erasing deletes the payload, and the partner's full answer is only ever stored
        // beside a payload): the last days' events and the backlog. Reading every settled event
        // past the cutoff instead took over a second per 1,000,000 events stored, at start and
        // every hour, even with nothing to erase. (CROSS JOIN: SQLite keeps that order;
        // `account` is only events'.) A read: it no longer holds the writer either.
        // Each payload's size, for chunks of bounded bytes: read only for the events found (a
        // subquery, so the scan stays on the payloads' key index, not their pages).
        let candidates = try await read { db in
            try Self.fetchSized(
                db, sql: """
                    SELECT e.id, (SELECT length(body) FROM payloads WHERE event_id = e.id)
                    FROM payloads p CROSS JOIN events e ON e.id = p.event_id
                    WHERE e.state IN \(states) AND e.updated_at < ? \(inAccount)
                    """,
                arguments: [payloadBefore.millis] + accountArgument)
        }
        var erased = 0
        var deleted = 0
        defer { if deleted > 0 { invalidateSettled() } }  // settled events deleted
        for chunk in Self.chunks(candidates) {
            let started = ContinuousClock.now
            erased += try await write { db in
                // Still settled, still before the cutoff, still with a payload: an event retried
                // or erased since the read is left alone. (The `+`s keep SQLite on the primary
                // key: for a list of 500 ids it chose `events_state_updated` and walked every
                // settled event, 40 ms a chunk with 100,000 of them.)
                let ids = try String.fetchAll(
                    db, sql: """
                        SELECT id FROM events WHERE id IN (\(Self.placeholders(chunk.count))) AND +state IN \(states) AND +updated_at < ?
                          AND \(PayloadStore.exists)
                        """,
                    arguments: StatementArguments(chunk) + [payloadBefore.millis])
                guard !ids.isEmpty else { return 0 }
                let condition = "id IN (\(Self.placeholders(ids.count)))"
                let arguments = StatementArguments(ids)
                try db.execute(sql: "UPDATE events SET partner_response_full = NULL, payload_erased_at = ? WHERE \(condition)",
                               arguments: [now.millis] + arguments)
                try PayloadStore.erase(db, eventsWhere: condition, arguments: arguments)
                try Self.reduceErrorsToCodes(db, eventsWhere: condition, arguments: arguments)
                try Self.eraseIdempotencyKeys(db, eventsWhere: condition, arguments: arguments)
                return ids.count
            }
            try await pause.after(ContinuousClock.now - started)
        }
        // Whole records: of every settled state, dead ones too, whatever `includeDead` says (a
        // dead one's payload goes with it). Not one whose request given up may still be at work
        // at the partner (`partner_open_until`): its row is what holds the candidate's other
        // events back meanwhile (found from outside: with a record retention of seconds, a purge
        // deleted it and the next event went while the first was still being created).
        while true {
            let started = ContinuousClock.now
            let (count, more) = try await write { db -> (Int, Bool) in
                let found = try Self.fetchSized(
                    db, sql: """
                        SELECT id, (SELECT length(body) FROM payloads WHERE event_id = events.id) FROM events
                        WHERE state IN ('delivered', 'linked', 'dead') AND updated_at < ?
                          AND (partner_open_until IS NULL OR partner_open_until <= ?) \(inAccount) LIMIT ?
                        """,
                    arguments: [recordBefore.millis, now.millis] + accountArgument + [Self.maintenanceChunk])
                guard let ids = Self.chunks(found).first else { return (0, false) }
                try db.execute(sql: "DELETE FROM events WHERE id IN (\(Self.placeholders(ids.count)))", arguments: StatementArguments(Array(ids)))
                return (db.changesCount, ids.count < found.count || found.count == Self.maintenanceChunk)
            }
            deleted += count
            if !more { break }
            try await pause.after(ContinuousClock.now - started)
        }
        return (erased, deleted)
    }

    /// `(id, payload size)` rows of a statement selecting an id and a size (NULL: no payload).
    private static func fetchSized(_ db: Database, sql: String, arguments: StatementArguments) throws -> [(id: String, bytes: Int)] {
        try Row.fetchAll(db, sql: sql, arguments: arguments).map { (id: $0[0] as String, bytes: ($0[1] as Int?) ?? 0) }
    }

    /// `?, ?, ...`: `count` placeholders for an `IN` list.
    private static func placeholders(_ count: Int) -> String {
        Array(repeating: "?", count: count).joined(separator: ", ")
    }

    /// Ids in order, in chunks of at most `maintenanceChunk` events and `maintenanceChunkBytes`
    /// of payload (a larger payload alone).
    static func chunks(_ items: [(id: String, bytes: Int)]) -> [ArraySlice<String>] {
        var chunks: [ArraySlice<String>] = []
        var current: [String] = []
        var bytes = 0
        for item in items {
            if !current.isEmpty && (current.count == maintenanceChunk || bytes + item.bytes > maintenanceChunkBytes) {
                chunks.append(current[...])
                current = []
                bytes = 0
            }
            current.append(item.id)
            bytes += item.bytes
        }
        if !current.isEmpty { chunks.append(current[...]) }
        return chunks
    }

    /// GDPR erasure of one candidate: every payload and full partner answer for the
    /// `partner_candidate_id` is erased; events not yet delivered can no longer be sent and
    /// become dead with `last_error = "erased"` (dead ones too; one in flight when its attempt
    /// ends other than delivered or linked). In every account unless `account` names one
    /// (the same person may have come through several customers).
    public func forget(partnerCandidateID: String, account: String? = nil, now: Date) async throws -> ForgetReport {
        let report = try await write { db -> ForgetReport in
            let condition = "partner_candidate_id = ?" + (account == nil ? "" : " AND account = ?")
            let arguments: StatementArguments = [partnerCandidateID] + (account.map { [$0] } ?? [])
            let rows = try Row.fetchAll(db, sql: "SELECT id, state FROM events WHERE \(condition) ORDER BY received_at", arguments: arguments)
            let ids = rows.map { $0[0] as String }
            let states = rows.map { $0[1] as String }
            try db.execute(
                sql: "UPDATE events SET state = 'dead', next_attempt_at = NULL, last_error = 'erased', updated_at = ? WHERE \(condition) AND state = 'pending'",
                arguments: [now.millis] + arguments)
            let stopped = db.changesCount
            // Dead already: marked too, so that no count asks for them to be sent again (review:
            // `events retry --all-dead` counted a forgotten dead event among those whose senders
            // must send them again). Each attempt's own error stays in the history.
            try db.execute(sql: "UPDATE events SET last_error = 'erased' WHERE \(condition) AND state = 'dead'", arguments: arguments)
            try PayloadStore.erase(db, eventsWhere: condition, arguments: arguments)
            try db.execute(
                sql: "UPDATE events SET partner_response_full = NULL, payload_erased_at = ? WHERE \(condition)",
                arguments: [now.millis] + arguments)
            try Self.reduceErrorsToCodes(db, eventsWhere: condition, arguments: arguments)
            try Self.eraseIdempotencyKeys(db, eventsWhere: condition, arguments: arguments)
            return ForgetReport(events: ids, pendingStopped: stopped,
                                inFlight: states.count { $0 == EventState.inFlight.rawValue },
                                atPartner: states.count { $0 == EventState.delivered.rawValue || $0 == EventState.linked.rawValue })
        }
        if report.pendingStopped > 0 { invalidateSettled() }  // pending events made dead
        return report
    }

    /// An idempotency key as an erasure leaves it: its SHA-256, so that a replay is still
    /// known (`acceptRows` looks for both forms) but the key is not stored as sent. A sender
    /// may build its keys from personal data (`candidate-<national id>`): `forget` and the
    /// payload's retention left them in the outbox for the record's year (found from outside).
    /// A hash, not an erasure proper: a key of few possible values (a national id) can be found
    /// again by hashing them all.
    static func erasedKey(_ key: String) -> String {
        var key = key
        // The key's own bytes, not a `Data` copy of them (ingest hashes every webhook's key).
        let digest = key.withUTF8 { SHA256.hash(data: UnsafeRawBufferPointer($0)) }
        return erasedKeyPrefix + IngestHandler.hex(digest)
    }

    /// U+FFFD first: ingest refuses keys that hold it (`IngestHandler.keyProblem`), so no sender's
    /// key is ever in the erased form. With a plain `sha256:` one could be (review): its event's
    /// erased key then broke the unique index, and `forget` and retention failed on it.
    static let erasedKeyPrefix = "\u{FFFD}sha256:"

    /// Replaces the idempotency keys of the events matched by their erased form (those not in
    /// that form yet).
    static func eraseIdempotencyKeys(_ db: Database, eventsWhere condition: String, arguments: StatementArguments) throws {
        let rows = try Row.fetchAll(
            db, sql: "SELECT id, idempotency_key FROM events WHERE (\(condition)) AND NOT (idempotency_key GLOB ?)",
            arguments: arguments + [erasedKeyPrefix + String(repeating: "[0-9a-f]", count: 64)])
        for row in rows {
            try db.execute(sql: "UPDATE events SET idempotency_key = ? WHERE id = ?",
                           arguments: [erasedKey(row[1]), row[0] as String])
        }
    }

    /// Keeps only the code of `last_error` and of the history's errors (`code: message` → `code`):
    /// the partner's free-text message may repeat a submitted value, so it goes with the payload.
    static func reduceErrorsToCodes(_ db: Database, eventsWhere condition: String, arguments: StatementArguments) throws {
        db.add(function: storedCodeFunction)
        try db.execute(sql: "UPDATE events SET last_error = relay_stored_code(last_error) WHERE \(condition)", arguments: arguments)
        try db.execute(
            sql: "UPDATE attempts SET error = relay_stored_code(error) WHERE event_id IN (SELECT id FROM events WHERE \(condition))",
            arguments: arguments)
    }

    /// `PartnerErrorBody.storedCode` in SQL (NULL stays NULL): the code part only, and not a
    /// value a partner echoed as its code before codes were checked.
    static let storedCodeFunction = DatabaseFunction("relay_stored_code", argumentCount: 1, pure: true) { values in
        String.fromDatabaseValue(values[0]).map(PartnerErrorBody.storedCode)
    }

    /// A consistent copy of the outbox (SQLite online backup) while the daemon runs; 0600.
    /// `created` runs once the destination is created (it is the backup's from then on): the CLI
    /// arms its signal handlers with it.
    public func backup(to destination: String, created: (String) -> Void = { _ in }) throws {
        // The destination itself first (found from outside: the live outbox's path was refused
        // for its "-wal", a file the operator did not name).
        if FileManager.default.fileExists(atPath: destination) {
            throw OutboxError.storage("\(destination) already exists")
        }
        // SQLite's side files of another database by that name: a hot journal would be rolled
        // into the copy, and a failed copy must not delete what it did not write.
        for side in ["-journal", "-wal", "-shm"] where FileManager.default.fileExists(atPath: destination + side) {
            throw OutboxError.storage("\(destination + side) already exists")
        }
        // Created 0600 here, and only if it is not there, or not at all: SQLite would create it
        // with the umask's mode (0644), and the copy holds every stored candidate.
        let fd = open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw OutboxError.storage(errno == EEXIST ? "\(destination) already exists" : "cannot create \(destination): \(String(cString: strerror(errno)))")
        }
        Glibc.close(fd)
        created(destination)
        do {
            let target = try DatabaseQueue(path: destination)
            do {
                try pool.backup(to: target)
            } catch {
                try? target.close()
                throw error
            }
            try target.close()
        } catch {
            // A copy cut short (a full disk) is no backup, holds personal data, and would make
            // the retry fail with "already exists": it goes, with the journal SQLite left (the
            // copy is in rollback-journal mode: no -wal or -shm of its own; none was there before).
            unlink(destination)
            unlink(destination + "-journal")
            throw OutboxError.storage("backup to \(destination) failed, nothing left there: \(Self.describe(error))")
        }
    }

    /// A database error as an operator reads it: SQLite's "not an error" for a full disk
    /// (error 13, SQLITE_FULL, as GRDB words a backup that failed) named as such.
    static func describe(_ error: any Error) -> String {
        guard let error = error as? DatabaseError else { return "\(error)" }
        switch error.resultCode {
        case .SQLITE_FULL: return "the disk is full"
        case .SQLITE_IOERR: return "an I/O error writing the copy (a file size limit, a failing disk)"
        default: return "\(error)"
        }
    }
}

/// What a long maintenance command (`retry --all-dead`, `purge`, the retention pass) does
/// between its transactions, given how long the last one took.
public struct MaintenancePause: Sendable {
    let body: @Sendable (Duration) async throws -> Void

    public init(_ body: @escaping @Sendable (Duration) async throws -> Void) { self.body = body }

    /// Nothing: in the daemon, the writer's queue already interleaves its transactions with the
    /// group commits of ingest and delivery.
    public static let none = MaintenancePause { _ in }

    /// As long as the last transaction took, and at least 10 ms: from another process (the
    /// admin CLI), whose lock the daemon's writes can only take while it is released.
    public static let shareTheWriter = MaintenancePause { elapsed in
        try await Task.sleep(for: max(elapsed, .milliseconds(10)))
    }

    func after(_ elapsed: Duration) async throws { try await body(elapsed) }
}
