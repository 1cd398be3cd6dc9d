import Foundation
import Testing
@testable import CandidateRelay

/// `withDeadline` bounds every partner request (body included) through one shared watcher.
@Suite struct DeadlineTests {
    /// Waits until cancelled (a partner that stalls), then fails as the HTTP client does.
    static func stall() async throws -> String {
        try await TimerSleep.sleep(seconds: 3600)
        return "answered"
    }

    @Test func aQuickOperationKeepsItsResultAndItsError() async throws {
        #expect(try await withDeadline(seconds: 5) { 42 } == 42)
        struct Refused: Error {}
        await #expect(throws: Refused.self) { try await withDeadline(seconds: 5) { () async throws -> Int in throw Refused() } }
    }

    @Test func aStalledOperationIsCancelledAtItsDeadline() async throws {
        let clock = ContinuousClock()
        let started = clock.now
        #expect(try await withDeadline(seconds: 0.2) { try await Self.stall() } == nil)
        let took = clock.now - started
        #expect(took >= .milliseconds(200) && took < .seconds(20))
    }

    /// A short deadline registered while the watcher waits for a long one still ends on time,
    /// and many at once (in any order) each end at their own.
    @Test func aSoonerDeadlineWakesTheWatcherEarly() async throws {
        let clock = ContinuousClock()
        let long = Task { try await withDeadline(seconds: 30) { try await Self.stall() } }
        try await Task.sleep(for: .milliseconds(50))
        let started = clock.now
        #expect(try await withDeadline(seconds: 0.1) { try await Self.stall() } == nil)
        #expect(clock.now - started < .seconds(10))
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for index in 0..<200 {
                group.addTask {
                    if index.isMultiple(of: 3) { return try await withDeadline(seconds: 5) { index } == index }
                    return try await withDeadline(seconds: Double(index % 7) / 20) { try await Self.stall() } == nil
                }
            }
            for try await ok in group { #expect(ok) }
        }
        long.cancel()
        await #expect(throws: CancellationError.self) { try await long.value }
    }

    @Test func cancellingTheCallerCancelsTheOperation() async throws {
        let caller = Task { try await withDeadline(seconds: 3600) { try await Self.stall() } }
        try await Task.sleep(for: .milliseconds(50))
        caller.cancel()
        await #expect(throws: CancellationError.self) { try await caller.value }
    }

    /// An answer that arrives as the deadline passes is kept: only a failure past it is a timeout.
    @Test func anAnswerAtTheDeadlineIsKept() async throws {
        let answer = try await withDeadline(seconds: 0.05) { () async throws -> String in
            try? await TimerSleep.sleep(seconds: 3600)  // swallows the cancellation, then answers
            return "answered"
        }
        #expect(answer == "answered")
    }
}
