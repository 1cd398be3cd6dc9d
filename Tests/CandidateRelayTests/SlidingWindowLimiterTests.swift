import Foundation
import Testing
@testable import CandidateRelay

/// The partner allows 100 requests per 60 s: in no window of 60 s may more *arrive* there, with
/// an injected clock (a token bucket bursting 100 after a full window would fail these tests,
/// and so would a window that counts send times while connects and answers take time).
@Suite struct SlidingWindowLimiterTests {
    /// Greedy sender: tries to send at every `step` seconds for `duration`, each request
    /// answered at once; returns send times.
    static func simulate(limit: Int, window: Double, step: Double, duration: Double, history: [Date] = []) -> [Date] {
        var limiter = SlidingWindowLimiter(limit: limit, window: window, history: history)
        var sent: [Date] = []
        for i in 0..<Int((duration / step).rounded()) {
            let now = Date(timeIntervalSince1970: Double(i) * step)
            if let ticket = limiter.reserve(now: now) {
                sent.append(now)
                limiter.finish(ticket, now: now)
            }
        }
        return sent
    }

    static func maxInAnyWindow(_ times: [Date], window: Double) -> Int {
        let times = times.sorted()
        var best = 0
        for (i, start) in times.enumerated() {
            let count = times[i...].prefix { $0.timeIntervalSince(start) < window }.count
            best = max(best, count)
        }
        return best
    }

    @Test func neverMoreThanTheLimitInAnyWindow() {
        let sent = Self.simulate(limit: 100, window: 60, step: 0.05, duration: 600)
        #expect(Self.maxInAnyWindow(sent, window: 60) == 100)
        // And it does use its budget: 10 windows, 100 each.
        #expect(sent.count == 1000)
    }

    @Test func burstThenWaitsForTheOldestToLeaveTheWindow() {
        var limiter = SlidingWindowLimiter(limit: 3, window: 10)
        let t0 = Date(timeIntervalSince1970: 0)
        var results: [Bool] = []
        func send(at offset: Double) {
            let now = t0.addingTimeInterval(offset)
            if let ticket = limiter.reserve(now: now) {
                limiter.finish(ticket, now: now)
                results.append(true)
            } else {
                results.append(false)
            }
        }
        for offset in [0, 1, 2, 9.9] { send(at: offset) }
        let allowedAt = limiter.earliestAllowed(now: t0.addingTimeInterval(5))
        for offset in [10, 10.5, 11] { send(at: offset) }
        #expect(results == [true, true, true, false, true, false, true])
        #expect(allowedAt == t0.addingTimeInterval(10))
    }

    /// The defect this replaced: a slot stamped at send time, then a slow connect or a slow
    /// answer, let a request arrive late and share a partner window with the next burst. Here
    /// each request arrives anywhere between its send and its answer (up to 3 s later), and no
    /// partner window may ever hold more than the limit.
    @Test func arrivalsNeverExceedTheLimitWhateverTheLatency() {
        var limiter = SlidingWindowLimiter(limit: 10, window: 5)
        var generator = SystemRandomNumberGenerator()
        var outstanding: [(ticket: SlidingWindowLimiter.Ticket, answeredAt: Double)] = []
        var arrivals: [Date] = []
        var t = 0.0
        while t < 300 {
            t += Double.random(in: 0..<0.05, using: &generator)
            let now = Date(timeIntervalSince1970: t)
            outstanding.removeAll { request in
                guard request.answeredAt <= t else { return false }
                limiter.finish(request.ticket, now: Date(timeIntervalSince1970: request.answeredAt))
                return true
            }
            guard let ticket = limiter.reserve(now: now) else { continue }
            let latency = Double.random(in: 0..<3, using: &generator)
            // Worst cases for the partner's window: arrival right at the send or right at the answer.
            let arrival = Bool.random(using: &generator) ? t : t + latency
            arrivals.append(Date(timeIntervalSince1970: arrival))
            outstanding.append((ticket, t + latency))
        }
        #expect(arrivals.count > 100)
        #expect(Self.maxInAnyWindow(arrivals, window: 5) <= 10)
    }

    /// While `limit` requests are out, nothing more goes, however old they are.
    @Test func requestsInFlightHoldTheirPlace() {
        var limiter = SlidingWindowLimiter(limit: 2, window: 1)
        let t0 = Date(timeIntervalSince1970: 0)
        let first = limiter.reserve(now: t0)
        let second = limiter.reserve(now: t0)
        #expect(first != nil && second != nil)
        #expect(limiter.reserve(now: t0.addingTimeInterval(30)) == nil)
        #expect(limiter.earliestAllowed(now: t0.addingTimeInterval(30)) == nil)
        limiter.finish(first!, now: t0.addingTimeInterval(30))
        #expect(limiter.earliestAllowed(now: t0.addingTimeInterval(30)) == t0.addingTimeInterval(31))
        #expect(limiter.reserve(now: t0.addingTimeInterval(31)) != nil)
    }

    @Test func historyFromBeforeARestartCounts() {
        let history = (0..<100).map { Date(timeIntervalSince1970: -30 + Double($0) * 0.1) }
        var limiter = SlidingWindowLimiter(limit: 100, window: 60, history: history)
        let reserved = limiter.reserve(now: Date(timeIntervalSince1970: 0))
        #expect(reserved == nil)
        let allowedAt = limiter.earliestAllowed(now: Date(timeIntervalSince1970: 0))
        #expect(allowedAt == Date(timeIntervalSince1970: 30))
    }

    @Test func zeroMeansUnlimited() {
        let sent = Self.simulate(limit: 0, window: 60, step: 0.01, duration: 10)
        #expect(sent.count == 1000)
    }
}

@Suite struct CircuitBreakerTests {
    @Test func opensAfterConsecutiveFailuresThenProbesOnce() {
        var breaker = CircuitBreaker(failures: 3, cooldown: 30)
        let t0 = Date(timeIntervalSince1970: 0)
        let opened = [breaker.recordFailure(now: t0), breaker.recordFailure(now: t0), breaker.recordFailure(now: t0)]
        let admissions = [
            breaker.admit(now: t0.addingTimeInterval(29)),
            breaker.admit(now: t0.addingTimeInterval(30)),
            breaker.admit(now: t0.addingTimeInterval(30)),
        ]
        let closed = breaker.recordSuccess()
        let afterwards = breaker.admit(now: t0.addingTimeInterval(31))
        #expect(opened == [false, false, true])
        #expect(admissions == [.wait(until: t0.addingTimeInterval(30)), .send(probe: true), .wait(until: nil)])
        #expect(closed)
        #expect(afterwards == .send(probe: false))
    }

    @Test func failedProbeReopens() {
        var breaker = CircuitBreaker(failures: 1, cooldown: 10)
        let t0 = Date(timeIntervalSince1970: 0)
        let opened = breaker.recordFailure(now: t0)
        let probe = breaker.admit(now: t0.addingTimeInterval(10))
        let reopened = breaker.recordFailure(now: t0.addingTimeInterval(11))
        let waiting = breaker.admit(now: t0.addingTimeInterval(20))
        #expect(opened && reopened)
        #expect(probe == .send(probe: true))
        #expect(waiting == .wait(until: t0.addingTimeInterval(21)))
    }

    @Test func successResetsTheCount() {
        var breaker = CircuitBreaker(failures: 2, cooldown: 10)
        let t0 = Date(timeIntervalSince1970: 0)
        let results = [breaker.recordFailure(now: t0), breaker.recordSuccess(), breaker.recordFailure(now: t0)]
        #expect(results == [false, false, false])
        #expect(breaker.admit(now: t0) == .send(probe: false))
    }

    /// Each request of `times` sent and answered at once.
    static func sendAndAnswer(_ limiter: inout SlidingWindowLimiter, at times: [Date]) {
        for at in times {
            let ticket = limiter.reserve(now: at)!
            limiter.finish(ticket, now: at)
        }
    }

    /// A reload that turns a limit on, or widens its window, counts what was sent before (the
    /// outbox's history, and requests still out). It forgot them: 10 more went at once, and the
    /// partner saw 20 in 60 s under a limit of 10 (found from outside).
    @Test func aLimitTurnedOnOrWidenedCountsWhatWasAlreadySent() {
        let t0 = Date(timeIntervalSince1970: 1_000)
        let tenthsApart = (0..<10).map { t0.addingTimeInterval(Double($0) * 0.1) }
        // Unlimited: 9 answered (the history) and one still out.
        var limiter = SlidingWindowLimiter(limit: 0, window: 60)
        let answered = Array(tenthsApart.prefix(9))
        Self.sendAndAnswer(&limiter, at: answered)
        _ = limiter.reserve(now: t0.addingTimeInterval(1))!
        limiter.reconfigure(limit: 10, window: 60, history: answered)
        #expect(limiter.reserve(now: t0.addingTimeInterval(3)) == nil)
        #expect(limiter.earliestAllowed(now: t0.addingTimeInterval(3)) == t0.addingTimeInterval(60))

        // 10 per 10 s, 10 sent; 12 s later the window widens to 60 s: full until they are 60 s old.
        let sent = tenthsApart
        var widened = SlidingWindowLimiter(limit: 10, window: 10)
        Self.sendAndAnswer(&widened, at: sent)
        #expect(widened.reserve(now: t0.addingTimeInterval(12)) != nil)  // the old window let it go
        var again = SlidingWindowLimiter(limit: 10, window: 10)
        Self.sendAndAnswer(&again, at: sent)
        _ = again.earliestAllowed(now: t0.addingTimeInterval(12))  // the 10 s window drops them
        again.reconfigure(limit: 10, window: 60, history: sent)
        #expect(again.reserve(now: t0.addingTimeInterval(12)) == nil)
        #expect(again.reserve(now: t0.addingTimeInterval(60.1)) != nil)

        // Narrowing keeps what the window holds; no history is needed.
        var narrowed = SlidingWindowLimiter(limit: 2, window: 60, history: [t0, t0])
        narrowed.reconfigure(limit: 2, window: 30, history: [])
        #expect(narrowed.reserve(now: t0.addingTimeInterval(10)) == nil)
    }

}
