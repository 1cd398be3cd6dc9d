import Foundation
import Synchronization

/// Runs `operation` for at most `seconds`: past that it is cancelled and the result is nil.
///
/// AsyncHTTPClient's request timeout ends when the response head arrives; a partner that sends
/// headers and then stalls its body would hold a worker (and its lease, and perhaps the circuit
/// breaker's probe) for ever. Reading the body inside this bound, and relying on the client's
/// support for task cancellation (it closes the connection), bounds the whole answer.
///
/// Every partner request runs inside one, so it is cheap: the operation runs in a task of its
/// own, registered with `DeadlineReaper.shared`, one watcher that wakes only when the earliest
/// registered deadline is due. (A timer per request, set and cancelled from the worker's thread,
/// woke an event loop twice per request: ~5 % of the daemon's CPU while delivering.)
func withDeadline<T: Sendable>(seconds: Double, _ operation: @escaping @Sendable () async throws -> T) async throws -> T? {
    try await DeadlineReaper.shared.run(seconds: seconds, operation)
}

final class DeadlineReaper: Sendable {
    static let shared = DeadlineReaper()

    private struct Entry {
        var deadline: ContinuousClock.Instant
        var cancel: @Sendable () -> Void
    }
    private struct State {
        var entries: [Int: Entry] = [:]
        var nextID = 0
        var watching = false
        /// The earliest deadline at the watcher's last scan (nil: none).
        var wakeAt: ContinuousClock.Instant?
        /// An entry earlier than `wakeAt` arrived while the watcher was not parked: scan again.
        var rescan = false
        /// The parked watcher, and which park it is (a timer may only end its own).
        var parked: (continuation: CheckedContinuation<Void, Never>, generation: Int)?
        var generation = 0
    }
    private let state = Mutex(State())

    func run<T: Sendable>(seconds: Double, _ operation: @escaping @Sendable () async throws -> T) async throws -> T? {
        let timedOut = Atomic<Bool>(false)
        let task = Task { try await operation() }
        let deadline = ContinuousClock.now + .nanoseconds(Int64(min(max(seconds, 0), 1e9) * 1e9))
        let id = register(deadline) {
            timedOut.store(true, ordering: .releasing)
            task.cancel()
        }
        defer { _ = state.withLock { $0.entries.removeValue(forKey: id) } }
        let result = await withTaskCancellationHandler {
            await task.result
        } onCancel: {
            task.cancel()
        }
        // Past the deadline only a failure (the cancellation) is a timeout: an answer that
        // arrived in the same instant is kept.
        if timedOut.load(ordering: .acquiring), case .failure = result { return nil }
        return try result.get()
    }

    private func register(_ deadline: ContinuousClock.Instant, cancel: @escaping @Sendable () -> Void) -> Int {
        let (id, wake, start) = state.withLock { state -> (Int, CheckedContinuation<Void, Never>?, Bool) in
            state.nextID += 1
            state.entries[state.nextID] = Entry(deadline: deadline, cancel: cancel)
            let start = !state.watching
            state.watching = true
            // The usual case (same timeout, later than every deadline registered before it)
            // leaves the watcher alone.
            guard state.wakeAt.map({ deadline < $0 }) ?? true else { return (state.nextID, nil, start) }
            state.wakeAt = deadline
            guard let parked = state.parked else {
                state.rescan = true
                return (state.nextID, nil, start)
            }
            state.parked = nil
            return (state.nextID, parked.continuation, start)
        }
        wake?.resume()
        if start { Task.detached { await self.watch() } }
        return id
    }

    /// Cancels what is due, then waits until the earliest deadline left: parked, woken by a
    /// timer at that deadline, or by `register` when a sooner one arrives.
    private func watch() async {
        while true {
            let now = ContinuousClock.now
            let (due, next) = state.withLock { state -> ([@Sendable () -> Void], ContinuousClock.Instant?) in
                state.rescan = false
                var due: [@Sendable () -> Void] = []
                var next: ContinuousClock.Instant?
                for (id, entry) in state.entries {
                    if entry.deadline <= now {
                        due.append(entry.cancel)
                        state.entries.removeValue(forKey: id)
                    } else if next.map({ entry.deadline < $0 }) ?? true {
                        next = entry.deadline
                    }
                }
                state.wakeAt = next
                return (due, next)
            }
            for cancel in due { cancel() }
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let generation = state.withLock { state -> Int? in
                    if state.rescan { return nil }
                    state.generation += 1
                    state.parked = (continuation, state.generation)
                    return state.generation
                }
                guard let generation else { return continuation.resume() }
                guard let next else { return }
                let delay = now.duration(to: next)
                let seconds = Double(delay.components.seconds) + Double(delay.components.attoseconds) / 1e18
                Task.detached {
                    try? await TimerSleep.sleep(seconds: seconds + 0.001)
                    let parked = self.state.withLock { state -> CheckedContinuation<Void, Never>? in
                        guard let parked = state.parked, parked.generation == generation else { return nil }
                        state.parked = nil
                        return parked.continuation
                    }
                    parked?.resume()
                }
            }
        }
    }
}
