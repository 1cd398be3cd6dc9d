import Foundation
import Testing
@testable import CandidateRelay

@Suite struct IngestLogBudgetTests {
    let start = Date(timeIntervalSince1970: 2_000_000_000)

    @Test func aBurstThenARateWithTheCountLeftOut() {
        let budget = IngestLogBudget(perSecond: 10)
        #expect((0..<10).map { _ in budget.admit("unauthorized", now: start) } == Array(repeating: 0, count: 10))
        #expect((0..<7).map { _ in budget.admit("unauthorized", now: start) } == Array(repeating: nil, count: 7))
        // 0.25 s refills two and a half lines: two written, the first with the 7 left out.
        let later = start.addingTimeInterval(0.25)
        #expect([budget.admit("unauthorized", now: later), budget.admit("unauthorized", now: later),
                 budget.admit("unauthorized", now: later)] == [7, 0, nil])
        // The half line left over counts: another 0.06 s makes it one.
        #expect(budget.admit("unauthorized", now: later.addingTimeInterval(0.06)) == 1)
        // Idle for long: never more than a burst.
        let idle = start.addingTimeInterval(3600)
        #expect((0..<11).compactMap { _ in budget.admit("unauthorized", now: idle) }.count == 10)
    }

    @Test func eachKindHasItsOwnBudget() {
        let budget = IngestLogBudget(perSecond: 2)
        #expect([budget.admit("unauthorized", now: start), budget.admit("unauthorized", now: start),
                 budget.admit("unauthorized", now: start)] == [0, 0, nil])
        #expect([budget.admit("validation_failed", now: start), budget.admit("duplicate", now: start)] == [0, 0])
    }

    @Test func aClockThatGoesBackRefillsNothing() {
        let budget = IngestLogBudget(perSecond: 1)
        #expect(budget.admit("unauthorized", now: start) == 0)
        #expect(budget.admit("unauthorized", now: start.addingTimeInterval(-10)) == nil)
        #expect(budget.admit("unauthorized", now: start.addingTimeInterval(-9.5)) == nil)
        #expect(budget.admit("unauthorized", now: start.addingTimeInterval(-8.9)) == 2)
    }
}
