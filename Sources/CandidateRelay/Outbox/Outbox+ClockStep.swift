import Foundation
import GRDB

extension Outbox {
    /// The latest time the outbox recorded: an event's last change, a request's answer. Later
    /// than the clock at start, the clock went back while the daemon was stopped. (A read off
    /// the `events_state_updated` and `attempts_at` indexes: a few pages whatever the size.)
    public func latestRecordedTime() async throws -> Date? {
        try await read { db in
            var latest = try Millis.fetchOne(db, sql: "SELECT MAX(at) FROM attempts")
            for state in EventState.allCases {
                if let changed = try Millis.fetchOne(db, sql: "SELECT MAX(updated_at) FROM events WHERE state = ?",
                                                     arguments: [state.rawValue]) {
                    latest = max(latest ?? changed, changed)
                }
            }
            return latest.map(Date.init(millis:))
        }
    }

    /// The wall clock stepped back by `-seconds` before `now` (`ClockStepDetector`): what was
    /// scheduled by the old clock keeps the wait it had left. Without this, a clock an hour fast
    /// set right held every event already stored for an hour (their `next_attempt_at` an hour
    /// "ahead"). (The statements hold for a step forward too; the detector reports none.)
    ///
    /// Of the undelivered events: a pending event's next attempt moves with the step (one that
    /// was due stays due, at `now` at the latest), its budget's start moves too (`max_age_seconds`
    /// counts the time that passed, not the step), and so does an in-flight lease's end. The
    /// stored holds (pauses, open circuit, back-offs) move as well. What happened (received,
    /// updated, attempted) is not rewritten. One write transaction: with a large backlog it
    /// holds the writer for a while (every undelivered row is rewritten), once per step.
    /// Returns the events moved.
    @discardableResult
    public func rebaseSchedules(by seconds: Double, now: Date) async throws -> Int {
        let step = Millis((seconds * 1000).rounded())
        guard step != 0 else { return 0 }
        return try await write { db in
            // "Nothing due before ..." marks were taken with the old clock.
            self.quiet.clearAll()
            let arguments: StatementArguments = ["now": now.millis, "step": step]
            try db.execute(sql: """
                UPDATE events SET
                  next_attempt_at = CASE WHEN state = 'pending' AND next_attempt_at > MIN(:now, :now - :step)
                                         THEN MAX(:now, next_attempt_at + :step) ELSE next_attempt_at END,
                  budget_started_at = budget_started_at + :step,
                  lease_expires_at = lease_expires_at + :step
                WHERE state IN ('pending', 'in_flight')
                """, arguments: arguments)
            let moved = db.changesCount
            try db.execute(sql: "UPDATE holds SET until = MAX(:now, until + :step) WHERE until > MIN(:now, :now - :step)",
                           arguments: arguments)
            return moved
        }
    }
}
