import Foundation
import GRDB
import Synchronization

/// How many events each account has in the settled states (delivered, linked, dead), kept so
/// that the daemon's status does not count them again and again.
///
/// `status` counts every event: a scan of the whole `events_due` index, ~0.26 s of CPU with
/// 1,000,000 events stored. The daemon asked for it before READY=1 (start-up grew with the
/// outbox) and, under traffic, once a second for `systemctl status` (a quarter of a core with
/// 1,000,000 events; more than a core with ten times that). The unsettled states are few (the
/// backlog) and counted through an index each time; the settled ones are counted once from a
/// snapshot (`recountSettled`, each heartbeat) and then moved by what this process settles.
///
/// Exact for this process's own writes: the snapshot is taken on SQLite's writer queue (GRDB's
/// `spawnConcurrentRead`), where the deltas are reset and where every delivery commit adds its
/// own, so an outcome is in the snapshot or in the deltas, never both, never neither. Another
/// process's changes (`events retry`, `purge`, `forget`) are noticed by the heartbeat within a
/// second (`noticeOtherWriters`), which drops the counts; the daemon's own retention pruner
/// drops them too.
struct SettledCounts: Sendable {
    /// Per account, per settled state, at the snapshot; nil: none yet, or a failed recount.
    var base: [String: [EventState: Int]]?
    /// Settled by this process since the snapshot.
    var delta: [String: [EventState: Int]] = [:]
    /// Bumped by each snapshot: a slower, older recount never replaces a newer one's base.
    var generation = 0
    /// The last delivery (delivered or linked), once read from the outbox, then moved by this
    /// process's own (found from outside: read each time, `MAX(at)` over the attempts walked
    /// every attempt since the last delivery, so during a long outage, when operators watch,
    /// each `/metrics` scrape took ~0.9 s and the idle daemon 4.6 % of a core).
    var lastDelivery: Millis?
    var lastDeliveryRead = false
}

extension Outbox {
    /// `status` for the daemon: the same figures, without scanning the settled events. The
    /// first call (and the first after a failed recount) counts them.
    public func liveStatus(now: Date) async throws -> OutboxStatus {
        let settled: [String: [EventState: Int]]
        if let current = currentSettled() {
            settled = current
        } else {
            try await recountSettled()
            guard let current = currentSettled() else { throw OutboxError.storage("the settled events could not be counted") }
            settled = current
        }
        var status = try await unsettledStatus(now: now)
        status.addSettled(settled)
        return status
    }

    /// Pending and in-flight events per account, their oldest, and the last delivery: what
    /// changes every second, through indexes (the backlog, not the outbox).
    public func unsettledStatus(now: Date) async throws -> OutboxStatus {
        let (known, generation) = settled.withLock { ($0.lastDeliveryRead, $0.generation) }
        var status = try await self.read { db in try Self.unsettledStatus(db, now: now, account: nil, lastDelivery: !known) }
        let last = settled.withLock { settled -> Millis? in
            // Read now, and nothing deleted since the read began (`invalidateSettled`).
            if !known, settled.generation == generation {
                if let stored = status.lastDeliveryAt?.millis { settled.lastDelivery = max(settled.lastDelivery ?? stored, stored) }
                settled.lastDeliveryRead = true
            }
            return known ? settled.lastDelivery : max(settled.lastDelivery ?? .min, status.lastDeliveryAt?.millis ?? .min).nonMinimal
        }
        status.lastDeliveryAt = last.map(Date.init(millis:))
        return status
    }

    /// `unsettledStatus`, in every account or in one (its last delivery then its own).
    ///
    /// Read off the covering `events_due` index, one account at a time (found by a loose scan of
    /// that index: a step per account, not per event): a count and the smallest id per state,
    /// then that one event's `received_at`. Ids begin with their receipt's milliseconds
    /// (`EventID`), from the same clock reading as `received_at`, so the smallest id is an
    /// oldest event. `MIN(received_at)` over the states read every pending event's row: 1.3 s
    /// with 1,000,000 pending, against 0.25 s this way.
    static func unsettledStatus(_ db: Database, now: Date, account: String?, lastDelivery: Bool = true) throws -> OutboxStatus {
        var status = OutboxStatus(counts: [:])
        func age(_ millis: Millis) -> Double { max(0, now.timeIntervalSince(Date(millis: millis))) }
        let accounts = try account.map { [$0] } ?? String.fetchAll(db.cachedStatement(sql: """
            WITH RECURSIVE seen(account) AS (
              SELECT (SELECT MIN(account) FROM events)
              UNION ALL
              SELECT (SELECT MIN(account) FROM events WHERE account > seen.account) FROM seen WHERE seen.account IS NOT NULL)
            SELECT account FROM seen WHERE account IS NOT NULL
            """))
        for account in accounts {
            for row in try Row.fetchAll(db.cachedStatement(sql: """
                    SELECT state, COUNT(*) AS n, MIN(id) AS first FROM events INDEXED BY events_due
                    WHERE account = ? AND state IN ('pending', 'in_flight') GROUP BY state
                    """), arguments: [account]) {
                guard let state = EventState(rawValue: row["state"]) else { continue }
                let received = try Millis.fetchOne(db.cachedStatement(sql: "SELECT received_at FROM events WHERE id = ?"),
                                                   arguments: [row["first"] as String])
                status.counts[state, default: 0] += row["n"] as Int
                status.accounts[account, default: AccountStatus()].counts[state] = row["n"]
                guard let received else { continue }
                let oldest = age(received)
                let previous = status.accounts[account]?.oldestPendingAgeSeconds ?? 0
                status.accounts[account]?.oldestPendingAgeSeconds = max(previous, oldest)
                status.oldestPendingAgeSeconds = max(status.oldestPendingAgeSeconds ?? 0, oldest)
            }
        }
        let last: Millis?
        if !lastDelivery {
            last = nil
        } else if let account {
            last = try Millis.fetchOne(db.cachedStatement(sql: """
                SELECT MAX(a.at) FROM attempts a JOIN events e ON e.id = a.event_id
                WHERE a.outcome IN ('delivered', 'linked') AND e.account = ?
                """), arguments: [account])
        } else {
            last = try Millis.fetchOne(db.cachedStatement(sql: "SELECT MAX(at) FROM attempts WHERE outcome IN ('delivered', 'linked')"))
        }
        status.lastDeliveryAt = last.map(Date.init(millis:))
        return status
    }

    /// Each account's settled events (delivered, linked, dead), in every account or in one.
    /// Every state is read off the covering `events_due` index (0.4 s per 1,000,000 events
    /// here); `WHERE state IN (the settled ones)` took SQLite through `events_state_updated`
    /// and a table read per event: 2.1 s.
    static func countsByAccount(_ db: Database, account: String?) throws -> [String: [EventState: Int]] {
        var counts: [String: [EventState: Int]] = [:]
        for row in try Row.fetchAll(db, sql: "SELECT account, state, COUNT(*) AS n FROM events \(account == nil ? "" : "WHERE account = ?") GROUP BY account, state",
                                    arguments: StatementArguments(account.map { [$0] } ?? [])) {
            guard let state = EventState(rawValue: row["state"]), state.isTerminal else { continue }
            counts[row["account"], default: [:]][state] = row["n"]
        }
        return counts
    }

    /// Counts the settled events afresh from a snapshot taken on the writer queue (a scan of
    /// them: the heartbeat calls it once a beat).
    public func recountSettled() async throws {
        let counted: Result<Void, any Error> = await withCheckedContinuation { continuation in
            pool.asyncWriteWithoutTransaction { _ in
                // Outcomes committed before this point are in the snapshot; later ones in the deltas.
                let generation = self.settled.withLock { settled -> Int in
                    settled.generation += 1
                    settled.delta = [:]
                    return settled.generation
                }
                self.pool.spawnConcurrentRead { dbResult in
                    do {
                        let base = try Self.countsByAccount(dbResult.get(), account: nil)
                        self.settled.withLock { if $0.generation == generation { $0.base = base } }
                        continuation.resume(returning: .success(()))
                    } catch {
                        self.settled.withLock { if $0.generation == generation { $0.base = nil } }
                        continuation.resume(returning: .failure(self.storageError(error)))
                    }
                }
            }
        }
        try counted.get()
    }

    /// Whether another process committed to the outbox since the last call (an admin command:
    /// `events retry`, `purge`, `forget`), and if so forgets the settled counts, so that the next
    /// `liveStatus` counts them again. Found from outside: after `events retry --all-dead`,
    /// `/metrics` counted the retried events both dead and pending for a heartbeat (60 s by
    /// default), and events `forget` removed stayed counted. `PRAGMA data_version` on the writer
    /// connection changes with other connections' commits only, and every write of this process
    /// goes through that connection (the readers never write).
    public func noticeOtherWriters() async -> Bool {
        guard let version = try? await pool.writeWithoutTransaction({ db in try Int.fetchOne(db, sql: "PRAGMA data_version") }) ?? nil else {
            return false
        }
        let changed = otherWritersSeen.withLock { seen -> Bool in
            defer { seen = version }
            return seen != nil && seen != version
        }
        if changed { invalidateSettled() }
        return changed
    }

    /// Forgets the settled counts (after this process deleted or changed settled events other
    /// than through delivery): the next `liveStatus` counts them again.
    func invalidateSettled() {
        settled.withLock { settled in
            settled.generation += 1
            settled.base = nil
            settled.delta = [:]
            // Records deleted may have held it: read again at the next status.
            settled.lastDelivery = nil
            settled.lastDeliveryRead = false
        }
    }

    private func currentSettled() -> [String: [EventState: Int]]? {
        settled.withLock { settled in
            guard var counts = settled.base else { return nil }
            for (account, delta) in settled.delta {
                for (state, n) in delta { counts[account, default: [:]][state, default: 0] += n }
            }
            return counts
        }
    }

    /// What one committed delivery batch settled (on the writer queue, right after its commit).
    func noteSettled(_ batch: [DeliveryWrite], _ results: [Result<DeliveryWriteResult, any Error>]) {
        var settledNow: [String: [EventState: Int]] = [:]
        var lastDelivered: Millis?
        for (item, result) in zip(batch, results) {
            switch (item, result) {
            case (.complete(let completion), .success(.completed(true))) where completion.outcome.state.isTerminal:
                settledNow[completion.event.account, default: [:]][completion.outcome.state, default: 0] += 1
                if completion.outcome.state == .delivered || completion.outcome.state == .linked {
                    lastDelivered = max(lastDelivered ?? completion.now.millis, completion.now.millis)
                }
            case (.claim, .success(.claimed(let claim))):
                for expired in claim.expired { settledNow[expired.account, default: [:]][.dead, default: 0] += 1 }
            default:
                break
            }
        }
        guard !settledNow.isEmpty else { return }
        settled.withLock { settled in
            if let lastDelivered { settled.lastDelivery = max(settled.lastDelivery ?? lastDelivered, lastDelivered) }
            for (account, counts) in settledNow {
                for (state, n) in counts { settled.delta[account, default: [:]][state, default: 0] += n }
            }
        }
    }
}

extension OutboxStatus {
    /// Adds settled counts (per account, per state) to the totals and to each account.
    mutating func addSettled(_ settled: [String: [EventState: Int]]) {
        for (account, counts) in settled {
            for (state, n) in counts where n != 0 {
                self.counts[state, default: 0] += n
                accounts[account, default: AccountStatus()].counts[state, default: 0] += n
            }
        }
    }
}

private extension Millis {
    /// Nil for `.min`, the "none" of a `max` over optional times.
    var nonMinimal: Millis? { self == .min ? nil : self }
}
