import CandidateRelay
import Foundation
import PartnerSimulator
import Synchronization

/// The full relay in-process on port 0 against the partner simulator on port 0, with fast
/// timings, its logs captured. One per test.
public final class RelayHarness: Sendable {
    public let directory: TemporaryDirectory
    public let simulator: PartnerSimulator
    public let application: RelayApplication
    public let logs: LogCapture
    public let client: HTTPTestClient
    /// The port the relay listens on.
    public let port: Int
    private let task: Task<Void, any Error>

    /// Builds and starts both; `configure` adjusts the relay configuration first.
    public init(simulator simulatorConfiguration: PartnerSimulatorConfiguration = PartnerSimulatorConfiguration(),
                bodyDeadline: BodyDeadlinePolicy = BodyDeadlinePolicy(),
                partnerClient: (any PartnerClient)? = nil,
                configure: (inout RelayConfiguration) -> Void = { _ in }) async throws {
        directory = try TemporaryDirectory()
        simulator = PartnerSimulator(configuration: simulatorConfiguration)
        _ = try await simulator.start()
        var config = DemoMode.configuration(stateDirectory: directory.path, simulatorURL: simulator.baseURL, port: 0)
        config.partner.auth = .comeetJWT(apiKey: Secret(simulatorConfiguration.apiKey, source: "test"),
                                         secret: Secret(simulatorConfiguration.secret, source: "test"), tokenTTLSeconds: 600)
        config.logging.format = .json
        config.logging.level = .debug
        config.delivery.backoff = BackoffConfiguration(initialSeconds: 0.05, multiplier: 2, maxSeconds: 0.2)
        config.delivery.shutdownGraceSeconds = 2
        config.delivery.circuitBreaker = CircuitBreakerConfiguration(failures: 50, cooldownSeconds: 0.2)
        config.partner.timeoutSeconds = 5
        configure(&config)
        logs = LogCapture()
        let port = Mutex<Int?>(nil)
        application = try await RelayApplication(
            configuration: config, logSettings: LogSettings(level: config.logging.level, format: config.logging.format),
            output: logs.output, environment: [:], partnerClient: partnerClient, bodyDeadline: bodyDeadline,
            onReady: { value in port.withLock { $0 = value } })
        let application = self.application
        task = Task { try await application.run() }
        _ = await eventually(timeout: 30) { port.withLock { $0 } != nil }
        self.port = port.withLock { $0 } ?? 0
        client = HTTPTestClient(port: self.port)
    }


    /// Posts a candidate and returns the event id (fails the caller's expectation on non-202 by returning nil).
    /// `account`: posted to `/v1/accounts/{account}/candidates` (nil: `/v1/candidates`).
    public func post(_ body: String, key: String? = nil, account: String? = nil) async throws -> String? {
        let reply = try await client.post(body, key: key, account: account)
        return reply.status == 202 ? reply.json["id"] as? String : nil
    }

    /// Waits until the event reaches one of `states`; returns its record (read through
    /// `account`'s path when one is named).
    public func waitFor(_ id: String, states: Set<String>, account: String? = nil, timeout: Double = 20) async throws -> [String: Any]? {
        var last: [String: Any]?
        _ = try await eventually(timeout: timeout) {
            last = try await self.client.record(id, account: account)
            return (last?["state"] as? String).map(states.contains) ?? false
        }
        return last
    }

    /// Graceful shutdown (as SIGTERM), then stops the simulator and removes the directory.
    public func stop() async {
        await shutdownAndWait()
        await simulator.stop()
        directory.cleanup()
    }

    /// Graceful shutdown (as SIGTERM), returning once the relay has stopped; the simulator and
    /// the directory stay for the test to inspect (`stop()` still has to be called).
    public func shutdownAndWait() async {
        await application.shutdown()
        _ = try? await task.value
    }

    /// Writes a config file for a reload: this relay's storage, simulator and open ingest, the
    /// simulator's default credentials, plus `extra` YAML. Returns the loader to reload with.
    public func writeReloadConfig(_ extra: String) throws -> ConfigurationLoader {
        try directory.write("comeet-api-key", "demo-api-key")
        try directory.write("comeet-secret", "demo-secret")
        try directory.write("config.yaml", """
            storage: { path: \(application.configuration.storage.path) }
            ingest: { signing_secrets_file: null, allow_unauthenticated: true }
            partner: { base_url: \(simulator.baseURL) }
            \(extra)
            """)
        return ConfigurationLoader(configPath: directory.file("config.yaml"), environment: [:])
    }

    /// Waits for the run loop to return after a shutdown was triggered elsewhere.
    public func waitForExit() async throws {
        try await task.value
    }
}
