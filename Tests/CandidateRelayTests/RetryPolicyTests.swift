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

    /// The later of Retry-After and the backoff, capped at max_seconds: `Retry-After: 0` or a
    /// date in the past must not turn into immediate retries that burn the attempt budget.
    @Test(arguments: [
        (retryAfter: 120.0, unit: 0.0, expected: 120.0),   // longer than the 5 s backoff: wait it
        (retryAfter: 0.0, unit: 0.0, expected: 2.5),       // Retry-After: 0 — the backoff still holds
        (retryAfter: -60.0, unit: 0.0, expected: 2.5),     // a date in the past — same
        (retryAfter: 1.0, unit: 0.5, expected: 3.75),      // shorter than the jittered backoff
        (retryAfter: 90_000.0, unit: 0.0, expected: 3600.0), // capped at max_seconds
    ])
    func retryAfterIsAFloorNotAReplacement(retryAfter: Double, unit: Double, expected: Double) {
        let now = Date(timeIntervalSince1970: 1_000_000)
        let next = Self.policy.nextAttempt(after: 1, budgetStartedAt: now, now: now, retryAfter: now.addingTimeInterval(retryAfter), unit: unit)
        #expect(next == now.addingTimeInterval(expected))
    }

    /// Twenty 429s with `Retry-After: 0` in a row: the attempts are spread by the backoff (the
    /// old rule retried at once and went dead within a second).
    @Test func retryAfterZeroDoesNotBurnTheBudget() {
        let start = Date(timeIntervalSince1970: 1_000_000)
        var now = start
        for attempt in 1..<20 {
            let decision = DeliveryDecision.decide(
                .retry(error: "too_many_requests", retryAfter: now), status: 429, body: Data(), attempt: attempt,
                budgetStartedAt: start, policy: Self.policy, now: now, unit: 0)
            guard case .retry(let at, _, _) = decision.outcome else {
                Issue.record("attempt \(attempt) went \(decision.outcome.name)")
                return
            }
            #expect(at > now)
            #expect(decision.pauseUntil == nil)  // a pause that is already over pauses nobody
            now = at
        }
        #expect(now.timeIntervalSince(start) > 3600)
    }

    /// The decision table: outcome, the breaker's view, and the pause.
    @Test func decisionsFollowTheClassification() {
        let now = Date(timeIntervalSince1970: 1_000_000)
        func decide(_ classification: Classification, status: Int?, attempt: Int = 1) -> DeliveryDecision {
            DeliveryDecision.decide(classification, status: status, body: Data(#"{"error":"required_field","message":"m"}"#.utf8), attempt: attempt,
                                    budgetStartedAt: now, policy: Self.policy, now: now, unit: 0)
        }
        #expect(decide(.delivered(candidateUID: "u", summary: nil), status: 201).health == .up)
        #expect(decide(.linked(candidateUID: "u", error: "candidate_post_conflict"), status: 409).health == .up)
        #expect(decide(.dead(error: "required_field"), status: 400) == DeliveryDecision(outcome: .dead(status: 400, error: "required_field: m"), health: .up))
        let throttled = decide(.retry(error: "too_many_requests", retryAfter: now.addingTimeInterval(30)), status: 429)
        // A 429 is not an outage: the circuit does not count it.
        #expect(throttled == DeliveryDecision(outcome: .retry(at: now.addingTimeInterval(30), status: 429, error: "too_many_requests"),
                                              health: .untested, pauseUntil: now.addingTimeInterval(30)))
        #expect(decide(.retry(error: "unauthorized", retryAfter: nil), status: 401).health == .untested)
        #expect(decide(.retry(error: "http_503", retryAfter: nil), status: 503).health == .down)
        #expect(decide(.retry(error: "timeout", retryAfter: nil), status: nil).health == .down)
        #expect(decide(.retry(error: "http_503", retryAfter: nil), status: 503, attempt: 20).outcome == .dead(status: 503, error: "attempts_exhausted: http_503"))
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

    /// Found from outside: delay-seconds of 309 digits or more (past a Double) were ignored; they
    /// are the longest wait (capped by the caller, as every wait is).
    @Test func retryAfterPastADoubleIsTheLongestWait() {
        let now = Date(timeIntervalSince1970: 1_000_000)
        #expect(RetryAfter.parse(String(repeating: "9", count: 400), now: now) == .distantFuture)
        #expect(RetryAfter.parse(String(repeating: "9", count: 400) + ".5", now: now) == .distantFuture)
        #expect(RetryAfter.longest(["5", String(repeating: "9", count: 309)], now: now) == String(repeating: "9", count: 309))
    }

    /// Sent twice: the longer wait, whichever comes first (found from outside).
    @Test func retryAfterSentTwiceIsTheLongerWait() {
        let now = Date(timeIntervalSince1970: 784_111_700) // 1994-11-06T08:48:20Z
        #expect(RetryAfter.longest(["7", "1"], now: now) == "7")
        #expect(RetryAfter.longest(["1", "7"], now: now) == "7")
        #expect(RetryAfter.longest(["soon", "1"], now: now) == "1")
        #expect(RetryAfter.longest(["30", "Sun, 06 Nov 1994 08:49:37 GMT"], now: now) == "Sun, 06 Nov 1994 08:49:37 GMT")
        #expect(RetryAfter.longest(["5"], now: now) == "5")
        #expect(RetryAfter.longest([], now: now) == nil)
        #expect(RetryAfter.longest(["soon", "later"], now: now) == "soon")  // none parses: the first, as before
        // Only the first few are read.
        #expect(RetryAfter.longest(Array(repeating: "1", count: 8) + ["99"], now: now) == "1")
    }

    /// Copies joined into one field by a proxy (`Retry-After: 3, 3`) were ignored (found from
    /// outside); a date's own comma stays in its element.
    @Test func retryAfterJoinedIntoOneFieldIsReadAsItsElements() {
        let now = Date(timeIntervalSince1970: 784_111_700) // 1994-11-06T08:48:20Z
        #expect(RetryAfter.longest(["3, 3"], now: now) == "3")
        #expect(RetryAfter.longest(["1, 7"], now: now) == "7")
        #expect(RetryAfter.longest(["2", "1,9"], now: now) == "9")
        #expect(RetryAfter.longest(["Sun, 06 Nov 1994 08:49:37 GMT"], now: now) == "Sun, 06 Nov 1994 08:49:37 GMT")
        #expect(RetryAfter.longest(["30, Sun, 06 Nov 1994 08:49:37 GMT"], now: now) == "Sun, 06 Nov 1994 08:49:37 GMT")
        #expect(RetryAfter.longest(["Sunday, 06-Nov-94 08:49:37 GMT, 5"], now: now) == "Sunday, 06-Nov-94 08:49:37 GMT")
        #expect(RetryAfter.longest(["soon, 4"], now: now) == "4")
        #expect(RetryAfter.longest(["soon, later"], now: now) == "soon, later")  // none parses: as sent
        #expect(RetryAfter.longest(["3, 3"], now: now).flatMap { RetryAfter.parse($0, now: now) } == now.addingTimeInterval(3))
        // A field of 100,000 elements is read no further than its first few.
        let long = Array(repeating: "1", count: 100_000).joined(separator: ", ") + ", 9"
        #expect(RetryAfter.elements(long).count <= 2 * RetryAfter.maxValuesRead + 1)
        #expect(RetryAfter.longest([long], now: now) == "1")
        #expect(RetryAfter.longest(["2, " + long], now: now) == "2")
    }

    /// An HTTP-date is read against the answer's `Date` (the partner's clock), not the relay's:
    /// the wait the partner meant, whatever the two clocks say (found from outside).
    @Test func retryAfterDatesAreReadAgainstTheAnswersDate() {
        let relayNow = Date(timeIntervalSince1970: 784_111_700 - 300)  // the relay five minutes slow
        let asked = "Sun, 06 Nov 1994 08:48:40 GMT"                      // 20 s after the partner's now
        let partnerNow = "Sun, 06 Nov 1994 08:48:20 GMT"
        #expect(RetryAfter.longest([asked], now: relayNow, date: partnerNow) == "20")
        #expect(RetryAfter.longest([asked, "5"], now: relayNow, date: partnerNow) == "20")
        #expect(RetryAfter.longest(["30, " + asked], now: relayNow, date: partnerNow) == "30")
        // A date already past by the partner's clock: no wait.
        #expect(RetryAfter.longest(["Sun, 06 Nov 1994 08:48:00 GMT"], now: relayNow, date: partnerNow) == "0")
        // No `Date`, or one that does not parse: read against the relay's clock, as sent.
        #expect(RetryAfter.longest([asked], now: relayNow) == asked)
        #expect(RetryAfter.longest([asked], now: relayNow, date: "yesterday") == asked)
        #expect(RetryAfter.longest(["7"], now: relayNow, date: partnerNow) == "7")
    }

    @Test func retryAfterHTTPDates() {
        let now = Date(timeIntervalSince1970: 784_111_700) // 1994-11-06T08:48:20Z
        #expect(RetryAfter.parse("Sun, 06 Nov 1994 08:49:37 GMT", now: now) == Date(timeIntervalSince1970: 784_111_777))
        #expect(RetryAfter.parse("Sunday, 06-Nov-94 08:49:37 GMT", now: now) == Date(timeIntervalSince1970: 784_111_777))
        // A date in the past means "now".
        #expect(RetryAfter.parse("Sun, 06 Nov 1994 08:00:00 GMT", now: now) == now)
    }

    @Test(arguments: ["", "soon", "-5", "Sun, 99 Nov 1994", "0x10", "1e3", "+5", "5.", ".5", "inf", "nan", "1.2.3"])
    func retryAfterGarbageIsIgnored(header: String) {
        #expect(RetryAfter.parse(header, now: Date()) == nil)
    }
}
