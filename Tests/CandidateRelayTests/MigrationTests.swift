import CandidateRelayTesting
import Foundation
import GRDB
import Synchronization
import Testing
@testable import CandidateRelay

/// An outbox written by the release before accounts (`Tests/Fixtures/README.md`), opened with
/// the current code: `v3_accounts` rebuilds the events table, and nothing may be lost or changed.
@Suite struct MigrationTests {
    static let fixture: String = {
        var url = URL(fileURLWithPath: #filePath)
        while !FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { url.deleteLastPathComponent() }
        return url.appendingPathComponent("Tests/Fixtures/outbox-before-accounts.sqlite3").path
    }()

    /// The fixture's events as the previous release stored them, oldest first:
    /// (id, idempotency key, state, attempts, candidate uid).
    static let events: [(String, String?, String, Int, String?)] = [
        ("evt_01a232205b1ddbe1e75f5edcc432", "key-1", "delivered", 1, "00.AAA"),
        ("evt_01a232205b27fa79ecbe1f307a65", "key-2", "delivered", 1, "5555"),
        ("evt_01a23220623d5649b5b4d76edad8", "key-3", "pending", 1, nil),
        ("evt_01a232206245d866d5496c2a964e", "key-4", "pending", 1, nil),
        ("evt_01a23220624d973e89d9391dea81", nil, "pending", 1, nil),
    ]
    /// Later than every time in the fixture (it was written on 2026-12-01).
    static let now = Date(timeIntervalSince1970: 1_796_140_000)

    /// A copy of the fixture (never the fixture itself: opening migrates it) in a temporary directory.
    static func copy() throws -> (TemporaryDirectory, String) {
        let dir = try TemporaryDirectory()
        let path = dir.file("outbox.sqlite3")
        try FileManager.default.copyItem(atPath: fixture, toPath: path)
        return (dir, path)
    }

    /// The fixture as written, before any migration of this release.
    @Test func fixtureIsThePreviousReleasesSchema() throws {
        let (dir, path) = try Self.copy()
        defer { dir.cleanup() }
        let queue = try DatabaseQueue(path: path)
        defer { try? queue.close() }
        let (migrations, columns, count) = try queue.read { db in
            (try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations ORDER BY identifier"),
             try db.columns(in: "events").map(\.name),
             try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM events"))
        }
        #expect(migrations == ["v1_events_and_attempts", "v2_readiness_probe"])
        #expect(!columns.contains("account"))
        #expect(count == Self.events.count)
    }

    /// Found from outside: the daemon and an admin command opening an old outbox at once (its
    /// first start of a new release, a `status` meanwhile) both ran its migrations, and the
    /// second failed on `UNIQUE constraint failed: grdb_migrations.identifier`. Here both have
    /// read what is applied and wait for the write lock, held by a third connection: both open.
    @Test func twoOpensMigratingAtOnceBothSucceed() async throws {
        let (dir, path) = try Self.copy()
        defer { dir.cleanup() }
        var holding = Configuration()
        holding.allowsUnsafeTransactions = true
        let holder = try DatabaseQueue(path: path, configuration: holding)
        // A WAL with a frame (an open would write one otherwise, and wait for the lock first).
        try await holder.writeWithoutTransaction { db in
            try db.execute(sql: "BEGIN IMMEDIATE; CREATE TABLE held (x); DROP TABLE held; COMMIT; BEGIN IMMEDIATE")
        }
        // Threads, not tasks: an open blocks its thread while it waits for the lock, and two
        // would hold the whole cooperative pool of a two-core machine.
        let failures = Mutex<[String?]>([])
        let done = DispatchGroup()
        for _ in 0..<2 {
            done.enter()
            Thread {
                var failure: String?
                do { _ = try Outbox(path: path) } catch { failure = "\(error)" }
                failures.withLock { $0.append(failure) }
                done.leave()
            }.start()
        }
        try await Task.sleep(for: .milliseconds(500))
        try await holder.writeWithoutTransaction { db in try db.execute(sql: "ROLLBACK") }
        done.wait()
        #expect(failures.withLock { $0 } == [nil, nil])
        let applied = try await holder.read { db in try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations") }
        #expect(applied.count == OutboxSchema.migrator.migrations.count)
        #expect(try await holder.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM events") } == Self.events.count)
    }

    @Test func everyEventAndAttemptIsKeptAsTheDefaultAccounts() async throws {
        let (dir, path) = try Self.copy()
        defer { dir.cleanup() }
        let outbox = try Outbox(path: path)
        let rows = try outbox.pool.read { db in
            try Row.fetchAll(db, sql: """
                SELECT id, account, idempotency_key, state, attempts, candidate_uid, EXISTS (SELECT 1 FROM payloads p WHERE p.event_id = events.id) AS has_payload
                FROM events ORDER BY received_at, id
                """)
        }
        #expect(rows.count == Self.events.count)
        // An outbox created before `Outbox.pageSize` keeps its 4 KB pages (only a new file
        // takes the 2 KB ones), and reads as before.
        #expect(try await outbox.pool.read { db in try Int.fetchOne(db, sql: "PRAGMA page_size") } == 4096)
        for (row, expected) in zip(rows, Self.events) {
            #expect(row["id"] as String == expected.0)
            #expect(row["account"] as String == AccountConfiguration.defaultID)
            #expect(row["idempotency_key"] as String? == expected.1)
            #expect(row["state"] as String == expected.2)
            #expect(row["attempts"] as Int == expected.3)
            #expect(row["candidate_uid"] as String? == expected.4)
            #expect(row["has_payload"] as Bool == true)
        }
        let attempts = try outbox.pool.read { db in
            try Row.fetchAll(db, sql: "SELECT event_id, attempt, outcome, error FROM attempts ORDER BY at")
        }
        #expect(attempts.map { $0["event_id"] as String } == Self.events.map(\.0))
        #expect(attempts.map { $0["outcome"] as String } == ["delivered", "delivered", "retry", "retry", "retry"])
        #expect(attempts.map { $0["error"] as String? } == [nil, nil, "connection_refused", "connection_refused", "connection_refused"])
        #expect(try await outbox.history(id: Self.events[2].0).map(\.outcome) == ["retry"])
        // The records read as before, with their account.
        let record = try #require(try await outbox.record(id: Self.events[0].0))
        #expect(record.account == "default" && record.state == .delivered && record.candidateUID == "00.AAA")
        let status = try await outbox.status(now: Self.now)
        #expect(status.counts == [.delivered: 2, .pending: 3])
        #expect(Array(status.accounts.keys) == ["default"])
        // A pending event's payload moved with it (v4) and is what a worker sends.
        let claimed = try #require(try await outbox.claimNext(now: Self.now, leaseSeconds: 60, maxAgeSeconds: 1e9))
        let sent = try #require(try JSONSerialization.jsonObject(with: claimed.payload) as? [String: Any])
        #expect(sent["position_uid"] != nil)
    }

    @Test func migrationIsRecordedAndTheFileIsSound() async throws {
        let (dir, path) = try Self.copy()
        defer { dir.cleanup() }
        let outbox = try Outbox(path: path)
        let (migrations, foreignKeyProblems, integrity, foreignKey, indexes, triggers) = try outbox.pool.read { db in
            (try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations ORDER BY rowid"),
             try Row.fetchAll(db, sql: "PRAGMA foreign_key_check"),
             try String.fetchAll(db, sql: "PRAGMA integrity_check"),
             [try Row.fetchOne(db, sql: "SELECT \"table\", on_delete FROM pragma_foreign_key_list('attempts')"),
              try Row.fetchOne(db, sql: "SELECT \"table\", on_delete FROM pragma_foreign_key_list('payloads')")],
             try String.fetchAll(db, sql: """
                SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' AND name NOT LIKE 'sqlite_%' ORDER BY name
                """),
             try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'trigger'"))
        }
        #expect(migrations == ["v1_events_and_attempts", "v2_readiness_probe", "v3_accounts", "v4_payloads", "v5_holds", "v6_wall_clock", "v7_partner_open_until", "v8_run_partner_timeout", "v9_events_key_busy", "v10_rebase_rows"])
        #expect(foreignKeyProblems.isEmpty)
        #expect(integrity == ["ok"])
        // The attempts still reference the (rebuilt) events table, with the cascade; so do the
        // payloads, which v4 moved out of it.
        for key in foreignKey {
            #expect(key?["table"] as String? == "events")
            #expect(key?["on_delete"] as String? == "CASCADE")
        }
        #expect(try await outbox.pool.read { db in try db.columns(in: "events").map(\.name) }.contains("payload") == false)
        #expect(indexes == ["events_due", "events_key_busy", "events_natural_key", "events_partner_open", "events_state_updated"])
        #expect(triggers == ["events_state_transition"])
    }

    @Test func pendingEventsAreClaimableAsTheDefaultAccounts() async throws {
        let (dir, path) = try Self.copy()
        defer { dir.cleanup() }
        let outbox = try Outbox(path: path)
        #expect(try await outbox.claimNext(accounts: ["acme"], now: Self.now, leaseSeconds: 60, maxAgeSeconds: 86_400) == nil)
        var claimed: [String] = []
        while let event = try await outbox.claimNext(accounts: ["default"], now: Self.now, leaseSeconds: 60, maxAgeSeconds: 86_400) {
            #expect(event.account == "default")
            #expect(event.attempt == 2)
            #expect(!event.payload.isEmpty)
            claimed.append(event.id)
        }
        // In due order (next_attempt_at), each once.
        #expect(claimed == [Self.events[3].0, Self.events[2].0, Self.events[4].0])
        let status = try await outbox.status(now: Self.now)
        #expect(status.counts[.inFlight] == 3)
    }

    @Test func idempotencyKeysStayTheDefaultAccountsOnly() async throws {
        let (dir, path) = try Self.copy()
        defer { dir.cleanup() }
        let outbox = try Outbox(path: path)
        let bodyHash = try await outbox.pool.read { db in
            try String.fetchOne(db, sql: "SELECT body_sha256 FROM events WHERE idempotency_key = 'key-1'")
        }
        func submission(_ account: String, hash: String) -> Submission {
            Submission(id: EventID.generate(), account: account, idempotencyKey: "key-1", bodySHA256: hash, positionUID: "POS-1",
                       partnerCandidateID: "C-1", payload: Data("{}".utf8), receivedAt: Self.now)
        }
        // A replay of the fixture's first webhook is still that event...
        guard case .duplicate(let replay) = try await outbox.accept(submission("default", hash: try #require(bodyHash)), maxBacklog: 100) else {
            Issue.record("replay after the migration is not a duplicate")
            return
        }
        #expect(replay.id == Self.events[0].0)
        // ...another body under its key is refused...
        await #expect(throws: OutboxError.self) { try await outbox.accept(submission("default", hash: "other"), maxBacklog: 100) }
        // ...and the key is free in another account (unique per account now, not globally).
        guard case .created(let other) = try await outbox.accept(submission("acme", hash: "other"), maxBacklog: 100) else {
            Issue.record("key-1 in acme is not a new event")
            return
        }
        #expect(other.account == "acme")
    }

    @Test func theSchemaStillEnforcesTheStateMachine() async throws {
        let (dir, path) = try Self.copy()
        defer { dir.cleanup() }
        let outbox = try Outbox(path: path)
        let pending = Self.events[2].0
        let delivered = Self.events[0].0
        for (id, sql) in [
            (pending, "UPDATE events SET state = 'delivered', candidate_uid = 'x' WHERE id = ?"),  // pending -> delivered
            (delivered, "UPDATE events SET state = 'pending', next_attempt_at = 1 WHERE id = ?"),  // delivered -> pending
            (pending, "UPDATE events SET state = 'lost' WHERE id = ?"),                           // no such state
            (pending, "UPDATE events SET state = 'in_flight' WHERE id = ?"),                      // in flight without a lease
            (pending, "UPDATE events SET next_attempt_at = NULL WHERE id = ?"),                   // pending without a due time
        ] {
            await #expect(throws: (any Error).self, "\(sql)") {
                try await outbox.pool.write { db in try db.execute(sql: sql, arguments: [id]) }
            }
        }
        await #expect(throws: (any Error).self, "an account is required") {
            try await outbox.pool.write { db in try db.execute(sql: "UPDATE events SET account = NULL WHERE id = ?", arguments: [pending]) }
        }
        #expect(try await outbox.record(id: pending)?.state == .pending)
        #expect(try await outbox.record(id: delivered)?.state == .delivered)
        // The legal path still works.
        _ = try #require(try await outbox.claimNext(accounts: ["default"], now: Self.now, leaseSeconds: 60, maxAgeSeconds: 86_400))
    }

    @Test func openingAgainChangesNothing() async throws {
        let (dir, path) = try Self.copy()
        defer { dir.cleanup() }
        func snapshot(_ outbox: Outbox) async throws -> [String] {
            try await outbox.pool.read { db in
                try String.fetchAll(db, sql: "SELECT type || ' ' || name || ' ' || coalesce(sql, '') FROM sqlite_master ORDER BY type, name")
                    + String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations ORDER BY identifier")
                    + Row.fetchAll(db, sql: "SELECT * FROM events ORDER BY id").map(\.description)
                    + Row.fetchAll(db, sql: "SELECT * FROM attempts ORDER BY rowid").map(\.description)
            }
        }
        let first = try Outbox(path: path)
        let migrated = try await snapshot(first)
        try first.close()
        let second = try Outbox(path: path)
        #expect(try await snapshot(second) == migrated)
        try second.close()
    }

    /// An outbox a newer version migrated is refused: this version does not know its schema (it
    /// was opened, and written, without a word).
    @Test func anOutboxOfANewerVersionIsRefused() async throws {
        let (dir, path) = try Self.copy()
        defer { dir.cleanup() }
        let current = try Outbox(path: path)
        try await current.pool.write { db in try db.execute(sql: "INSERT INTO grdb_migrations (identifier) VALUES ('v99_future')") }
        try current.close()
        #expect {
            _ = try Outbox(path: path)
        } throws: { error in
            "\(error)".contains("written by a newer candidate-relay") && "\(error)".contains("v99_future")
        }
    }
}
