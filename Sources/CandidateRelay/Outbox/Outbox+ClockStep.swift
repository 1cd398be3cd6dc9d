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

    /// Puts back to pending the events a crash left in flight (`recoverLeases`), each held until
    /// its request can no longer be at work at the partner: twice the longer of this run's
    /// partner timeout and the timeout of the run that sent it, recorded at its start (found
    /// from outside: `partner.timeout_seconds` lowered in the file, then a crash; the restart
    /// applied the new timeout, held the events twice that, and the resend met the first
    /// request still at work: two candidates). Then records this run's timeout. Returns how
    /// many were recovered, and until when they are held.
    public func recoverCrashedLeases(now: Date, partnerTimeoutSeconds: Double) async throws -> (count: Int, until: Date) {
        let previous = try await read { db in
            try Millis.fetchOne(db, sql: "SELECT partner_timeout_ms FROM wall_clock WHERE id = 1 AND partner_timeout_ms IS NOT NULL")
        }
        let timeout = max(partnerTimeoutSeconds, previous.map { Double($0) / 1000 } ?? 0)
        let hold = DeliverySettings.cutOffHoldSeconds(partnerTimeoutSeconds: timeout)
        let count = try await recoverLeases(expiredBefore: nil, now: now, holdSeconds: hold)
        // After the recovery: a crash in between leaves the longer timeout recorded, which only
        // holds longer.
        try await write { db in
            try db.execute(
                sql: """
                    INSERT INTO wall_clock (id, seen, partner_timeout_ms) VALUES (1, ?, ?)
                    ON CONFLICT (id) DO UPDATE SET partner_timeout_ms = excluded.partner_timeout_ms
                    """,
                arguments: [now.millis, Millis((partnerTimeoutSeconds * 1000).rounded(.up))])
        }
        return (count, now.addingTimeInterval(hold))
    }

    /// Stores `now` as the wall clock last seen: queued on the writer without waiting (the
    /// heartbeat calls it each tick, never while a rebase is in progress).
    func noteWallClock(_ now: Date) {
        writeBatch({ db in
            try db.execute(sql: "INSERT INTO wall_clock (id, seen) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET seen = excluded.seen",
                           arguments: [now.millis])
        }, then: { _ in })
    }

    /// The wall clock stepped forward by `seconds` (positive) from `before`, the time just
    /// before the step: each event's "may still be at the partner" window that was open then,
    /// and each lease, keeps the wait it had left (`partner_open_until`: found from outside, a step forward ended
    /// it at once, and the resend reached a partner still creating the candidate: two
    /// candidates). What is only the relay's own wait (a back-off's next attempt) is left due
    /// sooner. The gate's holds are stored after it moved them (`Heartbeat.moveForward`).
    /// Returns the events moved.
    @discardableResult
    func shiftOpenWindows(by seconds: Double, before: Date) async throws -> Int {
        let step = Millis((seconds * 1000).rounded())
        guard step > 0 else { return 0 }
        return try await write { db in
            try db.execute(sql: "UPDATE events SET partner_open_until = partner_open_until + ? WHERE partner_open_until > ?",
                           arguments: [step, before.millis])
            let moved = db.changesCount
            // A lease taken before the step keeps what it had left too: else one longer than the
            // step's lead looked expired at once, and the lease rescue could hand back an event
            // whose request was leaving (review).
            try db.execute(sql: "UPDATE events SET lease_expires_at = lease_expires_at + ? WHERE state = 'in_flight' AND lease_expires_at > ?",
                           arguments: [step, before.millis])
            self.forwardStep.withLock { $0 = (before, seconds) }
            self.quiet.clearAll()
            return moved
        }
    }

    /// Rows (of the backlog and the open windows) rewritten per transaction by `finishRebase`:
    /// the writer (every 202, every outcome, the watchdog's probe) is never held long, whatever
    /// the backlog.
    static let rebaseChunkRows: Int64 = 20_000

    /// The wall clock stepped back by `-seconds` (negative) before `now`: what was scheduled by
    /// the old clock keeps the wait it had left (`beginRebase`, then `finishRebase`). Without
    /// this, a clock an hour fast set right held every event already stored for an hour (their
    /// `next_attempt_at` an hour "ahead"). Returns the events moved.
    @discardableResult
    public func rebaseSchedules(by seconds: Double, now: Date, holds: [String: Date]? = nil) async throws -> Int {
        guard try await beginRebase(by: seconds, now: now, holds: holds) else { return 0 }
        return try await finishRebase()
    }

    /// Records a rebase in progress, in one transaction with the holds: `holds` replaces the
    /// stored ones (the gate's, already moved, while running); nil moves the stored ones back
    /// (at start, before the gate reads them). False when `seconds` is no step back.
    @discardableResult
    func beginRebase(by seconds: Double, now: Date, holds: [String: Date]?) async throws -> Bool {
        let step = Millis((seconds * 1000).rounded())
        guard step < 0 else { return false }
        // Times read from here on are on the clock as it is after this step back.
        forwardStep.withLock { $0 = nil }
        try await write { db in
            if let holds {
                try Self.replaceHolds(db, holds)
            } else {
                try db.execute(sql: "UPDATE holds SET until = MAX(:now, until + :step) WHERE until > :now",
                               arguments: ["now": now.millis, "step": step])
            }
            // The rows that may hold a time of the old clock's future (the backlog and the open
            // windows, found through indexes), each with its times as they are now: the rebase
            // moves a time only while it is still the one recorded here. A time written since is
            // the new clock's (found from outside: an outcome written on the new clock while a
            // rebase went on, in a row not reached yet, was moved back by the step, and the
            // window of a request still at work at the partner ended at once).
            try Self.recordRebaseRows(db, now: now.millis)
            let last = try Int64.fetchOne(db, sql: "SELECT MAX(id) FROM rebase_rows") ?? 0
            try db.execute(sql: """
                INSERT INTO wall_clock (id, seen, rebase_step, rebase_now, rebase_last, rebase_done)
                VALUES (1, :now, :step, :now, :last, 0)
                ON CONFLICT (id) DO UPDATE SET rebase_step = :step, rebase_now = :now, rebase_last = :last, rebase_done = 0
                """, arguments: ["now": now.millis, "step": step, "last": last])
        }
        return true
    }

    /// Records in `rebase_rows` the events with `rowid` in (`after`, `upTo`] (all of them by
    /// default) that may hold a time after `now`, with their times as they are.
    static func recordRebaseRows(_ db: Database, now: Millis, after: Int64 = 0, upTo: Int64 = .max) throws {
        try db.execute(sql: "DELETE FROM rebase_rows")
        try db.execute(sql: """
            INSERT INTO rebase_rows (id, next_attempt_at, budget_started_at, lease_expires_at, partner_open_until)
            SELECT rowid, next_attempt_at, budget_started_at, lease_expires_at, partner_open_until FROM events
            WHERE rowid IN (SELECT rowid FROM events WHERE state IN ('pending', 'in_flight')
                            UNION SELECT rowid FROM events WHERE partner_open_until > :now)
              AND rowid > :after AND rowid <= :upTo
            """, arguments: ["now": now, "after": after, "upTo": upTo])
    }

    /// Carries the rebase in progress (`beginRebase`, or one a stop or a crash cut short) to its
    /// end, a chunk of rows per transaction, each with its progress. Of the undelivered events
    /// recorded when it began, only the times still after its `now` move (a row written since
    /// is the new clock's): a pending event's next attempt moves back by the step (one that was
    /// due is due now), its retry budget's start too (`max_age_seconds` counts the time that
    /// passed, not the step), and an in-flight lease's end. What happened (received, updated,
    /// attempted) is not rewritten. At the end the wall clock stored is its `now`. `onChunk` runs
    /// after each chunk (the heartbeat pets the watchdog); `stop` ends it early, to go on later.
    /// Returns the events moved.
    @discardableResult
    func finishRebase(onChunk: @Sendable () -> Void = {}, stop: @Sendable () -> Bool = { false }) async throws -> Int {
        guard let progress = try await read({ db -> (step: Millis, now: Millis, last: Int64, done: Int64)? in
            try Row.fetchOne(db, sql: "SELECT rebase_step, rebase_now, rebase_last, rebase_done FROM wall_clock WHERE id = 1 AND rebase_step IS NOT NULL")
                .map { ($0[0], $0[1], $0[2], $0[3]) }
        }) else { return 0 }
        let (step, now, last) = (progress.step, progress.now, progress.last)
        var done = progress.done
        var moved = 0
        while done < last {
            if stop() { return moved }
            let after = done
            let chunk = try await write { db -> (changed: Int, upTo: Int64) in
                // The next rows recorded at the rebase's start (`rebase_rows`: the backlog and the
                // open windows, not the whole outbox), a time moved only while it is still the
                // one recorded (a time written since is the new clock's).
                let upTo = try Int64.fetchOne(db, sql: """
                    SELECT MAX(id) FROM (SELECT id FROM rebase_rows WHERE id > :after ORDER BY id LIMIT :limit)
                    """, arguments: ["after": after, "limit": Self.rebaseChunkRows]) ?? last
                try db.execute(sql: """
                    UPDATE events SET
                      next_attempt_at = CASE WHEN events.state = 'pending' AND events.next_attempt_at > :now
                                               AND events.next_attempt_at IS r.next_attempt_at
                                             THEN MAX(:now, events.next_attempt_at + :step) ELSE events.next_attempt_at END,
                      budget_started_at = CASE WHEN events.state IN ('pending', 'in_flight') AND events.budget_started_at > :now
                                                 AND events.budget_started_at IS r.budget_started_at
                                               THEN events.budget_started_at + :step ELSE events.budget_started_at END,
                      lease_expires_at = CASE WHEN events.lease_expires_at > :now AND events.lease_expires_at IS r.lease_expires_at
                                              THEN events.lease_expires_at + :step ELSE events.lease_expires_at END,
                      partner_open_until = CASE WHEN events.partner_open_until > :now AND events.partner_open_until IS r.partner_open_until
                                                THEN MAX(:now, events.partner_open_until + :step) ELSE events.partner_open_until END
                    FROM rebase_rows r
                    WHERE events.rowid = r.id AND r.id > :after AND r.id <= :upTo
                      AND (events.state IN ('pending', 'in_flight')
                             AND (events.next_attempt_at > :now OR events.budget_started_at > :now OR events.lease_expires_at > :now)
                           OR events.partner_open_until > :now)
                    """, arguments: ["now": now, "step": step, "after": after, "upTo": upTo])
                let changed = db.changesCount
                try db.execute(sql: "UPDATE wall_clock SET rebase_done = ? WHERE id = 1", arguments: [upTo])
                return (changed, upTo)
            }
            moved += chunk.changed
            done = chunk.upTo
            onChunk()
        }
        try await write { db in
            // "Nothing due before ..." marks were taken with the old clock.
            self.quiet.clearAll()
            try db.execute(sql: """
                UPDATE wall_clock SET seen = rebase_now, rebase_step = NULL, rebase_now = NULL, rebase_last = NULL, rebase_done = NULL
                WHERE id = 1
                """)
            try db.execute(sql: "DELETE FROM rebase_rows")
        }
        return moved
    }
}
