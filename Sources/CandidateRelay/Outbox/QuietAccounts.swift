import Foundation
import Synchronization

/// Accounts the last claim found with nothing due, and until when: the claim and the idle
/// workers' `nextDueAt` skip them instead of asking SQLite about each.
///
/// With many accounts and traffic on a few, every claim asked about every account in turn, idle
/// ones first (the gate puts the least recently served first), inside the writer's
/// transaction: 500 accounts, 5 with traffic, cost ~5 ms of CPU per delivery and slowed ingest
/// with it; and each idle worker's `nextDueAt` asked about each account every second (~10 % of
/// a core with 500 accounts and nothing to do).
///
/// A mark lasts until the account's earliest pending event is due, and never more than
/// `horizonSeconds`: an admin command in another process (`events retry`) is seen when it ends.
/// It ends on a step of half the horizon (it lasts more than 0.5 s, at most 1 s): the marks of
/// accounts looked at within one step end together, and one look renews them all. Marks of a
/// fixed length, set as each account's last event went out, ended one by one ever after: with
/// 300 accounts that had each sent once, the idle workers woke, re-admitted and re-claimed some
/// 300 times a second (a quarter to a third of a core with nothing to do; found from outside).
/// In this process, whatever may make an account's event due sooner clears its mark in the same
/// transaction on the writer's queue (where the claims run too): a new event, an outcome, a
/// hand-back, a lease rescue, a retry, a release.
final class QuietAccounts: Sendable {
    static let horizonSeconds = 1.0

    /// Until when each marked account is skipped.
    private let marks = Mutex<[String: Date]>([:])

    /// Whether `account` has nothing due at `now` as far as the last look found.
    func isQuiet(_ account: String, at now: Date) -> Bool {
        quietUntil(account, at: now) != nil
    }

    /// Until when `account` is quiet, if it is at `now`: nothing of it is due before (the idle
    /// wait looks again then, so that a change from another process is seen within the mark).
    func quietUntil(_ account: String, at now: Date) -> Date? {
        marks.withLock { $0[account].flatMap { $0 > now ? $0 : nil } }
    }

    /// The accounts quiet at `now`.
    func accounts(at now: Date) -> Set<String> {
        marks.withLock { Set($0.filter { $0.value > now }.keys) }
    }

    /// The claim found nothing due in `account`; `earliest` is its earliest pending event's due
    /// time (nil: none pending). Nothing is marked while an event is due (one whose natural key
    /// is in flight: it waits for that answer, not for time).
    func note(_ account: String, earliest: Date?, now: Date) {
        let step = Self.horizonSeconds / 2
        let horizon = Date(timeIntervalSinceReferenceDate:
            ((now.timeIntervalSinceReferenceDate + Self.horizonSeconds) / step).rounded(.down) * step)
        let end = min(earliest ?? .distantFuture, horizon)
        guard end > now else { return }
        marks.withLock { $0[account] = end }
    }

    func clear(_ account: String) {
        marks.withLock { _ = $0.removeValue(forKey: account) }
    }

    func clearAll() {
        marks.withLock { $0.removeAll() }
    }
}
