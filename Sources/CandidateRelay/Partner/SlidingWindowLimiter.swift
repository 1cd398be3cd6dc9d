import Foundation

/// A sliding-window log: at most `limit` sends in any window of `window` seconds. Unlike a token
/// bucket, it never lets a burst of `limit` follow a window that already held `limit`. Pure: the
/// caller passes the time. `limit == 0` means unlimited.
public struct SlidingWindowLimiter: Sendable, Equatable {
    public var limit: Int
    public var window: Double
    /// Send times inside the current window, oldest first.
    private(set) var sent: [Date] = []

    public init(limit: Int, window: Double, history: [Date] = []) {
        self.limit = limit
        self.window = window
        self.sent = history.sorted()
    }

    /// The earliest time a send is allowed (`now` if it is allowed now).
    public mutating func earliestAllowed(now: Date) -> Date {
        guard limit > 0 else { return now }
        sent.removeAll { now.timeIntervalSince($0) >= window }
        guard sent.count >= limit else { return now }
        return sent[sent.count - limit].addingTimeInterval(window)
    }

    /// Reserves a send at `now`; returns false (and reserves nothing) when the window is full.
    public mutating func reserve(now: Date) -> Bool {
        guard earliestAllowed(now: now) <= now else { return false }
        if limit > 0 { sent.append(now) }
        return true
    }

    /// Applies a new limit (SIGHUP), keeping the sends already made.
    public mutating func reconfigure(limit: Int, window: Double) {
        self.limit = limit
        self.window = window
    }
}
