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
