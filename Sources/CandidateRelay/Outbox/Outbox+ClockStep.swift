import Foundation
import GRDB

extension Outbox {
    /// The wall clock the daemon last saw (`noteWallClock`, each heartbeat tick), in the frame
    /// of the schedules stored. Later than the clock at start: the clock went back while the
    /// daemon was stopped. Nil before the first tick of a daemon that has this table.
    public func wallClockSeen() async throws -> Date? {
        try await read { db in
            try Millis.fetchOne(db, sql: "SELECT seen FROM wall_clock WHERE id = 1").map(Date.init(millis:))
        }
    }

    /// Stores `now` as the wall clock last seen: queued on the writer without waiting (the
    /// heartbeat calls it each tick).
    func noteWallClock(_ now: Date) {
        writeBatch({ db in try Self.storeWallClock(db, now) }, then: { _ in })
    }

    private static func storeWallClock(_ db: Database, _ now: Date) throws {
        try db.execute(sql: "INSERT INTO wall_clock (id, seen) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET seen = excluded.seen",
                       arguments: [now.millis])
    }

    /// Rows rewritten per transaction by `rebaseSchedules`: the writer (every 202, every
    /// outcome, the watchdog's probe) is never held long, whatever the backlog.
    static let rebaseChunkRows: Int64 = 20_000

    /// The wall clock stepped back by `-seconds` (negative) before `now`: what was scheduled by
    /// the old clock keeps the wait it had left. Without this, a clock an hour fast set right
    /// held every event already stored for an hour (their `next_attempt_at` an hour "ahead").
    ///
    /// Of the undelivered events, only the times still after `now` (so written by the old
    /// clock; a row written since the step, by the new clock, is left as it is): a pending
    /// event's next attempt moves back by the step (one that was due is due now), its retry
    /// budget's start moves back (`max_age_seconds` counts the time that passed, not the step),
    /// and so does an in-flight lease's end. With `holds`, the stored holds too (at start; while
    /// running the gate stores its own, moved). What happened (received, updated, attempted) is
    /// not rewritten. The events are rewritten a chunk of rows per transaction; the stored
    /// wall clock becomes `now` at the end. Returns the events moved.
    @discardableResult
    public func rebaseSchedules(by seconds: Double, now: Date, holds: Bool) async throws -> Int {
        let step = Millis((seconds * 1000).rounded())
        guard step < 0 else { return 0 }
        let last = try await read { db in try Int64.fetchOne(db, sql: "SELECT MAX(rowid) FROM events") ?? 0 }
        var moved = 0
        var after: Int64 = 0
        while after < last {
            let (from, upTo) = (after, after + Self.rebaseChunkRows)
            moved += try await write { db in
                try db.execute(sql: """
                    UPDATE events SET
                      next_attempt_at = CASE WHEN state = 'pending' AND next_attempt_at > :now
                                             THEN MAX(:now, next_attempt_at + :step) ELSE next_attempt_at END,
                      budget_started_at = CASE WHEN budget_started_at > :now THEN budget_started_at + :step ELSE budget_started_at END,
                      lease_expires_at = CASE WHEN lease_expires_at > :now THEN lease_expires_at + :step ELSE lease_expires_at END
                    WHERE rowid > :after AND rowid <= :upTo AND state IN ('pending', 'in_flight')
                      AND (next_attempt_at > :now OR budget_started_at > :now OR lease_expires_at > :now)
                    """, arguments: ["now": now.millis, "step": step, "after": from, "upTo": upTo])
                return db.changesCount
            }
            after = upTo
        }
        try await write { db in
            // "Nothing due before ..." marks were taken with the old clock.
            self.quiet.clearAll()
            if holds {
                try db.execute(sql: "UPDATE holds SET until = MAX(:now, until + :step) WHERE until > :now",
                               arguments: ["now": now.millis, "step": step])
            }
            try Self.storeWallClock(db, now)
        }
        return moved
    }
}
