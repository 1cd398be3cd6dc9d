import Foundation

/// Time as the partner gate sees it: what time it is, and waiting until a time. Injected so that
/// tests move time by hand (`ManualClock` in CandidateRelayTesting) instead of sleeping.
public protocol RelayClock: Sendable {
    var now: Date { get }
    /// Suspends until `deadline`; throws `CancellationError` when the task is cancelled first.
    func sleep(until deadline: Date) async throws
}

/// The wall clock and a sleep on NIO's timers (`TimerSleep`: a gate's wait is cut short often).
public struct SystemClock: RelayClock {
    public init() {}
    public var now: Date { Date() }
    public func sleep(until deadline: Date) async throws {
        let seconds = deadline.timeIntervalSinceNow
        try await TimerSleep.sleep(seconds: seconds)
    }
}

/// `SystemClock` read through a `GuardedWallClock`: just after a step forward the heartbeat has
/// not handled yet, the time before the step plus the time that passed.
public struct GuardedSystemClock: RelayClock {
    let wall: GuardedWallClock
    public init(_ wall: GuardedWallClock) {
        self.wall = wall
    }
    public var now: Date { wall.now() }
    public func sleep(until deadline: Date) async throws {
        try await TimerSleep.sleep(seconds: deadline.timeIntervalSince(wall.now()))
    }
}
