import Synchronization
import Testing
@testable import CandidateRelay

@Suite struct SharedRefreshTests {
    final class Counter: Sendable {
        let runs = Atomic(0)
    }

    @Test func concurrentCallersShareOneRunAndARecentResult() async {
        let shared = SharedRefresh<Int>(reuse: .seconds(3600), scalesWithCost: false)
        let counter = Counter()
        let values = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<100 {
                group.addTask {
                    await shared.value {
                        try? await Task.sleep(for: .milliseconds(20))
                        return counter.runs.add(1, ordering: .relaxed).newValue
                    }
                }
            }
            return await group.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(values == Array(repeating: 1, count: 100))
        #expect(await shared.value { counter.runs.add(1, ordering: .relaxed).newValue } == 1)
        #expect(counter.runs.load(ordering: .relaxed) == 1)
    }

    @Test func aResultNotKeptIsNotReused() async {
        let shared = SharedRefresh<Bool>(reuse: .seconds(3600), scalesWithCost: false, keeping: { $0 })
        let counter = Counter()
        #expect(await shared.value { counter.runs.add(1, ordering: .relaxed); return false } == false)
        #expect(await shared.value { counter.runs.add(1, ordering: .relaxed); return true } == true)
        #expect(await shared.value { counter.runs.add(1, ordering: .relaxed); return false } == true)
        #expect(counter.runs.load(ordering: .relaxed) == 2)
    }

    /// Readiness: a write that took long (waiting for the writer queue) does not stand longer.
    @Test func withoutReuseEachCallerAfterARunRunsAgainWhateverItCost() async {
        let shared = SharedRefresh<Int>(reuse: .zero, scalesWithCost: false)
        let counter = Counter()
        for n in 1...3 {
            #expect(await shared.value {
                try? await Task.sleep(for: .milliseconds(50))
                return counter.runs.add(1, ordering: .relaxed).newValue
            } == n)
        }
    }

    /// A read that takes long stands longer: asking for it costs at most a twentieth of a core.
    @Test func aCostlyResultStandsTwentyTimesWhatItTook() {
        #expect(SharedRefresh<Void>.standing(reuse: .seconds(1), took: .milliseconds(10)) == .seconds(1))
        #expect(SharedRefresh<Void>.standing(reuse: .seconds(1), took: .milliseconds(1300)) == .seconds(26))
        #expect(SharedRefresh<Void>.standing(reuse: .zero, took: .milliseconds(5)) == .milliseconds(100))
    }
}
