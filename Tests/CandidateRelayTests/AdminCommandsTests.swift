import CandidateRelayTesting
import Foundation
import GRDB
import Synchronization
import Testing
@testable import CandidateRelay

/// The admin commands' `--account` (CONTRACT section 8) on a real outbox: what an operator reads.
@Suite struct AdminCommandsTests {
    static let start = OutboxAccountsTests.start
    static let now = start.addingTimeInterval(100)

    /// acme: `a-dead` (dead, candidate X), `a-done` (delivered, X), `a-wait` (pending, Y);
    /// globex: `g-dead` (dead, X), `g-wait` (pending, X). Received at `start`..`start+4`, in the
    /// order named below; the outcomes recorded at `start+10`.
    static func populated() async throws -> (TemporaryDirectory, Outbox, AdminCommands) {
        let (dir, outbox) = try OutboxTests.open()
        func accept(_ id: String, _ account: String, _ partnerID: String, _ offset: Double) async throws {
            _ = try await outbox.accept(OutboxAccountsTests.submission(
                id, account: account, body: #"{"first_name":"Ada"}"#, partnerID: partnerID, at: start.addingTimeInterval(offset)),
                maxBacklog: 100)
        }
        try await accept("a-dead", "acme", "X", 0)
        try await accept("a-done", "acme", "X", 1)
        try await accept("g-dead", "globex", "X", 2)
        try await accept("g-wait", "globex", "X", 3)
        try await accept("a-wait", "acme", "Y", 4)
        let at = start.addingTimeInterval(10)
        func finish(_ account: String, _ outcome: RecordedOutcome) async throws {
            let claimed = try #require(try await outbox.claimNext(accounts: [account], now: at, leaseSeconds: 60, maxAgeSeconds: 1000))
            try await outbox.complete(claimed, outcome: outcome, now: at, latencyMs: 1)
        }
        try await finish("acme", .dead(status: 404, error: "position_not_found: no such position"))  // a-dead
        try await finish("acme", .delivered(candidateUID: "u1", status: 201, summary: nil, fullResponse: nil))  // a-done
        try await finish("globex", .dead(status: 400, error: "invalid_email: bad"))  // g-dead
        return (dir, outbox, AdminCommands(outbox: outbox, now: { now }))
    }

    /// Opens event `id`'s partner window (a request given up may still be at work) for 30 s
    /// from `now`; returns its end.
    static func holdOpen(_ outbox: Outbox, _ id: String) async throws -> Date {
        let open = now.addingTimeInterval(30)
        try await outbox.pool.write { db in
            try db.execute(sql: "UPDATE events SET partner_open_until = ? WHERE id = ?", arguments: [open.millis, id])
        }
        return open
    }

    /// acme's next claim at `at`.
    static func claimAcme(_ outbox: Outbox, at: Date) async throws -> ClaimedEvent? {
        try await outbox.claimNext(accounts: ["acme"], now: at, leaseSeconds: 60, maxAgeSeconds: 1000)
    }

    static func json(_ text: String) -> [String: Any]? {
        try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
    }

    static let zeros = ["pending": 0, "in_flight": 0, "delivered": 0, "linked": 0, "dead": 0]

    static func counts(_ changes: [String: Int]) -> [String: Int] {
        zeros.merging(changes) { $1 }
    }

    /// `purge --older-than`: units, plain seconds, and no value that is not a finite number of
    /// seconds within 100 years (`inf` and `999999999999w` crashed the command).
    @Test func durationsAreFiniteAndBounded() {
        #expect(DurationParser.seconds("7d") == 604_800)
        #expect(DurationParser.seconds("90") == 90)
        #expect(DurationParser.seconds("1.5h") == 5_400)
        #expect(DurationParser.seconds("36500d") == 3_153_600_000.0)
        #expect(DurationParser.seconds(".5h") == 1_800)
        // Digits only: Swift's Double also reads these (found from outside: `0x10` was 16 s).
        for bad in ["inf", "infd", "1e400", "999999999999w", "nan", "nand", "-1", "-1d", "", "d", "7x",
                    "0x10", "0x10d", "1e3", "+5", "5..0", ".", ".d", " 5", "٣d"] {
            #expect(DurationParser.seconds(bad) == nil, "\(bad)")
        }
    }

    @Test func statusJSONHasAnAccountsBlock() async throws {
        let (dir, _, admin) = try await Self.populated()
        defer { dir.cleanup() }
        let all = try #require(Self.json(try await admin.status(json: true)))
        #expect(all["counts"] as? [String: Int] == Self.counts(["pending": 2, "delivered": 1, "dead": 2]))
        let accounts = try #require(all["accounts"] as? [String: [String: Any]])
        #expect(Set(accounts.keys) == ["acme", "globex"])
        #expect(accounts["acme"]?["counts"] as? [String: Int] == Self.counts(["pending": 1, "delivered": 1, "dead": 1]))
        #expect(accounts["acme"]?["oldest_pending_age_seconds"] as? Double == 96)
        #expect(accounts["globex"]?["counts"] as? [String: Int] == Self.counts(["pending": 1, "dead": 1]))
        #expect(accounts["globex"]?["oldest_pending_age_seconds"] as? Double == 97)
        #expect(all["oldest_pending_age_seconds"] as? Double == 97)

        // One account: the same shape, that account's figures only.
        let acme = try #require(Self.json(try await admin.status(json: true, account: "acme")))
        #expect(acme["counts"] as? [String: Int] == Self.counts(["pending": 1, "delivered": 1, "dead": 1]))
        #expect(acme["oldest_pending_age_seconds"] as? Double == 96)
        #expect(acme["last_delivery_at"] as? String == Timestamp.string(Self.start.addingTimeInterval(10)))
        #expect((acme["accounts"] as? [String: Any]).map { Array($0.keys) } == ["acme"])
        let globex = try #require(Self.json(try await admin.status(json: true, account: "globex")))
        #expect(globex["last_delivery_at"] is NSNull)

        // An account without events (configured or not): zeros.
        let nobody = try #require(Self.json(try await admin.status(json: true, account: "nobody")))
        #expect(nobody["counts"] as? [String: Int] == Self.zeros)
        // 0, not null, when nothing is pending (CONTRACT section 5 shows a number; the heartbeat
        // and the metric say 0).
        #expect(nobody["oldest_pending_age_seconds"] as? Double == 0)
        let block = (nobody["accounts"] as? [String: [String: Any]])?["nobody"]
        #expect(block?["counts"] as? [String: Int] == Self.zeros)
        #expect(block?["oldest_pending_age_seconds"] as? Double == 0)
    }

    @Test func statusTextListsEachAccount() async throws {
        let (dir, _, admin) = try await Self.populated()
        defer { dir.cleanup() }
        let text = try await admin.status(json: false)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        // The totals as before...
        #expect(Array(lines.prefix(5)) == ["pending    2", "in_flight  0", "delivered  1", "linked     0", "dead       2"])
        #expect(lines.contains("dead:               2"))
        // ...then a row per account.
        let table = lines.drop { !$0.hasPrefix("ACCOUNT") }
        #expect(table.first?.split(separator: " ", omittingEmptySubsequences: true)
                == ["ACCOUNT", "PENDING", "IN_FLIGHT", "DELIVERED", "LINKED", "DEAD", "OLDEST_PENDING_AGE"])
        #expect(table.dropFirst().map { $0.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ") }
                == ["acme 1 0 1 0 1 96.0 s", "globex 1 0 0 0 1 97.0 s"])

        let acme = try await admin.status(json: false, account: "acme")
        #expect(acme.hasPrefix("account:            acme\npending    1\nin_flight  0\ndelivered  1\nlinked     0\ndead       1\n"))
        #expect(acme.contains("oldest pending age: 96.0 s"))
        #expect(!acme.contains("ACCOUNT"))
        #expect(try await admin.status(json: false, account: "nobody").contains("pending    0"))
    }

    /// Only the `default` account (every outbox before accounts): the text is what it always was.
    @Test func statusTextOfTheDefaultAccountAloneIsUnchanged() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(OutboxTests.submission("e1", at: Self.start), maxBacklog: 10)
        let text = try await AdminCommands(outbox: outbox, now: { Self.now }).status(json: false)
        #expect(text == """
            pending    1
            in_flight  0
            delivered  0
            linked     0
            dead       0
            oldest pending age: 100.0 s
            last delivery:      -
            dead:               0
            """)
        let json = try #require(Self.json(try await AdminCommands(outbox: outbox, now: { Self.now }).status(json: true)))
        #expect((json["accounts"] as? [String: Any]).map { Array($0.keys) } == ["default"])
    }

    @Test func listShowsTheAccountAndKeepsToOne() async throws {
        let (dir, _, admin) = try await Self.populated()
        defer { dir.cleanup() }
        let table = try await admin.list(state: nil, limit: 50, json: false)
        let rows = table.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        #expect(rows.first?.prefix(3) == ["ID", "ACCOUNT", "STATE"])
        #expect(rows.dropFirst().map { Array($0.prefix(3)) } == [
            ["a-wait", "acme", "pending"], ["g-wait", "globex", "pending"], ["g-dead", "globex", "dead"],
            ["a-done", "acme", "delivered"], ["a-dead", "acme", "dead"],
        ])
        let globex = try await admin.list(state: nil, account: "globex", limit: 50, json: true)
        let records = try #require(try JSONSerialization.jsonObject(with: Data(globex.utf8)) as? [[String: Any]])
        #expect(records.map { $0["id"] as? String } == ["g-wait", "g-dead"])
        #expect(records.allSatisfy { $0["account"] as? String == "globex" })
        let deadInAcme = try await admin.list(state: .dead, account: "acme", limit: 50, json: true)
        #expect((try JSONSerialization.jsonObject(with: Data(deadInAcme.utf8)) as? [[String: Any]])?.map { $0["id"] as? String } == ["a-dead"])
        #expect(try await admin.list(state: nil, account: "nobody", limit: 50, json: true) == "[]")
        // A list cut at its limit says so (the command, on stderr), with the limit's newest events.
        let cut = try await admin.listing(state: nil, limit: 2, json: true)
        #expect(cut.more)
        #expect((try JSONSerialization.jsonObject(with: Data(cut.text.utf8)) as? [[String: Any]])?.map { $0["id"] as? String } == ["a-wait", "g-wait"])
        #expect(try await admin.listing(state: nil, limit: 5, json: true).more == false)
        #expect(try await admin.listing(state: nil, limit: .max, json: true).more == false)  // "all": no overflow (review)
        let shown = try #require(try await admin.show(id: "g-dead", json: false))
        #expect(shown.contains("account".padding(toLength: 21, withPad: " ", startingAt: 0) + " globex"))
    }

    @Test func retryAllDeadKeepsToTheAccount() async throws {
        let (dir, outbox, admin) = try await Self.populated()
        defer { dir.cleanup() }
        let result = try await admin.retry(ids: nil, account: "globex")
        #expect(result.text == "retried g-dead\n1 event(s) moved back to pending in account globex")
        #expect(result.allFound)
        #expect(try await outbox.record(id: "g-dead")?.state == .pending)
        #expect(try await outbox.record(id: "a-dead")?.state == .dead)
        #expect(try await admin.retry(ids: nil, account: "nobody").text == "0 event(s) moved back to pending in account nobody")
        // Without --account: every account's dead events.
        #expect(try await admin.retry(ids: nil).text == "retried a-dead\n1 event(s) moved back to pending")
        #expect(try await outbox.record(id: "a-dead")?.state == .pending)
        // A dead event without its payload is counted, not left out unsaid (found from outside).
        try await outbox.pool.write { db in
            try db.execute(sql: "UPDATE events SET state = 'dead', next_attempt_at = NULL WHERE id = 'g-dead'")
            try db.execute(sql: "DELETE FROM payloads WHERE event_id = 'g-dead'")
        }
        #expect(try await admin.retry(ids: nil).text == """
            0 event(s) moved back to pending
            1 dead event(s) have no payload any more (erased by retention or purge) and cannot be resent: \
            their senders must send them again as new webhooks, with a new webhook-id or Idempotency-Key \
            (a replay with the same key is answered 200 as a duplicate and stores nothing; `events list --state dead`)
            """)
        // One `forget` erased is not to be sent again: not counted (review).
        try await outbox.pool.write { db in try db.execute(sql: "UPDATE events SET last_error = 'erased' WHERE id = 'g-dead'") }
        #expect(try await admin.retry(ids: nil).text == "0 event(s) moved back to pending")
        #expect(try await admin.retry(ids: nil, account: "acme").text == "0 event(s) moved back to pending in account acme")
    }

    /// Found from outside: dead events of an account a reload had removed were moved back to
    /// pending without a word, where the daemon never sends them and no retention erases them
    /// (not terminal). They stay dead now, and the command says why.
    @Test func retryLeavesDeadTheEventsOfAccountsTheConfigNoLongerHas() async throws {
        let (dir, outbox, admin) = try await Self.populated()
        defer { dir.cleanup() }
        let named = try await admin.retry(ids: ["g-dead", "a-dead"], configuredAccounts: ["acme"])
        #expect(named.text == """
            retried a-dead
            skipped g-dead (its account globex is not in the config: the daemon would not send it)
            1 event(s) moved back to pending
            """)
        #expect(!named.allFound)
        #expect(try await outbox.record(id: "g-dead")?.state == .dead)
        try await outbox.pool.write { db in
            try db.execute(sql: "UPDATE events SET state = 'in_flight', lease_expires_at = 1 WHERE id = 'a-dead'")
            try db.execute(sql: "UPDATE events SET state = 'dead', lease_expires_at = NULL, next_attempt_at = NULL WHERE id = 'a-dead'")
        }
        let all = try await admin.retry(ids: nil, configuredAccounts: ["acme"])
        #expect(all.text == """
            retried a-dead
            1 event(s) moved back to pending
            1 dead event(s) of account(s) the config does not name (globex) were left dead: the daemon sends nothing for \
            an account it does not know. Configure the account again to retry them, or erase their personal data with \
            `purge --account ID --older-than 0s`
            """)
        #expect(all.allFound)
        #expect(try await outbox.record(id: "g-dead")?.state == .dead)
        // Configured again: retried as any other.
        #expect(try await admin.retry(ids: nil, configuredAccounts: ["acme", "globex"]).text == "retried g-dead\n1 event(s) moved back to pending")
    }

    /// Found from outside: `events retry --all-dead` beside another retry (or a purge) exited 1,
    /// with every event the other command had taken "skipped". Here another retry takes the
    /// last dead event between this command's two transactions.
    @Test func retryAllDeadLeavesAnEventChangedMeanwhileAndSucceeds() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        let count = Outbox.maintenanceChunk + 1
        for i in 0..<count {
            _ = try await outbox.accept(OutboxAccountsTests.submission(
                String(format: "e%04d", i), account: "acme", body: #"{"first_name":"Ada"}"#, partnerID: "c\(i)",
                at: Self.start.addingTimeInterval(Double(i) / 1000)), maxBacklog: 10_000)
        }
        try await outbox.pool.write { db in try db.execute(sql: "UPDATE events SET state = 'dead', next_attempt_at = NULL") }
        let admin = AdminCommands(outbox: outbox, now: { Self.now })
        let interloper = Mutex(false)
        let pause = MaintenancePause { _ in
            guard interloper.withLock({ ran in defer { ran = true }; return !ran }) else { return }
            _ = try await outbox.retry(ids: nil, now: Self.now)  // another `events retry --all-dead`
        }
        let result = try await admin.retry(ids: nil, pause: pause)
        #expect(result.allFound)
        #expect(result.text.hasSuffix("""
            1 event(s) found dead were no longer dead with their payload by their turn (another command retried, purged or erased them meanwhile): left as they are
            \(Outbox.maintenanceChunk) event(s) moved back to pending
            """), "\(result.text.suffix(300))")
        #expect(!result.text.contains("skipped"))
        let pending = try await outbox.pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM events WHERE state = 'pending'") }
        #expect(pending == count)
        // Named ids are still the operator's own: one not retried is a failure.
        let named = try await admin.retry(ids: ["e0000"])
        #expect(!named.allFound)
        #expect(named.text.hasPrefix("skipped e0000 (unknown, not dead, or its payload was erased)"))
    }

    /// Found from outside: `events retry` right after a timeout made an event dead resent it at
    /// once, while the request given up could still be at work at the partner, which created
    /// the candidate twice. The retry keeps the event's window (`partner_open_until`) and says so.
    @Test func aRetryWaitsForTheLastRequestsWindow() async throws {
        let (dir, outbox, admin) = try await Self.populated()
        defer { dir.cleanup() }
        let open = try await Self.holdOpen(outbox, "a-dead")
        let result = try await admin.retry(ids: ["a-dead", "g-dead"])
        #expect(result.allFound)
        #expect(result.text == """
            retried a-dead (sent at \(Timestamp.string(open)) at the earliest: its last request, given up without an answer, \
            may still be at work at the partner until then)
            retried g-dead
            2 event(s) moved back to pending
            """, "\(result.text)")
        #expect(try await outbox.record(id: "a-dead")?.nextAttemptAt == open)
        // acme's other pending event (a-wait, another candidate) goes; a-dead waits for its window.
        #expect(try await Self.claimAcme(outbox, at: Self.now)?.id == "a-wait")
        #expect(try await Self.claimAcme(outbox, at: Self.now.addingTimeInterval(29)) == nil)
        #expect(try await Self.claimAcme(outbox, at: open)?.id == "a-dead")
    }

    /// The claim holds an event whose own window is open even when it is due (any path that made
    /// it due early: the admin command's retry before the fix above, an outbox edited by hand).
    @Test func theClaimHoldsAnEventWhoseOwnWindowIsOpen() async throws {
        let (dir, outbox, _) = try await Self.populated()
        defer { dir.cleanup() }
        let open = try await Self.holdOpen(outbox, "a-wait")
        #expect(try await outbox.nextDueAt(accounts: ["acme"], now: Self.now) == open)
        #expect(try await Self.claimAcme(outbox, at: Self.now) == nil)
        #expect(try await Self.claimAcme(outbox, at: open)?.id == "a-wait")
    }

    /// Found from outside: `events retry ID ID` retried it, then said "skipped" and exited 1.
    @Test func anIdGivenTwiceIsRetriedOnce() async throws {
        let (dir, outbox, admin) = try await Self.populated()
        defer { dir.cleanup() }
        let result = try await admin.retry(ids: ["g-dead", "g-dead"])
        #expect(result.text == "retried g-dead\n1 event(s) moved back to pending", "\(result.text)")
        #expect(result.allFound)
        #expect(try await outbox.record(id: "g-dead")?.state == .pending)
    }

    @Test func purgeKeepsToTheAccount() async throws {
        let (dir, outbox, admin) = try await Self.populated()
        defer { dir.cleanup() }
        func payloads() async throws -> [String: Bool] {
            try await outbox.pool.read { db in
                Dictionary(uniqueKeysWithValues: try Row.fetchAll(db, sql: "SELECT id, EXISTS (SELECT 1 FROM payloads p WHERE p.event_id = events.id) AS kept FROM events").map {
                    ($0["id"] as String, $0["kept"] as Bool)
                })
            }
        }
        let globex = try await admin.purge(olderThanSeconds: 0, recordRetentionDays: 365, account: "globex")
        #expect(globex == "erased the payload of 1 terminal event(s); deleted 0 expired record(s) in account globex")
        #expect(try await payloads() == ["a-dead": true, "a-done": true, "a-wait": true, "g-dead": false, "g-wait": true])
        #expect(try await outbox.record(id: "g-dead")?.lastError == "invalid_email")
        #expect(try await outbox.record(id: "a-dead")?.lastError == "position_not_found: no such position")
        // Expired records too: only acme's are deleted.
        let acme = try await admin.purge(olderThanSeconds: 0, recordRetentionDays: 0, account: "acme")
        #expect(acme == "erased the payload of 2 terminal event(s); deleted 2 expired record(s) in account acme")
        #expect(try await outbox.list(state: nil, limit: 50).map(\.id).sorted() == ["a-wait", "g-dead", "g-wait"])
    }

    @Test func forgetErasesEveryAccountUnlessOneIsNamed() async throws {
        let (dir, outbox, admin) = try await Self.populated()
        defer { dir.cleanup() }
        let globex = try await admin.forget(partnerCandidateID: "X", account: "globex")
        #expect(globex == """
            erased the personal data (payload and partner answer) of 2 event(s) in account globex:
              g-dead
              g-wait
            1 undelivered event(s) can no longer be sent and are now dead (last_error: erased)
            """)
        #expect(try await outbox.record(id: "a-dead")?.lastError == "position_not_found: no such position")
        #expect(try await admin.forget(partnerCandidateID: "Y", account: "globex") == "no event has partner_candidate_id Y in account globex")
        // Without --account: all of them (the globex ones again, harmlessly).
        let all = try await admin.forget(partnerCandidateID: "X")
        #expect(all.hasPrefix("erased the personal data (payload and partner answer) of 4 event(s) in every account:\n  a-dead\n  a-done\n  g-dead\n  g-wait"))
        let kept = try await outbox.pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM payloads") }
        #expect(kept == 1)  // a-wait: another candidate
        #expect(try await outbox.record(id: "a-dead")?.lastError == "erased")  // its history keeps position_not_found
    }

    /// Found from outside: a `forget` while the candidate's event was in flight said nothing of
    /// it, and the event was delivered seconds later; nor did it say that the partner holds the
    /// delivered ones. The operator of an erasure reads both now.
    @Test func forgetSaysWhatThePartnerMayHold() async throws {
        let (dir, outbox, admin) = try await Self.populated()
        defer { dir.cleanup() }
        // g-wait (globex, X) claimed: in flight.
        let claimed = try await outbox.claimNext(accounts: ["globex"], now: Self.now, leaseSeconds: 60, maxAgeSeconds: 1000)
        #expect(claimed?.id == "g-wait")
        let text = try await admin.forget(partnerCandidateID: "X")
        #expect(text.contains("""

            1 event(s) were being sent to the partner: a request already out may still create the candidate there \
            (`events show ID` gives its outcome within partner.timeout_seconds: delivered or linked with its candidate_uid, \
            or dead `erased`, which may also mean the request timed out or failed after creating it: check the partner)
            1 event(s) had been delivered or linked: the partner holds this candidate (candidate_uid in `events show ID`); erase it there too
            """), "\(text)")
        #expect(!text.contains("can no longer be sent"))  // none was pending
        // Nothing at the partner, nothing said.
        let other = try await admin.forget(partnerCandidateID: "Y")
        #expect(!other.contains("being sent") && !other.contains("partner holds"), "\(other)")
    }

    /// A sender's value reached an operator's terminal raw through `events list`: U+009B made
    /// an escape sequence of it (found from outside).
    @Test func tablesShowControlCharactersAsEscapes() {
        #expect(AdminCommands.printable("plain é 東京") == "plain é 東京")
        #expect(AdminCommands.printable("a\u{9B}2Jb\u{85}c\u{1B}[31m\u{202E}") == #"a\u{9B}2Jb\u{85}c\u{1B}[31m\u{202E}"#)
        #expect(AdminCommands.printable("id\u{200E}\u{61C}\u{FEFF}") == #"id\u{200E}\u{61C}\u{FEFF}"#)
        let table = AdminCommands.table(header: ["A"], rows: [["x\u{9B}31m"]])
        #expect(!table.unicodeScalars.contains { $0.value == 0x9B })
    }

}
