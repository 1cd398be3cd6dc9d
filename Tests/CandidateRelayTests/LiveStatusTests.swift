import CandidateRelayTesting
import Foundation
import GRDB
import Testing
@testable import CandidateRelay

/// `liveStatus` (the daemon's heartbeat, `systemctl status` and `/metrics`) keeps the settled
/// states' counts instead of scanning them: it must always say what `status` (the full count)
/// says, whatever this process settled, retried, erased or deleted since the last recount.
@Suite struct LiveStatusTests {
    static let start = OutboxAccountsTests.start

    static func expectSame(_ outbox: Outbox, _ now: Date, _ step: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let full = try await outbox.status(now: now)
        let live = try await outbox.liveStatus(now: now)
        #expect(live == full, "\(step): live \(live.counts) \(live.accounts) against full \(full.counts) \(full.accounts)",
                sourceLocation: sourceLocation)
    }

    /// Stores `count` events in account `acme` (ids `e0`..., partner ids `C0`...).
    static func acceptInAcme(_ outbox: Outbox, count: Int) async throws {
        for n in 0..<count {
            _ = try await outbox.accept(OutboxAccountsTests.submission("e\(n)", account: "acme", partnerID: "C\(n)"), maxBacklog: 1000)
        }
    }

    @Test func liveCountsFollowEveryChangeOfTheSettledStates() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        let now = Self.start.addingTimeInterval(1)
        for n in 0..<8 {
            let account = n.isMultiple(of: 2) ? "acme" : "globex"
            _ = try await outbox.accept(OutboxAccountsTests.submission("e\(n)", account: account, partnerID: "C\(n)"), maxBacklog: 100)
        }
        try await Self.expectSame(outbox, now, "before any recount")  // the first live status counts them itself
        try await outbox.recountSettled()
        let outcomes: [RecordedOutcome] = [
            .delivered(candidateUID: "u1", status: 201, summary: nil, fullResponse: nil),
            .linked(candidateUID: "u2", status: 409, error: "candidate_post_conflict"),
            .dead(status: 422, error: "invalid"),
            .retry(at: now, status: 503, error: "unavailable"),
            .delivered(candidateUID: "u3", status: 201, summary: nil, fullResponse: nil),
        ]
        for outcome in outcomes {
            let event = try #require(try await OutboxAccountsTests.claim(outbox, ["acme", "globex"], at: now))
            try await Self.expectSame(outbox, now, "claimed")
            #expect(try await outbox.complete(event, outcome: outcome, now: now, latencyMs: 5))
            try await Self.expectSame(outbox, now, "after \(outcome.name)")
        }
        // A late outcome for a lease taken back changes nothing, and is not counted.
        let late = try #require(try await OutboxAccountsTests.claim(outbox, ["acme", "globex"], at: now))
        try await outbox.recoverLeases(expiredBefore: nil, now: now)
        #expect(try await !outbox.complete(late, outcome: .delivered(candidateUID: "x", status: 201, summary: nil, fullResponse: nil),
                                           now: now, latencyMs: 1))
        try await Self.expectSame(outbox, now, "stale outcome")
        // Dead at claim (its age budget spent): settled without a request.
        let expired = try await outbox.claimNextDue(accounts: ["acme", "globex"], now: now.addingTimeInterval(10_000), leaseSeconds: 60,
                                                    maxAgeSeconds: 1, maxAttempts: 5)
        #expect(!expired.expired.isEmpty)
        try await Self.expectSame(outbox, now, "expired at claim")
        // Changes made outside delivery.
        #expect(try await !outbox.retry(ids: nil, now: now).retried.isEmpty)
        try await Self.expectSame(outbox, now, "retry")
        #expect(try await outbox.forget(partnerCandidateID: "C7", now: now).events.count == 1)
        try await Self.expectSame(outbox, now, "forget")
        #expect(try await outbox.prune(payloadBefore: now.addingTimeInterval(1), recordBefore: now.addingTimeInterval(1),
                                       includeDead: true, now: now).deleted > 0)
        try await Self.expectSame(outbox, now, "prune")
    }

    /// Found from outside: the last delivery was `MAX(at)` over the attempts each time, which
    /// walked every attempt since the last delivery: during a day's outage each `/metrics`
    /// scrape took ~0.9 s. It is read once, then moved by this process's own deliveries (here
    /// the attempts are deleted behind its back to show where it comes from), and read again
    /// after a deletion (`invalidateSettled`).
    @Test func theLastDeliveryIsReadOnceThenFollowed() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        let now = Self.start.addingTimeInterval(1)
        try await Self.acceptInAcme(outbox, count: 2)
        #expect(try await outbox.liveStatus(now: now).lastDeliveryAt == nil)
        func deliver(at time: Date) async throws {
            let event = try #require(try await OutboxAccountsTests.claim(outbox, ["acme"], at: time))
            #expect(try await outbox.complete(event, outcome: .delivered(candidateUID: "u", status: 201, summary: nil, fullResponse: nil),
                                              now: time, latencyMs: 1))
            try await outbox.pool.write { db in try db.execute(sql: "DELETE FROM attempts") }
        }
        try await deliver(at: now.addingTimeInterval(1))
        #expect(try await outbox.liveStatus(now: now).lastDeliveryAt == Date(millis: now.addingTimeInterval(1).millis))
        try await deliver(at: now.addingTimeInterval(2))
        #expect(try await outbox.liveStatus(now: now).lastDeliveryAt == Date(millis: now.addingTimeInterval(2).millis))
        outbox.invalidateSettled()
        #expect(try await outbox.liveStatus(now: now).lastDeliveryAt == nil)  // read again: the attempts are gone
    }

    /// Found from outside: another process's change (an admin command) showed in the live
    /// counts only at the next heartbeat's recount (60 s by default): retried events counted
    /// both dead and pending. `noticeOtherWriters` sees another process's commit, and only that.
    @Test func anotherProcesssChangeIsNoticedAndOwnWritesAreNot() async throws {
        let (dir, daemon) = try OutboxTests.open()
        defer { dir.cleanup() }
        let now = Self.start.addingTimeInterval(1)
        try await Self.acceptInAcme(daemon, count: 3)
        let event = try #require(try await OutboxAccountsTests.claim(daemon, ["acme"], at: now))
        #expect(try await daemon.complete(event, outcome: .dead(status: 422, error: "invalid"), now: now, latencyMs: 5))
        #expect(await !daemon.noticeOtherWriters())  // the first look only notes where it stands
        try await Self.expectSame(daemon, now, "before")
        // The daemon's own writes are not another's.
        _ = try await daemon.accept(OutboxAccountsTests.submission("e9", account: "acme", partnerID: "C9"), maxBacklog: 100)
        #expect(await !daemon.noticeOtherWriters())
        // An admin command: another connection (another process's, as `events retry` has).
        let admin = try Outbox(path: dir.file("o.sqlite3"))
        #expect(try await admin.retry(ids: nil, now: now).retried.count == 1)
        #expect(await daemon.noticeOtherWriters())
        try await Self.expectSame(daemon, now, "after another process's retry")
        #expect(await !daemon.noticeOtherWriters())
    }

    /// Outcomes committed while a recount runs are counted once: in its snapshot or after it.
    @Test func aRecountRacingOutcomesCountsEachOnce() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        let now = Self.start.addingTimeInterval(1)
        try await Self.acceptInAcme(outbox, count: 200)
        try await outbox.recountSettled()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<4 {
                group.addTask {
                    while let event = try await OutboxAccountsTests.claim(outbox, ["acme"], at: now) {
                        try await outbox.complete(event, outcome: .delivered(candidateUID: "u", status: 201, summary: nil, fullResponse: nil),
                                                  now: now, latencyMs: 1)
                    }
                }
            }
            group.addTask {
                for _ in 0..<20 {
                    try await outbox.recountSettled()
                    try await Task.sleep(for: .milliseconds(2))
                }
            }
            try await group.waitForAll()
        }
        try await Self.expectSame(outbox, now, "after the race")
        #expect(try await outbox.liveStatus(now: now).counts[.delivered] == 200)
        // A recount asked for while an outcome's commit is under way, then still: exact each time.
        for n in 0..<30 {
            _ = try await outbox.accept(OutboxAccountsTests.submission("f\(n)", account: "acme", partnerID: "F\(n)"), maxBacklog: 1000)
            let event = try #require(try await OutboxAccountsTests.claim(outbox, ["acme"], at: now))
            let outcome = Task {
                try await outbox.complete(event, outcome: .dead(status: 422, error: "invalid"), now: now, latencyMs: 1)
            }
            try await Task.sleep(for: .microseconds(200))
            try await outbox.recountSettled()
            #expect(try await outcome.value)
            try await Self.expectSame(outbox, now, "recount during outcome \(n)")
        }
    }

    /// The unsettled counts and oldest ages, read off the index one account at a time, against
    /// the plain `GROUP BY` over the events' rows they replace: the same, per account and in one.
    @Test func unsettledCountsFromTheIndexMatchTheRows() async throws {
        let (dir, outbox) = try OutboxTests.open()
        defer { dir.cleanup() }
        let now = Self.start.addingTimeInterval(200)
        // Receipt times not in the order of arrival, accounts that sort before and after each other.
        let accounts = ["acme", "Zeta", "globex", "a"]
        for n in 0..<120 {
            let account = accounts[n % accounts.count]
            let at = Self.start.addingTimeInterval(Double((n * 37) % 101))
            _ = try await outbox.accept(OutboxAccountsTests.submission(EventID.generate(now: at), account: account,
                                                                       partnerID: "C\(n)", at: at), maxBacklog: 1000)
        }
        for account in ["acme", "globex"] {
            for _ in 0..<7 {
                let event = try #require(try await OutboxAccountsTests.claim(outbox, [account], at: now))
                if account == "globex" {
                    try await outbox.complete(event, outcome: .delivered(candidateUID: "u", status: 201, summary: nil, fullResponse: nil),
                                              now: now, latencyMs: 1)
                }
            }
        }
        try await outbox.pool.read { db in
            var expected = OutboxStatus(counts: [:])
            for row in try Row.fetchAll(db, sql: """
                    SELECT account, state, COUNT(*) AS n, MIN(received_at) AS oldest FROM events
                    WHERE state IN ('pending', 'in_flight') GROUP BY account, state
                    """) {
                let state = try #require(EventState(rawValue: row["state"]))
                let account: String = row["account"]
                let oldest = now.timeIntervalSince(Date(millis: row["oldest"]))
                expected.counts[state, default: 0] += row["n"] as Int
                expected.accounts[account, default: AccountStatus()].counts[state] = row["n"]
                expected.accounts[account]!.oldestPendingAgeSeconds = max(expected.accounts[account]!.oldestPendingAgeSeconds ?? 0, oldest)
                expected.oldestPendingAgeSeconds = max(expected.oldestPendingAgeSeconds ?? 0, oldest)
            }
            var found = try Outbox.unsettledStatus(db, now: now, account: nil)
            found.lastDeliveryAt = nil
            #expect(found == expected)
            #expect(found.counts[.inFlight] == 7 && found.accounts.count == 4)
            for account in accounts {
                let one = try Outbox.unsettledStatus(db, now: now, account: account)
                #expect(one.accounts == expected.accounts.filter { $0.key == account })
            }
        }
    }
}
