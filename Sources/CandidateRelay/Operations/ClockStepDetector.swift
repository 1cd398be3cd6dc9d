import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Tells a step of the wall clock (NTP setting a wrong clock right, an operator's `date -s`)
/// from time passing. The wall clock and `CLOCK_BOOTTIME` (which counts a suspend and is never
/// set) advance together but for a step, or NTP's slew (at most 0.5 ms a second, never a
/// second between two looks). Pure: the caller passes both readings (the heartbeat, once a
/// second).
///
/// A step back makes everything scheduled by the old clock look later than it is: the relay
/// moves its schedules back by the step. A step forward makes things due sooner, which for most
/// is harmless (and cannot be told from time that did pass unseen: a VM restored from a saved
/// state, its clock then set right), but not for the waits kept for the partner's sake: a resend
/// held while a request given up on may still be creating the candidate went at once, and the
/// partner created it twice (found from outside); the rate windows emptied and let a second
/// window's worth go. Those are moved forward by the step (`Heartbeat`), and until they are the
/// relay reads the time through `GuardedWallClock`.
public struct ClockStepDetector: Sendable {
    /// Smaller steps are left alone: what they delay, they delay by less than this.
    public static let threshold = 1.0
    private var offset: Double?

    /// `baseline`: both clocks read earlier (the start), the first look's reference.
    public init(baseline: (wall: Date, boot: Double)? = nil) {
        offset = baseline.map { $0.wall.timeIntervalSince1970 - $0.boot }
    }

    /// The step since the previous look, in seconds (negative: back; positive: forward), or nil.
    public mutating func observe(wall: Date, boot: Double) -> Double? {
        let current = wall.timeIntervalSince1970 - boot
        defer { offset = current }
        guard let offset, abs(current - offset) >= Self.threshold else { return nil }
        return current - offset
    }

    /// Seconds since boot, suspends included (`CLOCK_BOOTTIME`).
    public static func bootSeconds() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_BOOTTIME, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }
}

/// The wall clock as the relay's holds and claims read it: the wall clock, except just after a
/// step forward that the heartbeat has not handled yet (it looks once a second), when it reads
/// as the time before the step plus the time that passed since (`CLOCK_BOOTTIME`). A claim in
/// that second would otherwise see a hold kept for the partner's sake already over (found from
/// outside: the resend went 0.4 s after a step, before the step was seen). The heartbeat
/// `settle`s it at each look once nothing is left to move.
public final class GuardedWallClock: Sendable {
    private let wall: @Sendable () -> Date
    private let boot: @Sendable () -> Double
    /// Wall minus boot time when last settled.
    private let frame: Mutex<Double>

    public init(baseline: (wall: Date, boot: Double), wall: @escaping @Sendable () -> Date = Date.init,
                boot: @escaping @Sendable () -> Double = ClockStepDetector.bootSeconds) {
        self.wall = wall
        self.boot = boot
        frame = Mutex(baseline.wall.timeIntervalSince1970 - baseline.boot)
    }

    public func now() -> Date {
        let current = wall()
        let expected = frame.withLock { $0 } + boot()
        return current.timeIntervalSince1970 - expected >= ClockStepDetector.threshold ? Date(timeIntervalSince1970: expected) : current
    }

    /// The clocks as read now are the frame from here on (no step pending).
    public func settle(wall: Date, boot: Double) {
        frame.withLock { $0 = wall.timeIntervalSince1970 - boot }
    }
}
