import Foundation
import Testing
@testable import CandidateRelay

/// `TimerSleep` replaces `Task.sleep` where sleeps are routinely cut short (a cancelled
/// `Task.sleep` leaks on Linux): it must still sleep, and give up at once when cancelled.
@Suite struct TimerSleepTests {
    @Test func sleepsForTheTimeAsked() async throws {
        let clock = ContinuousClock()
        let started = clock.now
        try await TimerSleep.sleep(seconds: 0.05)
        #expect(clock.now - started >= .milliseconds(50))
    }

    @Test func cancellationEndsTheSleepAtOnceWithCancellationError() async throws {
        let clock = ContinuousClock()
        let started = clock.now
        let sleeper = Task { try await TimerSleep.sleep(seconds: 3600) }
        try await Task.sleep(for: .milliseconds(20))
        sleeper.cancel()
        await #expect(throws: CancellationError.self) { try await sleeper.value }
        #expect(clock.now - started < .seconds(60))
    }

    @Test func aTaskCancelledBeforeItSleepsDoesNotSleep() async throws {
        let sleeper = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            try await TimerSleep.sleep(seconds: 3600)
        }
        await #expect(throws: CancellationError.self) { try await sleeper.value }
    }

    /// Many sleeps cut short from other threads while their timers are being set up, and many
    /// that fire as they start: none may hang or resume twice (a checked continuation traps).
    @Test func racesBetweenTimerCancellationAndStartEndEverySleep() async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<2_000 {
                group.addTask {
                    let sleeper = Task { try await TimerSleep.sleep(seconds: index.isMultiple(of: 2) ? 0.000_001 : 3600) }
                    if !index.isMultiple(of: 2) { sleeper.cancel() }
                    _ = try? await sleeper.value
                }
            }
            try await group.waitForAll()
        }
    }

    @Test func zeroOrNegativeReturnsAtOnce() async throws {
        try await TimerSleep.sleep(seconds: 0)
        try await TimerSleep.sleep(seconds: -1)
    }
}
