import Foundation
import Synchronization
import Testing
@testable import CandidateRelay

/// The doorbell is an event count: a ring between a worker's look for work (or drain check) and
/// its wait must cut that wait short, whoever else was waiting when it rang. The waits here are
/// an hour long, raced against a 60 s bound: a lost ring shows as the bound winning.
@Suite struct DoorbellTests {
    /// Runs `wait` against a 60 s bound; true if `wait` returned first.
    private func returnsSoon(_ wait: @escaping @Sendable () async -> Void) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask { await wait(); return true }
            group.addTask { try? await TimerSleep.sleep(seconds: 60); return false }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
    }

    /// The case that held SIGTERM for a second: other workers were waiting when the bell rang,
    /// so the old flag ("rung, for the next to wait") was not set, and this worker, still
    /// between its drain check and its wait, slept out its poll.
    @Test func aRingBetweenTheLookAndTheWaitIsNotLostWhileOthersWait() async throws {
        let bell = Doorbell()
        let other = Task { await bell.wait(upTo: 3600, unlessRungSince: bell.rings) }
        // The other waiter is registered (or the ring below ends its wait as rung anyway).
        try await Task.sleep(for: .milliseconds(50))
        let seen = bell.rings  // this worker looks for work: nothing
        bell.ring()            // SIGTERM, or an event stored, before it waits
        #expect(await returnsSoon { await bell.wait(upTo: 3600, unlessRungSince: seen) })
        #expect(await returnsSoon { await other.value })
    }

    @Test func aRingBeforeTheLookDoesNotCutTheWaitShort() async throws {
        let bell = Doorbell()
        bell.ring()
        let seen = bell.rings
        let started = ContinuousClock.now
        await bell.wait(upTo: 0.2, unlessRungSince: seen)
        #expect(ContinuousClock.now - started >= .milliseconds(200))
    }

    @Test func aRingWakesEveryWaiter() async throws {
        let bell = Doorbell()
        let seen = bell.rings
        let waiters = (0..<8).map { _ in Task { await bell.wait(upTo: 3600, unlessRungSince: seen) } }
        try await Task.sleep(for: .milliseconds(50))
        bell.ring()
        for waiter in waiters { #expect(await returnsSoon { await waiter.value }) }
    }

    /// An event stored wakes one idle worker, the one waiting longest, not all of them; the
    /// others wait on until another ring (or their poll).
    @Test func aRingForOneWakesTheLongestWaitingOnly() async throws {
        let bell = Doorbell()
        let seen = bell.rings
        let returned = Returned()
        var started: [Task<Void, Never>] = []
        for index in 0..<3 {
            started.append(Task {
                await bell.wait(upTo: 3600, unlessRungSince: seen)
                returned.order.withLock { $0.append(index) }
            })
            try await registered(bell, index + 1)  // registered in this order
        }
        let waiters = started
        bell.ring(waking: 1)
        #expect(await returnsSoon { await waiters[0].value })
        try await Task.sleep(for: .milliseconds(200))
        #expect(returned.order.withLock { $0 } == [0])
        bell.ring(waking: 5)  // more than wait: every one left
        #expect(await returnsSoon { await waiters[1].value })
        #expect(await returnsSoon { await waiters[2].value })
    }

    /// Waking one waiter does not lose the ring for a worker on its way to its wait.
    @Test func aRingForOneStillCutsShortTheWaitOfOneOnItsWay() async throws {
        let bell = Doorbell()
        let other = Task { await bell.wait(upTo: 3600, unlessRungSince: bell.rings) }
        try await registered(bell, 1)
        let seen = bell.rings
        bell.ring(waking: 1)  // takes the registered waiter
        #expect(await returnsSoon { await bell.wait(upTo: 3600, unlessRungSince: seen) })
        #expect(await returnsSoon { await other.value })
    }

    /// Returns once `count` tasks wait on `bell` (at most 60 s).
    private func registered(_ bell: Doorbell, _ count: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(60)
        while bell.waiting < count && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(2)) }
        try #require(bell.waiting == count)
    }

    private final class Returned: Sendable {
        let order = Mutex<[Int]>([])
    }

    @Test func cancellationEndsTheWait() async throws {
        let bell = Doorbell()
        let waiter = Task { await bell.wait(upTo: 3600, unlessRungSince: bell.rings) }
        try await Task.sleep(for: .milliseconds(20))
        waiter.cancel()
        #expect(await returnsSoon { await waiter.value })
    }
}
