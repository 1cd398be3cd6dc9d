import Foundation
import Testing
@testable import CandidateRelay

@Suite struct RetryPolicyTests {
    static let policy = RetryPolicy(backoff: BackoffConfiguration(initialSeconds: 5, multiplier: 2, maxSeconds: 3600),
                                    maxAttempts: 20, maxAgeSeconds: 259_200)

    @Test(arguments: [(1, 5.0), (2, 10.0), (3, 20.0), (10, 2560.0), (11, 3600.0), (30, 3600.0), (500, 3600.0)])
    func baseDelayGrowsExponentiallyAndIsCapped(attempt: Int, expected: Double) {
        #expect(Self.policy.baseDelay(attempt: attempt) == expected)
    }

    @Test func jitterStaysWithinHalfAndFullDelay() {
        for attempt in 1...25 {
            let base = Self.policy.baseDelay(attempt: attempt)
            #expect(Self.policy.delay(attempt: attempt, unit: 0) == base / 2)
            #expect(Self.policy.delay(attempt: attempt, unit: 0.999_999) <= base)
            for _ in 0..<50 {
                let delay = Self.policy.delay(attempt: attempt)
                #expect(delay >= base / 2 && delay <= base)
            }
        }
    }

    @Test func jitterSpreadsDelays() {
        let delays = Set((0..<50).map { _ in Self.policy.delay(attempt: 3) })
        #expect(delays.count > 10)
    }

    @Test func retryAfterOverridesBackoff() {
        let now = Date(timeIntervalSince1970: 1_000_000)
        let later = now.addingTimeInterval(120)
        #expect(Self.policy.nextAttempt(after: 1, budgetStartedAt: now, now: now, retryAfter: later) == later)
    }

    @Test func attemptsExhaustedEndsTheBudget() {
        let now = Date(timeIntervalSince1970: 1_000_000)
        #expect(Self.policy.nextAttempt(after: 19, budgetStartedAt: now, now: now, retryAfter: nil, unit: 0) != nil)
        #expect(Self.policy.nextAttempt(after: 20, budgetStartedAt: now, now: now, retryAfter: nil, unit: 0) == nil)
    }

    @Test func ageBudgetEndsTheBudget() {
        let start = Date(timeIntervalSince1970: 1_000_000)
        let now = start.addingTimeInterval(259_199)
        #expect(Self.policy.nextAttempt(after: 2, budgetStartedAt: start, now: now, retryAfter: nil, unit: 0) == nil)
        #expect(Self.policy.nextAttempt(after: 2, budgetStartedAt: start, now: start.addingTimeInterval(100), retryAfter: nil, unit: 0) != nil)
    }

    @Test(arguments: [("120", 120.0), (" 0 ", 0.0), ("1.5", 1.5)])
    func retryAfterSeconds(header: String, seconds: Double) {
        let now = Date(timeIntervalSince1970: 1_000_000)
        #expect(RetryAfter.parse(header, now: now) == now.addingTimeInterval(seconds))
    }

    @Test func retryAfterHTTPDates() {
        let now = Date(timeIntervalSince1970: 784_111_700) // 1994-11-06T08:48:20Z
        #expect(RetryAfter.parse("Sun, 06 Nov 1994 08:49:37 GMT", now: now) == Date(timeIntervalSince1970: 784_111_777))
        #expect(RetryAfter.parse("Sunday, 06-Nov-94 08:49:37 GMT", now: now) == Date(timeIntervalSince1970: 784_111_777))
        // A date in the past means "now".
        #expect(RetryAfter.parse("Sun, 06 Nov 1994 08:00:00 GMT", now: now) == now)
    }

    @Test(arguments: ["", "soon", "-5", "Sun, 99 Nov 1994"])
    func retryAfterGarbageIsIgnored(header: String) {
        #expect(RetryAfter.parse(header, now: Date()) == nil)
    }
}
