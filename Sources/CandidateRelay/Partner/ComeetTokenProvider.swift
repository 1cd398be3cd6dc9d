import Crypto
import Foundation
import Logging

/// Comeet's self-minted token: HS256 JWT `{"iss": api_key, "exp": now + ttl}` signed with the
/// UTF-8 bytes of the partner secret. Reused until 60 s (or a tenth of the ttl, if shorter, but
/// never under 10 s) before `exp`, then minted afresh.
public actor ComeetTokenProvider: TokenProvider {
    let apiKey: Secret
    let secret: Secret
    let ttl: Double
    let logger: Logger
    let metrics: RelayMetrics?
    /// The account whose credentials these are (its log lines and metrics say so).
    let account: String
    public nonisolated let credentials: String?
    let now: @Sendable () -> Date
    private var cached: (token: String, expires: Date)?

    public init(apiKey: Secret, secret: Secret, ttlSeconds: Double, logger: Logger, metrics: RelayMetrics? = nil,
                account: String = AccountConfiguration.defaultID, credentials: String? = nil,
                now: @escaping @Sendable () -> Date = Date.init) {
        self.account = account
        self.credentials = credentials
        self.apiKey = apiKey
        self.secret = secret
        self.ttl = ttlSeconds
        self.logger = logger
        self.metrics = metrics
        self.now = now
    }

    public func token() async throws -> String {
        let current = now()
        // At least 10 s (review: a 30 s token kept until 3 s before `exp` met any clock
        // difference; a 401 then mints again, but costs a round trip).
        let margin = max(10, min(60, min(ttl, Self.maxLifetime) / 10))
        if let cached, cached.expires.timeIntervalSince(current) > margin { return cached.token }
        // The partner refuses tokens that live longer than 600 s; keep 30 s for clock skew.
        let expires = current.addingTimeInterval(min(ttl, Self.maxLifetime))
        let token = Self.mint(apiKey: apiKey.value, secret: secret.value, expires: expires)
        cached = (token, expires)
        metrics?.tokenMinted(mode: "comeet_jwt", account: account)
        logger.event(.info, "auth.token_minted", "partner token minted",
                     LogFields(account: account, extra: ["mode": "comeet_jwt", "expires_at": Timestamp.string(expires)]))
        return token
    }

    public func invalidate(_ token: String) {
        if cached?.token == token { cached = nil }
    }

    static let maxLifetime = 570.0

    /// Pure JWT signing (exposed for tests and the simulator's tooling).
    public static func mint(apiKey: String, secret: String, expires: Date) -> String {
        let header = base64URL(Data(#"{"alg":"HS256","typ":"JWT"}"#.utf8))
        let claims: [String: Any] = ["iss": apiKey, "exp": Int64(expires.timeIntervalSince1970.rounded(.down))]
        let payload = base64URL(ContractJSON.data(claims))
        let signingInput = header + "." + payload
        let mac = HMAC<SHA256>.authenticationCode(for: Data(signingInput.utf8), using: SymmetricKey(data: Data(secret.utf8)))
        return signingInput + "." + base64URL(Data(mac))
    }

    static func base64URL(_ data: Data) -> String {
        data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}
