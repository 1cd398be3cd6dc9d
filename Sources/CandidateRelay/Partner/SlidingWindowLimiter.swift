import Foundation

/// At most `limit` requests *arriving at the partner* in any window of `window` seconds, a
/// sliding window (never a burst bucket). Pure: the caller passes the time. `limit == 0` means
/// unlimited.
///
/// The relay cannot see when a request arrives, only that it arrives after it was sent and
/// before its answer came back. So each request holds its place from the moment it is sent
/// until `window` seconds after its answer (or failure): a new request at `t` goes only when
/// fewer than `limit` requests are in flight or were answered after `t - window`. Any two
/// requests that could arrive less than `window` apart are then counted together, whatever
/// the time spent connecting, writing or waiting for the answer in between.
public struct SlidingWindowLimiter: Sendable, Equatable {
    /// One request's place in the window, handed back with `finish`.
    public struct Ticket: Sendable, Hashable {
        let id: Int
    }

    public var limit: Int
    public var window: Double
    /// Answer times still inside the window, oldest first.
    private(set) var finished: [Date] = []
    /// Requests sent and not yet answered, by ticket; kept unlimited too, so that a limit turned
    /// on by a reload counts them.
    private(set) var inFlight: [Int: Date] = [:]
    private var nextTicket = 0

    /// `history`: answer times of requests made before (a restart), each counted as finished then.
    public init(limit: Int, window: Double, history: [Date] = []) {
        self.limit = limit
        self.window = window
        self.finished = history.sorted()
    }

    /// The earliest time a request is allowed: `now` if now; a later date once enough answered
    /// requests leave the window; `nil` when that depends on requests still in flight.
    public mutating func earliestAllowed(now: Date) -> Date? {
        guard limit > 0 else { return now }
        dropAnswersOutOfTheWindow(now: now)
        let busy = finished.count + inFlight.count
        guard busy >= limit else { return now }
        let mustLeave = busy - limit + 1
        guard mustLeave <= finished.count else { return nil }
        return finished[mustLeave - 1].addingTimeInterval(window)
    }

    /// Whether the requests answered within the window alone fill it: a wait for the rate, as
    /// `rate_limit_waits_total` counts it, not a window that places reserved by idle workers'
    /// admissions fill (review: an idle daemon, or a trickle, counted waits that never were).
    public mutating func filledByAnswered(now: Date) -> Bool {
        guard limit > 0 else { return false }
        dropAnswersOutOfTheWindow(now: now)
        return finished.count >= limit
    }

    private mutating func dropAnswersOutOfTheWindow(now: Date) {
        // An answer time after `now` means the wall clock went back since: it counts as
        // answered now, so a step back holds the window one window at most, not the length of
        // the step (a clock an hour fast, set right, held a full window for an hour: found from
        // outside). At most one window late, never early: no burst beyond the limit.
        if let last = finished.last, last > now { finished = finished.map { min($0, now) } }
        if let firstKept = finished.firstIndex(where: { now.timeIntervalSince($0) < window }) {
            finished.removeFirst(firstKept)
        } else {
            finished.removeAll()
        }
    }

    /// The wall clock stepped forward by `seconds`: the window's times move with it, so each
    /// answer leaves the window when it would have (a step forward emptied it, and the next
    /// window's worth went at once: found from outside). A step back needs nothing
    /// (`earliestAllowed`).
    public mutating func shift(by seconds: Double) {
        guard seconds > 0 else { return }
        finished = finished.map { $0.addingTimeInterval(seconds) }
        inFlight = inFlight.mapValues { $0.addingTimeInterval(seconds) }
    }

    /// Takes a place for a request sent at `now`; nil (and nothing taken) when the window is full.
    public mutating func reserve(now: Date) -> Ticket? {
        guard earliestAllowed(now: now) == now else { return nil }
        nextTicket += 1
        inFlight[nextTicket] = now
        return Ticket(id: nextTicket)
    }

    /// The request's answer (or failure) came at `now`: it leaves the window `window` later.
    public mutating func finish(_ ticket: Ticket, now: Date) {
        // Unlimited, answer times are not kept here (the outbox's history has them, for a
        // reload that sets a limit: `reconfigure(limit:window:history:)`).
        guard inFlight.removeValue(forKey: ticket.id) != nil, limit > 0 else { return }
        let index = finished.lastIndex(where: { $0 <= now }).map { $0 + 1 } ?? 0
        finished.insert(now, at: index)
    }

    /// A place taken for a request that was never sent: it leaves the window at once.
    public mutating func cancel(_ ticket: Ticket) {
        inFlight.removeValue(forKey: ticket.id)
    }

    /// Requests in flight or answered within the last `window` (what the limit is compared with).
    public mutating func count(now: Date) -> Int {
        _ = earliestAllowed(now: now)
        return finished.count + inFlight.count
    }

    /// Applies a new limit (SIGHUP), keeping the requests already made. When the limit is turned
    /// on, or the window widened, what this window kept is not enough (nothing while unlimited;
    /// nothing older than the old window): `history`, the answer times the outbox recorded
    /// within the new window, replaces it, with the answers newer than its newest (their
    /// outcomes may not be committed yet). Without it, a reload that set a limit let a whole
    /// window's worth of requests go again at once (found from outside).
    public mutating func reconfigure(limit: Int, window: Double, history: [Date]? = nil) {
        let widened = limit > 0 && (self.limit == 0 || window > self.window)
        self.limit = limit
        self.window = window
        if widened, let history {
            let newest = history.max() ?? .distantPast
            finished = (history + finished.filter { $0 > newest }).sorted()
        }
    }
}
