import ArgumentParser
import CandidateRelay
import Foundation
import PartnerSimulator

struct PartnerSim: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "partner-sim",
        abstract: "A Comeet-compatible partner simulator on loopback, with fault injection.",
        discussion: "Inspection: GET /_sim/state. Faults can also be changed at run time: PUT /_sim/faults with the JSON of the flags.")

    @Option(help: "Port (0 = any free port).") var port = 8089
    @Option(help: "Listen address.") var host = "127.0.0.1"
    @Option(name: .customLong("api-key"), help: "A customer api-key accepted as the JWT `iss`; repeat it for several customers (default: demo-api-key).")
    var apiKeys: [String] = []
    @Option(name: .customLong("rate-limit-scope"), help: "The rate limit per api-key (api-key, the default) or for all keys together (partner).")
    var rateLimitScope: String = "api-key"
    @Option(help: "The HS256 secret.") var secret = "demo-secret"
    @Option(name: .customLong("rate-limit"), help: "Requests per window (0 = unlimited).") var rateLimit = 100
    @Option(name: .customLong("rate-window"), help: "Window in seconds.") var rateWindow = 60.0
    @Option(name: .customLong("client-id"), help: "OAuth client id.") var clientID = "demo-client"
    @Option(name: .customLong("client-secret"), help: "OAuth client secret.") var clientSecret = "demo-client-secret"
    @Option(name: .customLong("error-rate"), help: "Probability (0...1) of answering --inject-status.") var errorRate = 0.0
    @Option(name: .customLong("inject-status"), help: "Status used by --error-rate and --fail-next.") var injectStatus = 503
    @Option(name: .customLong("fail-next"), help: "The next N requests answer --inject-status.") var failNext = 0
    @Option(name: .customLong("retry-after"), help: "Retry-After sent with injected 429/503.") var retryAfter: String?
    @Option(name: .customLong("latency-ms"), help: "Added latency per request.") var latencyMs = 0
    @Option(name: .customLong("close-rate"), help: "Probability of closing the connection without answering.") var closeRate = 0.0
    @Option(name: .customLong("token-max-age"), help: "Refuse a token first seen more than this many seconds ago.") var tokenMaxAge: Double?
    @Flag(name: .customLong("reject-all-tokens"), help: "Answer 401 to every bearer.") var rejectAllTokens = false
    @Flag(name: .customLong("token-endpoint-down"), help: "The OAuth token endpoint answers 503.") var tokenEndpointDown = false
    @Option(name: .customLong("stall-body-ms"), help: "Send each answer's head and first byte, then hold the body this long.") var stallBodyMs = 0
    @Option(name: .customLong("token-latency-ms"), help: "Delay before the OAuth token endpoint answers.") var tokenLatencyMs = 0

    func run() async throws {
        var faults = SimulatorFaults()
        faults.errorRate = errorRate
        faults.injectStatus = injectStatus
        faults.failNext = failNext
        faults.retryAfter = retryAfter
        faults.latencyMs = latencyMs
        faults.closeRate = closeRate
        faults.tokenMaxAgeSeconds = tokenMaxAge
        faults.rejectAllTokens = rejectAllTokens
        faults.tokenEndpointDown = tokenEndpointDown
        faults.stallBodyMs = stallBodyMs
        faults.tokenLatencyMs = tokenLatencyMs
        var config = PartnerSimulatorConfiguration()
        config.host = host
        config.port = port
        guard let scope = PartnerSimulatorConfiguration.RateLimitScope(rawValue: rateLimitScope) else {
            throw ValidationError("--rate-limit-scope must be api-key or partner")
        }
        config.apiKey = apiKeys.first ?? "demo-api-key"
        config.additionalAPIKeys = Array(apiKeys.dropFirst())
        config.rateLimitScope = scope
        config.secret = secret
        config.rateLimitRequests = rateLimit
        config.rateLimitPerSeconds = rateWindow
        config.oauthClientID = clientID
        config.oauthClientSecret = clientSecret
        config.faults = faults
        try await SimulatorRunner.run(config, print: { Console.out($0) })
    }
}
