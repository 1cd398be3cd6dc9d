import Foundation
import Testing
@testable import CandidateRelay

@Suite struct IngestLogBudgetTests {
    let start = Date(timeIntervalSince1970: 2_000_000_000)
    let unauthorized = IngestLogBudget.Kind(code: "unauthorized", account: "default")

    @Test func aBurstThenARateWithTheCountLeftOut() {
        let budget = IngestLogBudget(perSecond: 10)
        #expect((0..<10).map { _ in budget.admit(unauthorized, now: start) } == Array(repeating: 0, count: 10))
        #expect((0..<7).map { _ in budget.admit(unauthorized, now: start) } == Array(repeating: nil, count: 7))
        // 0.25 s refills two and a half lines: two written, the first with the 7 left out.
        let later = start.addingTimeInterval(0.25)
        #expect([budget.admit(unauthorized, now: later), budget.admit(unauthorized, now: later),
                 budget.admit(unauthorized, now: later)] == [7, 0, nil])
        // The half line left over counts: another 0.06 s makes it one.
        #expect(budget.admit(unauthorized, now: later.addingTimeInterval(0.06)) == 1)
        // Idle for long: never more than a burst.
        let idle = start.addingTimeInterval(3600)
        #expect((0..<11).compactMap { _ in budget.admit(unauthorized, now: idle) }.count == 10)
    }

    @Test func eachKindInEachAccountHasItsOwnBudget() {
        let budget = IngestLogBudget(perSecond: 2)
        #expect([budget.admit(unauthorized, now: start), budget.admit(unauthorized, now: start),
                 budget.admit(unauthorized, now: start)] == [0, 0, nil])
        #expect([budget.admit(.init(code: "validation_failed", account: "default"), now: start),
                 budget.admit(.init(code: "duplicate", account: "default"), now: start),
                 budget.admit(.init(code: "unauthorized", account: "acme"), now: start)] == [0, 0, 0])
    }

    /// Floods on many accounts at once stay under the overall rate.
    @Test func allKindsTogetherStayUnderTheOverallRate() {
        let budget = IngestLogBudget(perSecond: 10, overall: 50)
        var written = 0
        for second in 0..<30 {
            for account in 0..<40 {
                for _ in 0..<20 where budget.admit(.init(code: "unauthorized", account: "a\(account)"), now: start.addingTimeInterval(Double(second))) != nil {
                    written += 1
                }
            }
        }
        #expect(written <= 50 * 30 + 50)
        #expect(written >= 50 * 30)
    }

    /// Found from outside: one connection looping the six reasons of a 401 on one account took
    /// 60 lines a second, past the overall 50, and another account's sender's 422s were all
    /// left out. One code's reasons in one account write at most twice a kind's rate together.
    @Test func oneAccountsFloodOfEveryReasonLeavesRoomForOthers() {
        let budget = IngestLogBudget(perSecond: 10, overall: 50)
        let reasons = ["credentials_missing", "signature_headers_incomplete", "timestamp_invalid",
                       "timestamp_out_of_tolerance", "signature_mismatch", "token_mismatch"]
        var flood = 0
        var other = 0
        for tick in 0..<100 {  // 10 s, a tenth of a second at a time
            let now = start.addingTimeInterval(Double(tick) / 10)
            for _ in 0..<20 {
                for reason in reasons where budget.admit(.init(code: "unauthorized", account: "acme", reason: reason), now: now) != nil {
                    flood += 1
                }
            }
            if budget.admit(.init(code: "validation_failed", account: "acme-eu"), now: now) != nil { other += 1 }
        }
        #expect(flood <= 20 * 10 + 20, "\(flood)")
        #expect(other == 100)  // every one of the other sender's lines written
    }

    /// Review of that fix: the same client flooding 401s and 413s on two accounts still took the
    /// whole overall budget. What only an authenticated sender meets has an overall budget of its own.
    @Test func floodsWithoutCredentialsLeaveAuthenticatedSendersTheirLines() {
        let budget = IngestLogBudget(perSecond: 10, overall: 50)
        var other = 0
        for tick in 0..<100 {
            let now = start.addingTimeInterval(Double(tick) / 10)
            for account in ["acme", "globex"] {
                for _ in 0..<20 {
                    _ = budget.admit(.init(code: "unauthorized", account: account, reason: "token_mismatch"), now: now)
                    _ = budget.admit(.init(code: "unauthorized", account: account, reason: "credentials_missing"), now: now)
                    _ = budget.admit(.init(code: "payload_too_large", account: account), now: now)
                }
            }
            if budget.admit(.init(code: "validation_failed", account: "initech"), now: now) != nil { other += 1 }
        }
        #expect(other == 100)
    }

    @Test func aClockThatGoesBackRefillsNothing() {
        let budget = IngestLogBudget(perSecond: 1)
        #expect(budget.admit(unauthorized, now: start) == 0)
        #expect(budget.admit(unauthorized, now: start.addingTimeInterval(-10)) == nil)
        #expect(budget.admit(unauthorized, now: start.addingTimeInterval(-9.5)) == nil)
        #expect(budget.admit(unauthorized, now: start.addingTimeInterval(-8.9)) == 2)
    }

    /// A flood that ends with lines left out gets them counted once it has been quiet a second.
    @Test func linesLeftOutAtTheEndOfAFloodAreReportedOnceItIsQuiet() {
        let budget = IngestLogBudget(perSecond: 10)
        for _ in 0..<25 { _ = budget.admit(unauthorized, now: start) }
        #expect(budget.quietLeftOut(now: start.addingTimeInterval(0.5)).isEmpty)
        let quiet = budget.quietLeftOut(now: start.addingTimeInterval(1))
        #expect(quiet.map(\.kind) == [unauthorized] && quiet.map(\.suppressed) == [15])
        #expect(budget.quietLeftOut(now: start.addingTimeInterval(2)).isEmpty)
        #expect(budget.admit(unauthorized, now: start.addingTimeInterval(3)) == 0)
    }
}
