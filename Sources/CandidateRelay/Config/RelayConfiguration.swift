import Foundation
import Logging

/// The whole, validated configuration of the relay (CONTRACT section 3). Built once by
/// `ConfigurationLoader`, then passed down; no component reads the environment itself.
public struct RelayConfiguration: Sendable {
    public var listen = ListenConfiguration()
    public var ingest = IngestConfiguration()
    public var storage = StorageConfiguration()
    public var partner = PartnerConfiguration()
    public var delivery = DeliveryConfiguration()
    public var logging = LoggingConfiguration()

    public init() {}
}

/// Where the inbound HTTP server listens.
public struct ListenConfiguration: Sendable, Equatable {
    public var host = "127.0.0.1"
    public var port = 8088
    public init(host: String = "127.0.0.1", port: Int = 8088) {
        self.host = host
        self.port = port
    }
}

/// How webhooks are received and authenticated.
public struct IngestConfiguration: Sendable {
    public var maxBodyBytes = 26_214_400
    /// Standard Webhooks secrets (`whsec_...`), several for rotation; empty when not configured.
    public var signingSecrets: [Secret] = []
    public var bearerToken: Secret?
    public var allowUnauthenticated = false
    public var maxBacklog = 100_000
}

/// Where the outbox lives and how long personal data is kept.
public struct StorageConfiguration: Sendable, Equatable {
    public var path = "/var/lib/candidate-relay/outbox.sqlite3"
    public var payloadRetentionDays = 7.0
    public var recordRetentionDays = 365.0
    public init(path: String = "/var/lib/candidate-relay/outbox.sqlite3", payloadRetentionDays: Double = 7, recordRetentionDays: Double = 365) {
        self.path = path
        self.payloadRetentionDays = payloadRetentionDays
        self.recordRetentionDays = recordRetentionDays
    }
}

/// The partner ATS endpoint and how to authenticate to it.
public struct PartnerConfiguration: Sendable {
    public var baseURL = "https://api.comeet.co"
    public var timeoutSeconds = 30.0
    public var auth = PartnerAuthConfiguration.comeetJWT(apiKey: Secret("", source: "unset"), secret: Secret("", source: "unset"), tokenTTLSeconds: 600)
    public var rateLimit = RateLimitConfiguration()
}

/// The two ways of getting a partner bearer token.
public enum PartnerAuthConfiguration: Sendable {
    /// Comeet's self-minted HS256 JWT: `{"iss": apiKey, "exp": now + ttl}` signed with `secret`.
    case comeetJWT(apiKey: Secret, secret: Secret, tokenTTLSeconds: Double)
    /// RFC 6749 section 4.4 client credentials against `tokenURL`.
    case oauth2ClientCredentials(OAuth2Configuration)

    public var modeName: String {
        switch self {
        case .comeetJWT: "comeet_jwt"
        case .oauth2ClientCredentials: "oauth2_client_credentials"
        }
    }
}

/// Settings of the `oauth2_client_credentials` mode.
public struct OAuth2Configuration: Sendable {
    public enum ClientAuth: String, Sendable { case basic, body }
    public var tokenURL: String
    public var clientID: String
    public var clientSecret: Secret
    public var scope: String?
    public var clientAuth: ClientAuth

    public init(tokenURL: String, clientID: String, clientSecret: Secret, scope: String?, clientAuth: ClientAuth) {
        self.tokenURL = tokenURL
        self.clientID = clientID
        self.clientSecret = clientSecret
        self.scope = scope
        self.clientAuth = clientAuth
    }
}

/// A sliding window: at most `requests` partner requests in any `perSeconds` (0 = unlimited).
public struct RateLimitConfiguration: Sendable, Equatable {
    public var requests = 100
    public var perSeconds = 60.0
    public init(requests: Int = 100, perSeconds: Double = 60) {
        self.requests = requests
        self.perSeconds = perSeconds
    }
}

/// The worker pool, retry and breaker policy.
public struct DeliveryConfiguration: Sendable, Equatable {
    public var workers = 4
    public var backoff = BackoffConfiguration()
    public var maxAttempts = 20
    public var maxAgeSeconds = 259_200.0
    public var shutdownGraceSeconds = 10.0
    public var circuitBreaker = CircuitBreakerConfiguration()
}

/// Exponential backoff: `initial * multiplier^(attempt-1)`, capped at `max`, with jitter.
public struct BackoffConfiguration: Sendable, Equatable {
    public var initialSeconds = 5.0
    public var multiplier = 2.0
    public var maxSeconds = 3600.0
    public init(initialSeconds: Double = 5, multiplier: Double = 2, maxSeconds: Double = 3600) {
        self.initialSeconds = initialSeconds
        self.multiplier = multiplier
        self.maxSeconds = maxSeconds
    }
}

/// Open after `failures` consecutive retryable failures, for `cooldownSeconds`.
public struct CircuitBreakerConfiguration: Sendable, Equatable {
    public var failures = 5
    public var cooldownSeconds = 30.0
    public init(failures: Int = 5, cooldownSeconds: Double = 30) {
        self.failures = failures
        self.cooldownSeconds = cooldownSeconds
    }
}

/// Log output.
public struct LoggingConfiguration: Sendable, Equatable {
    public enum Format: String, Sendable { case json, logfmt }
    public var level: Logger.Level = .info
    public var format: Format = .json
    public var heartbeatSeconds = 60.0
    public init(level: Logger.Level = .info, format: Format = .json, heartbeatSeconds: Double = 60) {
        self.level = level
        self.format = format
        self.heartbeatSeconds = heartbeatSeconds
    }
}
