/// Every leaf key of the YAML configuration (CONTRACT section 3). Unknown keys in the file or
/// in `CANDIDATE_RELAY_*` variables are reported, so a typo never silently falls back to a default.
enum ConfigurationKeys {
    static let all: [String] = [
        "listen.host", "listen.port",
        "ingest.max_body_bytes", "ingest.signing_secrets_file", "ingest.bearer_token_file",
        "ingest.allow_unauthenticated", "ingest.max_backlog",
        "storage.path", "storage.payload_retention_days", "storage.record_retention_days",
        "partner.base_url", "partner.timeout_seconds",
        "partner.auth.mode", "partner.auth.api_key_file", "partner.auth.secret_file",
        "partner.auth.token_ttl_seconds", "partner.auth.token_url", "partner.auth.client_id",
        "partner.auth.client_secret_file", "partner.auth.scope", "partner.auth.client_auth",
        "partner.rate_limit.requests", "partner.rate_limit.per_seconds",
        "partner.global_rate_limit.requests", "partner.global_rate_limit.per_seconds",
        "delivery.workers", "delivery.backoff.initial_seconds", "delivery.backoff.multiplier",
        "delivery.backoff.max_seconds", "delivery.max_attempts", "delivery.max_age_seconds",
        "delivery.shutdown_grace_seconds", "delivery.circuit_breaker.failures",
        "delivery.circuit_breaker.cooldown_seconds",
        "logging.level", "logging.format", "logging.heartbeat_seconds",
    ]

    /// The keys of one account under `accounts.<id>.` (CONTRACT section 8).
    static let accountKeys: [String] = [
        "api_key_file", "secret_file", "rate_limit.requests", "rate_limit.per_seconds",
        "inbound.signing_secrets_file", "inbound.bearer_token_file",
        "client_id", "client_secret_file", "scope",
    ]

    /// Every key, the accounts' included, for a config naming `accounts`.
    static func all(accounts: [String]) -> [String] {
        all + accounts.flatMap { id in accountKeys.map { "accounts.\(id).\($0)" } }
    }

    /// Environment variables that carry a secret directly (the `*_file` key without `_file`).
    static func secretEnvironmentKeys(_ keys: [String]) -> [String] {
        keys.filter { $0.hasSuffix("_file") }.map { String($0.dropLast("_file".count)) }
    }

    /// `delivery.workers` -> `CANDIDATE_RELAY_DELIVERY_WORKERS`; an account id's `-` becomes `_`.
    static func environmentName(_ key: String) -> String {
        "CANDIDATE_RELAY_" + key.uppercased().replacingOccurrences(of: ".", with: "_").replacingOccurrences(of: "-", with: "_")
    }

    /// Variables with our prefix that are not configuration keys.
    static let reservedEnvironmentNames: Set<String> = ["CANDIDATE_RELAY_CONFIG"]
}
