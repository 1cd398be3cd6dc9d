import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Tells a step back of the wall clock (NTP setting a fast clock right, an operator's `date -s`)
/// from time passing. The wall clock and `CLOCK_BOOTTIME` (which counts a suspend and is never
/// set) advance together but for a step, or NTP's slew (at most 0.5 ms a second, never a
/// second between two looks). Pure: the caller passes both readings (the heartbeat, once a
/// second).
///
/// Only steps back are reported. A step back only ever makes the relay wait (everything it
/// scheduled looks later than it is). A step forward only makes things due sooner, and cannot
/// be told from time that did pass unseen (a paused VM's clock caught up on resume): moving the
/// schedules forward then would hold events that are due.
public struct ClockStepDetector: Sendable {
    /// Smaller steps are left alone: what they delay, they delay by less than this.
    public static let threshold = 1.0
    private var offset: Double?

    /// `baseline`: both clocks read earlier (the start), the first look's reference.
    public init(baseline: (wall: Date, boot: Double)? = nil) {
        offset = baseline.map { $0.wall.timeIntervalSince1970 - $0.boot }
    }

    /// The step back since the previous look, in seconds (negative), or nil.
    public mutating func observe(wall: Date, boot: Double) -> Double? {
        let current = wall.timeIntervalSince1970 - boot
        defer { offset = current }
        guard let offset, current - offset <= -Self.threshold else { return nil }
        return current - offset
    }

    /// Seconds since boot, suspends included (`CLOCK_BOOTTIME`).
    public static func bootSeconds() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_BOOTTIME, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }
}
