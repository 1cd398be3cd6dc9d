import Foundation

/// Runs `operation` for at most `seconds`: past that it is cancelled and the result is nil.
///
/// AsyncHTTPClient's request timeout ends when the response head arrives; a partner that sends
/// headers and then stalls its body would hold a worker (and its lease, and perhaps the circuit
/// breaker's probe) for ever. Reading the body inside this bound, and relying on the client's
/// support for task cancellation (it closes the connection), bounds the whole answer.
func withDeadline<T: Sendable>(seconds: Double, _ operation: @escaping @Sendable () async throws -> T) async throws -> T? {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try await TimerSleep.sleep(seconds: seconds)  // cancelled by nearly every request: not Task.sleep
            return nil
        }
        defer { group.cancelAll() }
        return try await group.next() ?? nil
    }
}
