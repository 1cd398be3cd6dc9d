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
    /// The `accounts:` section (CONTRACT section 8); nil when absent, and then the one account
    /// `default` is made of `partner.auth`, `partner.rate_limit` and the `ingest` secrets.
    public var namedAccounts: [AccountConfiguration]?

    public init() {}

    /// The longest rate window in force (an account's or the global one): leases must outlast a wait for it.
    public var longestRateWindowSeconds: Double {
        (accounts.map(\.rateLimit.perSeconds) + [partner.globalRateLimit.requests > 0 ? partner.globalRateLimit.perSeconds : 0]).max() ?? 60
    }

    /// Every account the daemon relays for, sorted by id: the named ones, or `default`.
    public var accounts: [AccountConfiguration] {
        namedAccounts ?? [AccountConfiguration(
            id: AccountConfiguration.defaultID, auth: partner.auth, rateLimit: partner.rateLimit,
            signingSecrets: ingest.signingSecrets, bearerToken: ingest.bearerToken)]
    }
}

/// One Comeet customer (CONTRACT section 8): its api-key (the JWT `iss`) and partner credentials,
/// its own rate limit at the partner, and the secrets its webhooks are signed with.
public struct AccountConfiguration: Sendable {
    /// The account of `/v1/candidates` and of every event stored before accounts existed.
    public static let defaultID = "default"

    public var id: String
    public var auth: PartnerAuthConfiguration
    public var rateLimit: RateLimitConfiguration
    /// Standard Webhooks secrets of this account's sender; empty when not configured.
    public var signingSecrets: [Secret]
    public var bearerToken: Secret?

    public init(id: String, auth: PartnerAuthConfiguration, rateLimit: RateLimitConfiguration,
                signingSecrets: [Secret] = [], bearerToken: Secret? = nil) {
        self.id = id
        self.auth = auth
        self.rateLimit = rateLimit
        self.signingSecrets = signingSecrets
        self.bearerToken = bearerToken
    }

    /// `[a-z0-9][a-z0-9_-]{0,62}`: safe in a URL path, a log field and a metric label.
    public static func isValidID(_ id: String) -> Bool {
        let bytes = Array(id.utf8)
        guard (1...63).contains(bytes.count) else { return false }
        func allowed(_ b: UInt8, first: Bool) -> Bool {
            (b >= 0x61 && b <= 0x7a) || (b >= 0x30 && b <= 0x39) || (!first && (b == 0x5f || b == 0x2d))
        }
        return bytes.enumerated().allSatisfy { allowed($1, first: $0 == 0) }
    }
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
    /// Per account (each api-key has its own window at the partner).
    public var rateLimit = RateLimitConfiguration()
    /// All accounts together; `requests: 0` (the default) is off.
    public var globalRateLimit = RateLimitConfiguration(requests: 0, perSeconds: 60)
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
