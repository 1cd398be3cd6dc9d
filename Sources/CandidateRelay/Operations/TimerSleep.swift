import NIOCore
import NIOPosix
import Synchronization

/// `Task.sleep` without its leak: on Linux (Swift 6.3) every *cancelled* `Task.sleep` leaves
/// about 100 bytes behind for good (swiftlang/swift#60441). The relay cancels sleeps all the
/// time — the timeout of every partner request, the idle wait a commit's doorbell cuts short,
/// the watch for shutdown around each delivery — so the daemon's memory grew by ~0.8 kB per
/// delivery (heaptrack: 62,706 blocks left by 20,000 deliveries; RSS +17 MB per 20,000).
///
/// This sleep is a task scheduled on one of NIO's event loops; cancelling it removes the task
/// from the loop's queue, so nothing is left behind.
enum TimerSleep {
    /// Suspends for `seconds`; throws `CancellationError` if the task is (or gets) cancelled first.
    static func sleep(seconds: Double) async throws {
        guard seconds > 0 else { return try Task.checkCancellation() }
        let nanoseconds = seconds >= 1e9 ? Int64.max : Int64(seconds * 1e9)
        let sleeper = Sleeper()
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                sleeper.start(continuation, in: .nanoseconds(nanoseconds))
            }
        } onCancel: {
            sleeper.cancel()
        }
    }

    private final class Sleeper: Sendable {
        private enum State {
            case initial
            case waiting(CheckedContinuation<Void, any Error>, Scheduled<Void>)
            /// The timer fired before the continuation was stored.
            case firedEarly
            /// Cancelled before the continuation was stored.
            case cancelledEarly
            case finished
        }
        private let state = Mutex(State.initial)

        func start(_ continuation: CheckedContinuation<Void, any Error>, in delay: TimeAmount) {
            let scheduled = MultiThreadedEventLoopGroup.singleton.any().scheduleTask(in: delay) { self.fire() }
            let early = state.withLock { state -> State? in
                guard case .initial = state else {
                    let early = state
                    state = .finished
                    return early
                }
                state = .waiting(continuation, scheduled)
                return nil
            }
            switch early {
            case nil: break
            case .firedEarly?: continuation.resume()
            default:
                scheduled.cancel()
                continuation.resume(throwing: CancellationError())
            }
        }

        private func fire() {
            let continuation = state.withLock { state -> CheckedContinuation<Void, any Error>? in
                switch state {
                case .initial:
                    state = .firedEarly
                    return nil
                case .waiting(let continuation, _):
                    state = .finished
                    return continuation
                case .firedEarly, .cancelledEarly, .finished:
                    return nil
                }
            }
            continuation?.resume()
        }

        func cancel() {
            let waiting = state.withLock { state -> (CheckedContinuation<Void, any Error>, Scheduled<Void>)? in
                switch state {
                case .initial:
                    state = .cancelledEarly
                    return nil
                case .waiting(let continuation, let scheduled):
                    state = .finished
                    return (continuation, scheduled)
                case .firedEarly, .cancelledEarly, .finished:
                    return nil
                }
            }
            guard let (continuation, scheduled) = waiting else { return }
            scheduled.cancel()
            continuation.resume(throwing: CancellationError())
        }
    }
}
