import Foundation
#if canImport(Glibc)
import Glibc
#endif

extension ConfigurationLoader {
    /// Range and consistency checks on an otherwise well-typed configuration.
    /// `unreadSecrets`: the `*_file` keys whose secret could not be read (their own problems).
    static func validate(_ config: RelayConfiguration, secretsRequired: Bool = true, unreadSecrets: Set<String> = []) -> [ConfigurationProblem] {
        var problems: [ConfigurationProblem] = []
        func check(_ ok: Bool, _ key: String, _ message: String) {
            if !ok { problems.append(.init(key, message)) }
        }
        check((0...65535).contains(config.listen.port), "listen.port", "must be 0...65535")
        // An IP address or a host name, as characters go (found from outside: `not a host`
        // passed here, and `serve` failed to resolve it with exit 1, restarted by systemd every
        // few seconds instead of stopping at a configuration error).
        check(!config.listen.host.isEmpty && config.listen.host.unicodeScalars.allSatisfy { scalar in
            scalar.isASCII && (CharacterSet.alphanumerics.contains(scalar) || ".-_:%[]".unicodeScalars.contains(scalar))
        }, "listen.host", "must be an IP address or a host name")
        check(config.ingest.maxBodyBytes >= 1024, "ingest.max_body_bytes", "must be at least 1024")
        // SQLite's own limit on one value (SQLITE_MAX_LENGTH): a larger body could not be stored.
        check(config.ingest.maxBodyBytes <= 1_000_000_000, "ingest.max_body_bytes", "must be at most 1000000000")
        check(config.ingest.maxBacklog >= 1, "ingest.max_backlog", "must be at least 1")
        problems += inboundProblems(config, secretsRequired: secretsRequired, unreadSecrets: unreadSecrets)
        check(config.storage.payloadRetentionDays >= 0, "storage.payload_retention_days", "must be >= 0")
        check(
            config.storage.recordRetentionDays >= config.storage.payloadRetentionDays,
            "storage.record_retention_days", "must be >= payload_retention_days"
        )
        // Records (and their attempts) rebuild the rate windows at start: deleted sooner, a
        // restart sent a window's worth again (found from outside: 0.0001 days, then 10 requests
        // in 40 s under a limit of 5).
        check(config.storage.recordRetentionDays * 86_400 >= config.longestRateWindowSeconds,
              "storage.record_retention_days", "must cover the longest rate window (\(RelayConfiguration.number(config.longestRateWindowSeconds)) s): "
              + "the history of requests inside it rebuilds the rate windows at start")
        problems += storagePathProblems(config.storage.path)
        check(isHTTPURL(config.partner.baseURL, allowQuery: false), "partner.base_url",
              "must be an http(s) URL without query, fragment or credentials")
        check(config.partner.timeoutSeconds > 0, "partner.timeout_seconds", "must be > 0")
        check(config.partner.rateLimit.requests >= 0, "partner.rate_limit.requests", "must be >= 0 (0 = unlimited)")
        check(config.partner.rateLimit.perSeconds > 0, "partner.rate_limit.per_seconds", "must be > 0")
        check(config.partner.globalRateLimit.requests >= 0, "partner.global_rate_limit.requests", "must be >= 0 (0 = off)")
        check(config.partner.globalRateLimit.perSeconds > 0, "partner.global_rate_limit.per_seconds", "must be > 0")
        problems += partnerAuthProblems(config)
        let delivery = config.delivery
        check((1...256).contains(delivery.workers), "delivery.workers", "must be 1...256")
        check(delivery.backoff.initialSeconds > 0, "delivery.backoff.initial_seconds", "must be > 0")
        check(delivery.backoff.multiplier >= 1, "delivery.backoff.multiplier", "must be >= 1")
        check(delivery.backoff.maxSeconds >= delivery.backoff.initialSeconds, "delivery.backoff.max_seconds", "must be >= initial_seconds")
        check(delivery.maxAttempts >= 1, "delivery.max_attempts", "must be >= 1")
        check(delivery.maxAgeSeconds > 0, "delivery.max_age_seconds", "must be > 0")
        check(delivery.shutdownGraceSeconds >= 0, "delivery.shutdown_grace_seconds", "must be >= 0")
        check(delivery.circuitBreaker.failures >= 1, "delivery.circuit_breaker.failures", "must be >= 1")
        check(delivery.circuitBreaker.cooldownSeconds > 0, "delivery.circuit_breaker.cooldown_seconds", "must be > 0")
        check(config.logging.heartbeatSeconds > 0, "logging.heartbeat_seconds", "must be > 0")
        // Upper bounds: 1e300 passed every check above and then trapped converting to a whole
        // number of milliseconds or nanoseconds (serve died with SIGILL at start or at the first
        // delivery, a crash loop under systemd).
        var durations: [(String, Double)] = [
            ("partner.timeout_seconds", config.partner.timeoutSeconds),
            ("partner.rate_limit.per_seconds", config.partner.rateLimit.perSeconds),
            ("partner.global_rate_limit.per_seconds", config.partner.globalRateLimit.perSeconds),
            ("delivery.backoff.initial_seconds", delivery.backoff.initialSeconds),
            ("delivery.backoff.max_seconds", delivery.backoff.maxSeconds),
            ("delivery.max_age_seconds", delivery.maxAgeSeconds),
            ("delivery.shutdown_grace_seconds", delivery.shutdownGraceSeconds),
            ("delivery.circuit_breaker.cooldown_seconds", delivery.circuitBreaker.cooldownSeconds),
            ("logging.heartbeat_seconds", config.logging.heartbeatSeconds),
        ]
        for account in config.namedAccounts ?? [] {
            durations.append(("accounts.\(account.id).rate_limit.per_seconds", account.rateLimit.perSeconds))
        }
        for (key, value) in durations {
            check(value <= maxSeconds, key, "must be at most \(Int(maxSeconds)) (a year)")
            // Lower bounds too (found from outside: 1e-300 passed `> 0` and acted as 0: a timeout
            // every request hit at once, a rate window of nothing, a back-off of nothing). Zero,
            // where it is allowed (the grace period), is a problem of its own or none.
            if value > 0 { check(value >= minSeconds, key, "must be at least \(minSeconds) (a millisecond)") }
        }
        check(delivery.backoff.multiplier <= 1000, "delivery.backoff.multiplier", "must be at most 1000")
        check(config.storage.payloadRetentionDays <= maxDays, "storage.payload_retention_days", "must be at most \(Int(maxDays)) (100 years)")
        check(config.storage.recordRetentionDays <= maxDays, "storage.record_retention_days", "must be at most \(Int(maxDays)) (100 years)")
        return problems
    }

    /// The longest duration any `*_seconds` key may name, and any `*_days` key.
    static let maxSeconds = 31_536_000.0
    /// The shortest duration any `*_seconds` key may name (but for 0 where 0 is allowed).
    static let minSeconds = 0.001
    static let maxDays = 36_500.0

    /// Each account's inbound secrets are well-formed, and some inbound authentication exists.
    /// An account whose inbound secrets file (its own, or `ingest.*` it falls back on) could not
    /// be read is not also "without inbound authentication": that file's problem says why (found
    /// from outside: it also advised `allow_unauthenticated: true` for a file merely not found).
    static func inboundProblems(_ config: RelayConfiguration, secretsRequired: Bool, unreadSecrets: Set<String> = []) -> [ConfigurationProblem] {
        var problems: [ConfigurationProblem] = []
        let named = config.namedAccounts != nil
        let unreadInbound = unreadSecrets.filter { $0.hasSuffix(".signing_secrets_file") || $0.hasSuffix(".bearer_token_file") }
        for account in config.accounts {
            let key = named ? "accounts.\(account.id).inbound.signing_secrets_file" : "ingest.signing_secrets_file"
            for secret in account.signingSecrets where WebhookSecret(secret) == nil {
                problems.append(.init(key, "a secret from \(secret.source) is not whsec_<base64>"))
            }
            if let token = account.bearerToken, !isSendableBearerToken(token.value) {
                problems.append(.init(named ? "accounts.\(account.id).inbound.bearer_token_file" : "ingest.bearer_token_file",
                                      "a token from \(token.source) holds a control character or a line separator: no request could carry it (one token per line)"))
            }
            let inbound = named ? "accounts.\(account.id).inbound" : "ingest"
            if secretsRequired && !config.ingest.allowUnauthenticated && account.signingSecrets.isEmpty && account.bearerToken == nil,
               !unreadInbound.contains(where: { $0.hasPrefix(inbound + ".") || $0.hasPrefix("ingest.") }) {
                problems.append(.init(inbound, "no inbound authentication: set signing_secrets_file or bearer_token_file, or allow_unauthenticated: true"))
            }
        }
        // A config with accounts still validates the ingest.* secrets it gives as defaults.
        if named {
            for secret in config.ingest.signingSecrets where WebhookSecret(secret) == nil {
                problems.append(.init("ingest.signing_secrets_file", "a secret from \(secret.source) is not whsec_<base64>"))
            }
            if let token = config.ingest.bearerToken, !isSendableBearerToken(token.value) {
                problems.append(.init("ingest.bearer_token_file",
                                      "a token from \(token.source) holds a control character or a line separator: no request could carry it (one token per line)"))
            }
        }
        return problems
    }

    /// An inbound bearer token a sender can put in an `Authorization` header (found from outside:
    /// a file of two lines became one token with a line break in it, and every webhook got 401).
    /// One token per line (`IngestAuthenticator.bearerTokens`): each must be sendable.
    static func isSendableBearerToken(_ text: String) -> Bool {
        let tokens = IngestAuthenticator.bearerTokens(in: text)
        return !tokens.isEmpty && !tokens.contains { token in
            token.unicodeScalars.contains { $0.properties.generalCategory == .control || $0 == "\u{2028}" || $0 == "\u{2029}" }
        }
    }

    /// The partner credentials of every account; two accounts with one api-key would share one
    /// window at the partner while the relay counted two.
    static func partnerAuthProblems(_ config: RelayConfiguration) -> [ConfigurationProblem] {
        var problems: [ConfigurationProblem] = []
        func check(_ ok: Bool, _ key: String, _ message: String) {
            if !ok { problems.append(.init(key, message)) }
        }
        switch config.partner.auth {
        case .comeetJWT(_, _, let ttl):
            // Found from outside: 0.05 or 0.5 passed, and every token was expired when it
            // arrived (`exp` is in whole seconds, and the partner's clock is not ours): every
            // request a 401, every event dead.
            check(ttl >= RelayConfiguration.minTokenTTLSeconds && ttl <= 600, "partner.auth.token_ttl_seconds",
                  "must be in [\(Int(RelayConfiguration.minTokenTTLSeconds)), 600]: the partner refuses longer-lived tokens, "
                  + "and a shorter one can expire before it arrives when the clocks differ by seconds")
        case .oauth2ClientCredentials(let oauth):
            check(isHTTPURL(oauth.tokenURL), "partner.auth.token_url", "required in oauth2_client_credentials mode: an http(s) URL without fragment or credentials")
            if config.namedAccounts == nil {
                check(!oauth.clientID.isEmpty, "partner.auth.client_id", "required in oauth2_client_credentials mode")
            }
        }
        guard let accounts = config.namedAccounts else { return problems }
        var owners: [String: String] = [:]
        for account in accounts {
            let prefix = "accounts.\(account.id)."
            check(account.rateLimit.requests >= 0, prefix + "rate_limit.requests", "must be >= 0 (0 = unlimited)")
            check(account.rateLimit.perSeconds > 0, prefix + "rate_limit.per_seconds", "must be > 0")
            switch account.auth {
            case .comeetJWT(let apiKey, _, _):
                guard !apiKey.value.isEmpty else { continue }
                if let other = owners[apiKey.value] {
                    problems.append(.init(prefix + "api_key_file", "the same api-key as account \(other): one customer, one account"))
                } else {
                    owners[apiKey.value] = account.id
                }
            case .oauth2ClientCredentials(let oauth):
                check(!oauth.clientID.isEmpty, prefix + "client_id", "required in oauth2_client_credentials mode (or partner.auth.client_id)")
            }
        }
        return problems
    }

    /// An http(s) URL with a host, without credentials in it (`check-config` prints URLs as
    /// they are) or a fragment; `allowQuery: false` for a base that paths are appended to (a
    /// query there made `…?x=1/candidates`). Found from outside: all three passed.
    static func isHTTPURL(_ text: String, allowQuery: Bool = true) -> Bool {
        guard let url = URL(string: text), let scheme = url.scheme?.lowercased(), let host = url.host, !host.isEmpty else {
            return false
        }
        guard url.user == nil, url.password == nil, !text.contains("#"), allowQuery || !text.contains("?") else { return false }
        return scheme == "http" || scheme == "https"
    }

    /// The outbox directory must exist and be writable, or be creatable under a writable ancestor.
    static func storagePathProblems(_ path: String) -> [ConfigurationProblem] {
        guard !path.isEmpty, !path.hasSuffix("/") else { return [.init("storage.path", "must name a file")] }
        let fm = FileManager.default
        var directory = (path as NSString).deletingLastPathComponent
        if directory.isEmpty { directory = "." }
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
            return [.init("storage.path", "\(path) is a directory, not a file")]
        }
        // Through a symlink too: /dev/null or a FIFO passed here and failed in serve (a disk
        // I/O error at the first commit, with /dev/null-journal left behind).
        var info = stat()
        if stat(path, &info) == 0, info.st_mode & S_IFMT != S_IFREG {
            return [.init("storage.path", "\(path) is not a regular file (a device, a FIFO or a socket)")]
        }
        var probe = directory
        while !fm.fileExists(atPath: probe) {
            let parent = (probe as NSString).deletingLastPathComponent
            if parent == probe || parent.isEmpty { break }
            probe = parent
        }
        if fm.fileExists(atPath: probe, isDirectory: &isDir), !isDir.boolValue {
            return [.init("storage.path", "\(probe) is not a directory")]
        }
        if !fm.isWritableFile(atPath: probe) {
            return [.init("storage.path", "directory \(probe) is not writable")]
        }
        if fm.fileExists(atPath: path), !(fm.isReadableFile(atPath: path) && fm.isWritableFile(atPath: path)) {
            return [.init("storage.path", "\(path) is not readable and writable")]
        }
        return []
    }
}

extension RelayConfiguration {
    /// The shortest JWT lifetime `partner.auth.token_ttl_seconds` takes.
    static let minTokenTTLSeconds = 30.0
}
