import Foundation
import Synchronization

/// Wakes idle workers the moment ingest commits an event, so an idle relay has no polling delay;
/// `wait(upTo:unlessRungSince:)` also returns after a timeout, the polling fallback that notices
/// changes made by admin commands in another process.
///
/// An event count: a waiter reads `rings` *before* it looks for work (or checks for draining),
/// and its wait returns at once if the bell rang since. A ring between the look and the wait is
/// never lost, whoever else was waiting then. (It used to be a flag set only when nobody waited:
/// a worker between its drain check and its wait slept out its 1 s poll after SIGTERM while the
/// other workers took the ring.)
public final class Doorbell: Sendable {
    private struct State {
        /// In the order they began to wait.
        var waiters: [(id: Int, continuation: CheckedContinuation<Void, Never>)] = []
        var rings = 0
        /// Waiters' ids: a counter, not `UUID()`, which reads /dev/urandom on Linux (an open and
        /// a close per wait).
        var nextID = 0
    }
    private let state = Mutex(State())

    public init() {}

    /// How many times the bell has rung: read before looking for work, then passed to `wait`.
    public var rings: Int { state.withLock { $0.rings } }

    /// How many wait for a ring now.
    var waiting: Int { state.withLock { $0.waiters.count } }

    /// Wakes every waiter, and cuts short every later wait by one who read `rings` before now.
    public func ring() { ring(waking: .max) }

    /// Wakes at most `count` waiters, those waiting longest, and cuts short every later wait by
    /// one who read `rings` before now (as `ring()`: no ring is lost by a worker on its way to
    /// its wait). For one new event: waking every idle worker for it sent sixteen to claim it,
    /// fifteen of them to find nothing, look up the next due time and wait again: at 200
    /// events a second, a fifth of the daemon's CPU (4.9 s per 1,000 events, 3.8 s without).
    public func ring(waking count: Int) {
        let woken = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.rings &+= 1
            let woken = min(max(count, 0), state.waiters.count)
            defer { state.waiters.removeFirst(woken) }
            return state.waiters.prefix(woken).map(\.continuation)
        }
        for waiter in woken { waiter.resume() }
    }

    /// Returns when rung after `seen` (a value of `rings`; at once if it has already), after
    /// `seconds`, or when the task is cancelled.
    public func wait(upTo seconds: Double, unlessRungSince seen: Int) async {
        // Rung already (the common case while ingest runs): no task group, no timer.
        guard let id = state.withLock({ state -> Int? in
            if state.rings != seen { return nil }
            state.nextID += 1
            return state.nextID
        }) else { return }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await withTaskCancellationHandler {
                    await withCheckedContinuation { continuation in
                        let resumeNow = self.state.withLock { state -> Bool in
                            if state.rings != seen || Task.isCancelled { return true }
                            state.waiters.append((id, continuation))
                            return false
                        }
                        if resumeNow { continuation.resume() }
                    }
                } onCancel: {
                    // Gone already when a ring took it: that ring resumes it.
                    let waiter = self.state.withLock { state in
                        state.waiters.firstIndex { $0.id == id }.map { state.waiters.remove(at: $0).continuation }
                    }
                    waiter?.resume()
                }
            }
            group.addTask {
                try? await TimerSleep.sleep(seconds: seconds)  // cut short by every ring: not Task.sleep
            }
            await group.next()
            group.cancelAll()
        }
    }
}

/// The start of draining, which every delivery and every admission races: awaited on a
/// continuation, so the thousands of waits a second that end without it cost no timer (an
/// earlier 50 ms poll put a timer on an event loop, and cancelled it, twice per delivery).
final class DrainSignal: Sendable {
    private struct State {
        var started = false
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextID = 0
    }
    private let state = Mutex(State())

    var hasStarted: Bool { state.withLock { $0.started } }

    /// Marks draining as started and wakes every waiter.
    func start() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.started = true
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once draining has started, or when the task is cancelled.
    func wait() async {
        let id = state.withLock { state -> Int in
            state.nextID += 1
            return state.nextID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.started || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume()
        }
    }
}

/// Unstructured tasks that must finish before their owner stops (a worker's outcome writes).
final class TaskTracker: Sendable {
    private struct State {
        var running = 0
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = Mutex(State())

    /// Runs `body` in a task of its own (not cancelled with the caller).
    func run(_ body: @escaping @Sendable () async -> Void) {
        state.withLock { $0.running += 1 }
        Task {
            await body()
            let waiters = self.state.withLock { state -> [CheckedContinuation<Void, Never>] in
                state.running -= 1
                guard state.running == 0 else { return [] }
                defer { state.waiters.removeAll() }
                return state.waiters
            }
            for waiter in waiters { waiter.resume() }
        }
    }

    /// Returns once no task is running.
    func waitForAll() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLock { state -> Bool in
                if state.running == 0 { return true }
                state.waiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }
}
