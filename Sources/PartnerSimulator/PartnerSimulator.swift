import Foundation
import Hummingbird
import Logging
// Hummingbird's own public API is built on ServiceLifecycle, so the module is always there;
// it is used only to stop a `start()`ed simulator gracefully, never exposed.
import ServiceLifecycle
import Synchronization

/// A Comeet-compatible partner ATS on loopback, for the demo mode, `candidate-relay
/// partner-sim` and end-to-end tests. See CONTRACT section 7.
///
/// Two ways to run it: `start()`/`stop()` (tests and the demo: serve in the background, learn
/// the port) or `run()` (block until cancelled, e.g. wrapped as a ServiceLifecycle `Service`:
/// Hummingbird inherits the enclosing group's graceful shutdown through the task).
public final class PartnerSimulator: Sendable {
    /// Errors of the start/stop lifecycle.
    public enum LifecycleError: Error {
        case alreadyStarted
        case stoppedBeforeListening
    }

    private struct Lifecycle {
        var task: Task<Void, Never>?
        var group: ServiceGroup?
        var port: Int?
    }

    public let configuration: PartnerSimulatorConfiguration
    let logger: Logger
    let store: SimulatorStore
    private let lifecycle = Mutex(Lifecycle())

    public init(configuration: PartnerSimulatorConfiguration, logger: Logger = Logger(label: "partner-sim")) {
        self.configuration = configuration
        self.logger = logger
        self.store = SimulatorStore(faults: configuration.faults)
    }

    /// The bound port once listening, else the configured one.
    public var port: Int {
        lifecycle.withLock { $0.port } ?? configuration.port
    }

    /// Base URL clients should use, e.g. `http://127.0.0.1:54321`.
    public var baseURL: String {
        "http://\(configuration.host):\(port)"
    }

    /// Replaces the active faults (also possible over HTTP with `PUT /_sim/faults`).
    public func setFaults(_ faults: SimulatorFaults) async {
        store.setFaults(faults)
    }

    /// What the simulator has received and created so far.
    public func snapshot() async -> SimulatorSnapshot {
        store.snapshot()
    }

    /// Serves in a background task and returns the bound port once the socket listens, so a
    /// caller can use `baseURL` at once. Throws if binding fails.
    public func start() async throws -> Int {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Int, any Error>) in
            let resumer = ResumeOnce(continuation)
            let started = lifecycle.withLock { state -> Bool in
                guard state.task == nil else { return false }
                let app = makeApplication { port in resumer.resume(with: .success(port)) }
                // A group of our own, without signals, so stop() can shut it down gracefully.
                let group = ServiceGroup(
                    configuration: .init(services: [app], gracefulShutdownSignals: [], logger: logger))
                state.group = group
                state.task = Task {
                    do {
                        try await group.run()
                        resumer.resume(with: .failure(LifecycleError.stoppedBeforeListening))
                    } catch {
                        resumer.resume(with: .failure(error))
                        self.logger.error("partner-sim stopped", metadata: ["error": "\(error)"])
                    }
                }
                return true
            }
            if !started { resumer.resume(with: .failure(LifecycleError.alreadyStarted)) }
        }
    }

    /// Stops a simulator started with `start()`: stops accepting, lets requests in progress
    /// finish, closes idle connections, and returns once the server has stopped.
    public func stop() async {
        let (task, group) = lifecycle.withLock { state -> (Task<Void, Never>?, ServiceGroup?) in
            defer { (state.task, state.group) = (nil, nil) }
            return (state.task, state.group)
        }
        guard let task else { return }
        store.stopping = true
        await group?.triggerGracefulShutdown()
        await task.value
        lifecycle.withLock { $0.port = nil }
    }

    /// Serves until the task is cancelled or, inside a ServiceGroup (e.g. wrapped as a
    /// `Service` by the caller), until that group's graceful shutdown.
    public func run() async throws {
        try await makeApplication(onListening: nil).run()
    }

    /// Builds the router and the Hummingbird application on the configured address.
    private func makeApplication(
        onListening: (@Sendable (Int) -> Void)?
    ) -> Application<RouterResponder<SimulatorRequestContext>> {
        let router = Router(context: SimulatorRequestContext.self)
        SimulatorRoutes(configuration: configuration, store: store, logger: logger).register(on: router)
        return Application(
            router: router,
            configuration: .init(address: .hostname(configuration.host, port: configuration.port)),
            onServerRunning: { [logger] channel in
                // Only record and signal here: Hummingbird accepts connections after this returns.
                let port = channel.localAddress?.port ?? 0
                self.lifecycle.withLock { $0.port = port }
                logger.info("partner-sim listening", metadata: ["port": "\(port)"])
                onListening?(port)
            },
            logger: logger
        )
    }
}

/// Resumes a continuation at most once, whichever of "listening" or "failed" happens first.
private final class ResumeOnce: Sendable {
    private let continuation: Mutex<CheckedContinuation<Int, any Error>?>

    init(_ continuation: CheckedContinuation<Int, any Error>) {
        self.continuation = Mutex(continuation)
    }

    func resume(with result: Result<Int, any Error>) {
        let pending = continuation.withLock { value -> CheckedContinuation<Int, any Error>? in
            defer { value = nil }
            return value
        }
        pending?.resume(with: result)
    }
}
