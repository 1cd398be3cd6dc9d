import Foundation
import Logging
import PartnerSimulator

/// `serve --demo`: a newcomer's first run with nothing to configure — a temporary outbox, the
/// partner simulator in-process, loopback ingest without authentication.
public enum DemoMode {
    /// The demo's configuration around a running simulator.
    public static func configuration(stateDirectory: String, simulatorURL: String, port: Int) -> RelayConfiguration {
        var config = RelayConfiguration()
        config.listen = ListenConfiguration(host: "127.0.0.1", port: port)
        config.ingest.allowUnauthenticated = true
        config.storage.path = (stateDirectory as NSString).appendingPathComponent("outbox.sqlite3")
        config.partner.baseURL = simulatorURL
        config.partner.timeoutSeconds = 10
        let defaults = PartnerSimulatorConfiguration()
        config.partner.auth = .comeetJWT(apiKey: Secret(defaults.apiKey, source: "demo"), secret: Secret(defaults.secret, source: "demo"),
                                         tokenTTLSeconds: 600)
        config.delivery.backoff = BackoffConfiguration(initialSeconds: 1, multiplier: 2, maxSeconds: 60)
        config.logging.format = .logfmt
        config.logging.heartbeatSeconds = 60
        return config
    }

    /// Runs the demo until Ctrl-C; removes the temporary state directory afterwards.
    public static func run(port: Int, print: @escaping @Sendable (String) -> Void) async throws {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("candidate-relay-demo-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var simulatorLogger = Logger(label: "partner-sim")
        simulatorLogger.logLevel = .warning
        let simulator = PartnerSimulator(configuration: PartnerSimulatorConfiguration(), logger: simulatorLogger)
        _ = try await simulator.start()
        let config = configuration(stateDirectory: directory, simulatorURL: simulator.baseURL, port: port)
        let settings = LogSettings(level: config.logging.level, format: config.logging.format)
        let app = try await RelayApplication(configuration: config, logSettings: settings, onReady: { port in
            print(banner(port: port, simulatorURL: simulator.baseURL, stateDirectory: directory))
        })
        do {
            try await app.run()
        } catch {
            await simulator.stop()
            throw error
        }
        await simulator.stop()
    }

    static func banner(port: Int, simulatorURL: String, stateDirectory: String) -> String {
        let url = "http://127.0.0.1:\(port)/v1/candidates"
        let body = #"{"position_uid":"11.11","partner_candidate_id":"demo-1","first_name":"Ada","last_name":"Example","email":"ada@example.com"}"#
        return """

            candidate-relay demo — state in \(stateDirectory) (deleted on exit); partner simulator at \(simulatorURL)
            Ingest: \(url)
            Try:    curl -si -X POST \(url) -H 'Content-Type: application/json' -H 'webhook-id: demo-1' -d '\(body)'
            Then:   curl -s \(url)/<id from the answer>    (state goes pending -> delivered)
            Stop:   Ctrl-C

            """
    }
}
