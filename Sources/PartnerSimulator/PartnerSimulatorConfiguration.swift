import Foundation

/// Everything the simulator needs to start: where to listen, the credentials it accepts,
/// the partner's rate limit and the faults active from the first request.
///
/// The defaults match the demo configuration, so `partner-sim` and the demo mode agree
/// without any setup.
public struct PartnerSimulatorConfiguration: Sendable {
    /// Address to bind; loopback by default because the simulator has no real security.
    public var host: String = "127.0.0.1"
    /// Port to bind; 0 lets the kernel pick a free one (tests run in parallel).
    public var port: Int = 0
    /// The customer api-key expected as the JWT `iss` claim.
    public var apiKey: String = "demo-api-key"
    /// More customers' api-keys accepted as `iss` (a sourcing partner serves several; the
    /// partner secret is the same for all).
    public var additionalAPIKeys: [String] = []
    /// Whether the rate limit applies per api-key (the partner's documentation) or once for
    /// all keys together (`partner`: the other reading of it).
    public var rateLimitScope: RateLimitScope = .apiKey

    /// Every api-key accepted as `iss`.
    public var apiKeys: [String] { [apiKey] + additionalAPIKeys }

    public enum RateLimitScope: String, Sendable, CaseIterable {
        case apiKey = "api-key"
        case partner
    }
    /// The HS256 signing secret shared with the relay.
    public var secret: String = "demo-secret"
    /// Requests admitted per window for one api-key or OAuth client; 0 means unlimited.
    public var rateLimitRequests: Int = 100
    /// Length of the sliding rate-limit window, in seconds.
    public var rateLimitPerSeconds: Double = 60
    /// Client id accepted by `POST /oauth/token`.
    public var oauthClientID: String = "demo-client"
    /// Client secret accepted by `POST /oauth/token`.
    public var oauthClientSecret: String = "demo-client-secret"
    /// Lifetime of issued access tokens, in seconds.
    public var oauthTokenTTLSeconds: Int = 3600
    /// Faults active from start; replace them later with `PartnerSimulator.setFaults(_:)`.
    public var faults = SimulatorFaults()

    /// Every setting, each with the demo default.
    public init(
        host: String = "127.0.0.1",
        port: Int = 0,
        apiKey: String = "demo-api-key",
        secret: String = "demo-secret",
        rateLimitRequests: Int = 100,
        rateLimitPerSeconds: Double = 60,
        oauthClientID: String = "demo-client",
        oauthClientSecret: String = "demo-client-secret",
        oauthTokenTTLSeconds: Int = 3600,
        faults: SimulatorFaults = SimulatorFaults()
    ) {
        self.host = host
        self.port = port
        self.apiKey = apiKey
        self.secret = secret
        self.rateLimitRequests = rateLimitRequests
        self.rateLimitPerSeconds = rateLimitPerSeconds
        self.oauthClientID = oauthClientID
        self.oauthClientSecret = oauthClientSecret
        self.oauthTokenTTLSeconds = oauthTokenTTLSeconds
        self.faults = faults
    }
}
