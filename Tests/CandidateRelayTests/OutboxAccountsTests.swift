import CandidateRelayTesting
import Foundation
import GRDB
import Testing
@testable import CandidateRelay

/// The outbox's per-account rules (CONTRACT section 8): idempotency, "one in flight", claims,
/// the backlog limit, wake-ups, request history and status are each an account's own.
@Suite struct OutboxAccountsTests {
    static let start = Date(timeIntervalSince1970: 1_800_000_000)

    static func submission(_ id: String, account: String, key: String? = nil, body: String = "{}", position: String = "P1",
                           partnerID: String = "C1", at: Date = start) -> Submission {
        Submission(id: id, account: account, idempotencyKey: key, bodySHA256: String(body.hashValue), positionUID: position,
                   partnerCandidateID: partnerID, payload: Data(body.utf8), receivedAt: at)
    }

    static func claim(_ outbox: Outbox, _ accounts: [String], at now: Date = start.addingTimeInterval(1)) async throws -> ClaimedEvent? {
        try await outbox.claimNext(accounts: accounts, now: now, leaseSeconds: 60, maxAgeSeconds: 1000)
    }

    @Test func idempotencyKeysArePerAccount() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        guard case .created(let acme) = try await outbox.accept(Self.submission("a1", account: "acme", key: "k", body: "x"), maxBacklog: 10),
              case .created(let globex) = try await outbox.accept(Self.submission("g1", account: "globex", key: "k", body: "y"), maxBacklog: 10)
        else {
            Issue.record("the same key in a second account was not a new event")
            return
        }
        #expect(acme.id == "a1" && acme.account == "acme")
        #expect(globex.id == "g1" && globex.account == "globex")
        // A replay within one account is that account's event, not the other's.
        guard case .duplicate(let replay) = try await outbox.accept(Self.submission("a2", account: "acme", key: "k", body: "x"), maxBacklog: 10) else {
            Issue.record("replay in acme not a duplicate")
            return
        }
        #expect(replay.id == "a1")
        let reused = await #expect(throws: OutboxError.self) {
            try await outbox.accept(Self.submission("g2", account: "globex", key: "k", body: "x"), maxBacklog: 10)
        }
        guard case .idempotencyKeyReused(existingID: "g1")? = reused else {
            Issue.record("another body under globex's key: \(String(describing: reused))")
            return
        }
        let status = try await outbox.status(now: Self.start)
        #expect(status.counts[.pending] == 2)
        #expect(status.accounts["acme"]?.counts[.pending] == 1)
        #expect(status.accounts["globex"]?.counts[.pending] == 1)
    }

    /// A reload removing an account closes it, then counts: whatever was committed before is
    /// counted, whatever comes after is refused, so nothing is stored for an account the reload
    /// then removes (counting before closing let a webhook in between: stored, never delivered).
    @Test func aClosedAccountIsCountedThenRefusesEvents() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(Self.submission("a1", account: "acme", key: "k1", partnerID: "C1"), maxBacklog: 10)
        _ = try await outbox.accept(Self.submission("a2", account: "acme", partnerID: "C2"), maxBacklog: 10)
        _ = try #require(try await Self.claim(outbox, ["acme"]))
        let counts = try await outbox.closeAccounts(["acme", "initech"])
        #expect(counts["acme"]?.pending == 1 && counts["acme"]?.inFlight == 1)
        #expect(counts["initech"]?.pending == 0 && counts["initech"]?.inFlight == 0)
        let refused = await #expect(throws: OutboxError.self) {
            try await outbox.accept(Self.submission("a3", account: "acme", partnerID: "C3"), maxBacklog: 10)
        }
        guard case .accountClosed? = refused else {
            Issue.record("a closed account's submission: \(String(describing: refused))")
            return
        }
        // A replay adds nothing: answered as always.
        guard case .duplicate(let replay) = try await outbox.accept(Self.submission("a1-again", account: "acme", key: "k1", partnerID: "C1"), maxBacklog: 10),
              replay.id == "a1" else {
            Issue.record("a replay for a closed account was not answered with its event")
            return
        }
        // Other accounts are untouched, and an account opened again takes events.
        guard case .created = try await outbox.accept(Self.submission("g1", account: "globex"), maxBacklog: 10) else {
            Issue.record("globex refused")
            return
        }
        outbox.openAccounts(["acme"])
        guard case .created = try await outbox.accept(Self.submission("a4", account: "acme", partnerID: "C4"), maxBacklog: 10) else {
            Issue.record("acme refused after it was opened again")
            return
        }
        #expect(try await outbox.record(id: "a3") == nil)
    }

    @Test func oneInFlightPerAccountAndNaturalKey() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        // The same (position_uid, partner_candidate_id) in two accounts, twice in acme.
        _ = try await outbox.accept(Self.submission("a1", account: "acme", at: Self.start), maxBacklog: 10)
        _ = try await outbox.accept(Self.submission("a2", account: "acme", at: Self.start.addingTimeInterval(0.001)), maxBacklog: 10)
        _ = try await outbox.accept(Self.submission("g1", account: "globex", at: Self.start.addingTimeInterval(0.002)), maxBacklog: 10)
        let a1 = try #require(try await Self.claim(outbox, ["acme"]))
        #expect(a1.id == "a1")
        // Another account's event for the same natural key goes out at the same time...
        #expect(try await Self.claim(outbox, ["globex"])?.id == "g1")
        // ...but not a second one of the same account.
        #expect(try await Self.claim(outbox, ["acme"]) == nil)
        #expect(try await outbox.nextDueAt(accounts: ["acme"], now: Self.start) == nil)
        try await outbox.complete(a1, outcome: .delivered(candidateUID: "u1", status: 201, summary: nil, fullResponse: nil),
                                  now: Self.start.addingTimeInterval(1), latencyMs: 1)
        #expect(try await Self.claim(outbox, ["acme"])?.id == "a2")
    }

    @Test func claimTakesTheFirstAccountInTheGivenOrderThatHasADueEvent() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(Self.submission("a1", account: "acme", partnerID: "A1", at: Self.start), maxBacklog: 10)
        _ = try await outbox.accept(Self.submission("g1", account: "globex", partnerID: "G1", at: Self.start.addingTimeInterval(0.5)), maxBacklog: 10)
        // Not due until start + 10.
        _ = try await outbox.accept(Self.submission("i1", account: "initech", partnerID: "I1", at: Self.start.addingTimeInterval(10)), maxBacklog: 10)
        // globex first although acme's event is older; an account with nothing due is passed over.
        #expect(try await Self.claim(outbox, ["nobody", "initech", "globex", "acme"])?.id == "g1")
        #expect(try await Self.claim(outbox, ["initech", "globex", "acme"])?.id == "a1")
        #expect(try await Self.claim(outbox, ["initech", "globex", "acme"]) == nil)
        // An account left out of the list is never claimed from.
        #expect(try await Self.claim(outbox, ["acme", "globex"], at: Self.start.addingTimeInterval(20)) == nil)
        #expect(try await Self.claim(outbox, ["initech"], at: Self.start.addingTimeInterval(20))?.id == "i1")
    }

    @Test func maxBacklogIsPerAccount() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(Self.submission("a1", account: "acme", key: "k1"), maxBacklog: 2)
        _ = try await outbox.accept(Self.submission("a2", account: "acme"), maxBacklog: 2)
        let full = await #expect(throws: OutboxError.self) {
            try await outbox.accept(Self.submission("a3", account: "acme"), maxBacklog: 2)
        }
        guard case .backlogFull(2)? = full else {
            Issue.record("acme's third event: \(String(describing: full))")
            return
        }
        // acme being full refuses nothing of globex's...
        guard case .created = try await outbox.accept(Self.submission("g1", account: "globex"), maxBacklog: 2) else {
            Issue.record("globex refused because acme is full")
            return
        }
        // ...and a replay in the full account is still answered.
        guard case .duplicate(let replay) = try await outbox.accept(Self.submission("a4", account: "acme", key: "k1"), maxBacklog: 2) else {
            Issue.record("replay refused")
            return
        }
        #expect(replay.id == "a1")
        // A delivery makes room in acme only.
        let claimed = try #require(try await Self.claim(outbox, ["acme"]))
        try await outbox.complete(claimed, outcome: .delivered(candidateUID: "u", status: 201, summary: nil, fullResponse: nil),
                                  now: Self.start.addingTimeInterval(1), latencyMs: 1)
        guard case .created = try await outbox.accept(Self.submission("a5", account: "acme", at: Self.start.addingTimeInterval(5)), maxBacklog: 2) else {
            Issue.record("acme still refused after a delivery")
            return
        }
    }

    @Test func nextDueAtLooksOnlyAtTheGivenAccounts() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        let early = Self.start
        let late = Self.start.addingTimeInterval(30)
        _ = try await outbox.accept(Self.submission("g1", account: "globex", at: early), maxBacklog: 10)
        _ = try await outbox.accept(Self.submission("a1", account: "acme", at: late), maxBacklog: 10)
        #expect(try await outbox.nextDueAt(accounts: ["acme"], now: Self.start) == late)
        #expect(try await outbox.nextDueAt(accounts: ["globex"], now: Self.start) == early)
        #expect(try await outbox.nextDueAt(accounts: ["acme", "globex"], now: Self.start) == early)
        #expect(try await outbox.nextDueAt(accounts: ["nobody"], now: Self.start) == nil)
        #expect(try await outbox.nextDueAt(accounts: [], now: Self.start) == nil)
    }

    /// An account the claim found with nothing due is skipped (no query) until its earliest
    /// pending event is due, at most a second; this process's own writes clear the mark at once.
    /// With 500 accounts and traffic on 5, asking about each one per claim cost ~5 ms a delivery.
    @Test func aClaimSkipsAnAccountWithNothingDueUntilItMayHaveSome() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        let now = Self.start.addingTimeInterval(1)
        // acme: one event, retried in 10 s; globex: nothing.
        _ = try await outbox.accept(Self.submission("a1", account: "acme"), maxBacklog: 10)
        let first = try #require(try await Self.claim(outbox, ["acme"], at: now))
        try await outbox.complete(first, outcome: .retry(at: now.addingTimeInterval(10), status: 503, error: "http_503"), now: now, latencyMs: 1)
        #expect(try await Self.claim(outbox, ["acme", "globex"], at: now) == nil)
        #expect(outbox.quiet.accounts(at: now) == ["acme", "globex"])
        // The idle wait looks again when the marks end (a second), without a query.
        #expect(try await outbox.nextDueAt(accounts: ["acme", "globex"], now: now) == now.addingTimeInterval(1))

        // An event written by another process (`events retry` from the CLI) is not seen while
        // the mark lasts, and is claimed once it ends, a second later.
        try await outbox.pool.write { db in
            try db.execute(sql: """
                INSERT INTO events (id, account, body_sha256, state, attempts, position_uid, partner_candidate_id,
                  received_at, budget_started_at, updated_at, next_attempt_at)
                VALUES ('g0', 'globex', 'x', 'pending', 0, 'P1', 'G0', ?, ?, ?, ?)
                """, arguments: [now.millis, now.millis, now.millis, now.millis])
            try db.execute(sql: "INSERT INTO payloads (event_id, body) VALUES ('g0', x'7B7D')")
        }
        #expect(try await Self.claim(outbox, ["globex"], at: now.addingTimeInterval(0.5)) == nil)
        let late = try #require(try await Self.claim(outbox, ["globex"], at: now.addingTimeInterval(1.01)))
        #expect(late.id == "g0")

        // This process's own new event is claimed at once.
        #expect(try await Self.claim(outbox, ["globex"], at: now.addingTimeInterval(1.1)) == nil)
        #expect(outbox.quiet.isQuiet("globex", at: now.addingTimeInterval(1.1)))
        _ = try await outbox.accept(Self.submission("g1", account: "globex", partnerID: "G1", at: now.addingTimeInterval(1.1)), maxBacklog: 10)
        #expect(try await Self.claim(outbox, ["globex"], at: now.addingTimeInterval(1.1))?.id == "g1")

        // An outcome clears its account's mark: a hand-back is due at once.
        let acme = try #require(try await Self.claim(outbox, ["acme"], at: now.addingTimeInterval(11)))
        #expect(try await Self.claim(outbox, ["acme"], at: now.addingTimeInterval(11)) == nil)
        #expect(outbox.quiet.isQuiet("acme", at: now.addingTimeInterval(11)))
        try await outbox.complete(acme, outcome: .unsent, now: now.addingTimeInterval(11), latencyMs: nil)
        #expect(try await Self.claim(outbox, ["acme"], at: now.addingTimeInterval(11))?.id == "a1")
    }

    /// Marks set within one half second end together, at most a second later: marks of a fixed
    /// length, set as each account's last event went out, ended one by one ever after, and the
    /// idle workers woke for each (300 accounts: ~300 looks a second, found from outside).
    @Test func quietMarksSetWithinAHalfSecondEndTogether() {
        let quiet = QuietAccounts()
        let base = Self.start  // a whole second
        quiet.note("acme", earliest: nil, now: base.addingTimeInterval(0.05))
        quiet.note("globex", earliest: nil, now: base.addingTimeInterval(0.45))
        quiet.note("initech", earliest: base.addingTimeInterval(0.7), now: base.addingTimeInterval(0.45))
        quiet.note("hooli", earliest: nil, now: base.addingTimeInterval(0.55))
        #expect(quiet.quietUntil("acme", at: base.addingTimeInterval(0.6)) == base.addingTimeInterval(1))
        #expect(quiet.quietUntil("globex", at: base.addingTimeInterval(0.6)) == base.addingTimeInterval(1))
        #expect(quiet.quietUntil("hooli", at: base.addingTimeInterval(0.6)) == base.addingTimeInterval(1.5))
        // An earlier due event still ends the mark sooner.
        #expect(quiet.quietUntil("initech", at: base.addingTimeInterval(0.6)) == base.addingTimeInterval(0.7))
        #expect(quiet.accounts(at: base.addingTimeInterval(1)) == ["hooli"])
    }

    /// A due event held back by one in flight for its natural key marks nothing: it waits for
    /// that answer, not for time, and is claimed as soon as the answer is recorded.
    @Test func aDueEventBehindOneInFlightIsNeverQuiet() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(Self.submission("a1", account: "acme", partnerID: "C1"), maxBacklog: 10)
        _ = try await outbox.accept(Self.submission("a2", account: "acme", partnerID: "C1"), maxBacklog: 10)
        let first = try #require(try await Self.claim(outbox, ["acme"]))
        #expect(try await Self.claim(outbox, ["acme"]) == nil)
        #expect(!outbox.quiet.isQuiet("acme", at: Self.start.addingTimeInterval(1)))
        try await outbox.complete(first, outcome: .delivered(candidateUID: "u", status: 201, summary: nil, fullResponse: nil),
                                  now: Self.start.addingTimeInterval(1), latencyMs: 1)
        #expect(try await Self.claim(outbox, ["acme"])?.id == "a2")
    }

    @Test func requestTimesAreGroupedByAccount() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(Self.submission("a1", account: "acme", partnerID: "A1"), maxBacklog: 10)
        _ = try await outbox.accept(Self.submission("a2", account: "acme", partnerID: "A2"), maxBacklog: 10)
        _ = try await outbox.accept(Self.submission("g1", account: "globex", partnerID: "G1"), maxBacklog: 10)
        let times = [Self.start.addingTimeInterval(1), Self.start.addingTimeInterval(2), Self.start.addingTimeInterval(3)]
        for (accounts, at) in zip([["acme"], ["globex"], ["acme"]], times) {
            let claimed = try #require(try await Self.claim(outbox, accounts, at: at))
            try await outbox.complete(claimed, outcome: .retry(at: at.addingTimeInterval(100), status: 503, error: "http_503"),
                                      now: at, latencyMs: 5)
        }
        #expect(try await outbox.requestTimes(since: Self.start) == ["acme": [times[0], times[2]], "globex": [times[1]]])
        #expect(try await outbox.requestTimes(since: times[1].addingTimeInterval(0.5)) == ["acme": [times[2]]])
    }

    @Test func statusIsGivenPerAccountAndForOneAccount() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        _ = try await outbox.accept(Self.submission("a1", account: "acme", partnerID: "A1", at: Self.start), maxBacklog: 10)
        _ = try await outbox.accept(Self.submission("a2", account: "acme", partnerID: "A2", at: Self.start.addingTimeInterval(4)), maxBacklog: 10)
        _ = try await outbox.accept(Self.submission("g1", account: "globex", partnerID: "G1", at: Self.start.addingTimeInterval(2)), maxBacklog: 10)
        let delivering = Self.start.addingTimeInterval(5)
        let claimed = try #require(try await Self.claim(outbox, ["globex"], at: delivering))
        try await outbox.complete(claimed, outcome: .delivered(candidateUID: "u", status: 201, summary: nil, fullResponse: nil),
                                  now: delivering, latencyMs: 1)
        _ = try #require(try await Self.claim(outbox, ["acme"], at: delivering))  // a1 now in flight
        let now = Self.start.addingTimeInterval(10)

        let all = try await outbox.status(now: now)
        #expect(all.counts == [.pending: 1, .inFlight: 1, .delivered: 1])
        #expect(all.oldestPendingAgeSeconds == 10)
        #expect(all.lastDeliveryAt == delivering)
        #expect(all.accounts == [
            "acme": AccountStatus(counts: [.pending: 1, .inFlight: 1], oldestPendingAgeSeconds: 10),
            "globex": AccountStatus(counts: [.delivered: 1], oldestPendingAgeSeconds: nil),
        ])

        let acme = try await outbox.status(now: now, account: "acme")
        #expect(acme.counts == [.pending: 1, .inFlight: 1])
        #expect(acme.lastDeliveryAt == nil)
        #expect(Array(acme.accounts.keys) == ["acme"])
        let globex = try await outbox.status(now: now, account: "globex")
        #expect(globex.counts == [.delivered: 1])
        #expect(globex.oldestPendingAgeSeconds == nil)
        #expect(globex.lastDeliveryAt == delivering)
        // An account without events (configured or not): zeros, and still named.
        let nobody = try await outbox.status(now: now, account: "nobody")
        #expect(nobody.counts.isEmpty)
        #expect(nobody.accounts == ["nobody": AccountStatus()])
    }
}
