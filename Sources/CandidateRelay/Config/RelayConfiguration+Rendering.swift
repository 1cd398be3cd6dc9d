import Foundation

extension RelayConfiguration {
    /// The effective configuration as YAML, secrets shown only by their source, for
    /// `check-config` and the start-up log.
    public func renderedYAML() -> String {
        // An empty secret is one not given (partner.auth's defaults with `accounts:`): null, as in
        // the file, rather than a redacted value "from missing".
        func secret(_ s: Secret?) -> String {
            guard let s, !s.value.isEmpty else { return "null" }
            return Self.quoted("<redacted: \(s.source)>")
        }
        var lines: [String] = []
        lines.append("listen: { host: \(Self.quoted(listen.host)), port: \(listen.port) }")
        lines.append("ingest:")
        lines.append("  max_body_bytes: \(ingest.maxBodyBytes)")
        let signing = ingest.signingSecrets.isEmpty
            ? "null" : Self.quoted("<redacted: \(ingest.signingSecrets.count) secret(s) from \(ingest.signingSecrets[0].source)>")
        lines.append("  signing_secrets: \(signing)")
        lines.append("  bearer_token: \(secret(ingest.bearerToken))")
        lines.append("  allow_unauthenticated: \(ingest.allowUnauthenticated)")
        lines.append("  max_backlog: \(ingest.maxBacklog)")
        lines.append("storage:")
        lines.append("  path: \(Self.quoted(storage.path))")
        lines.append("  payload_retention_days: \(Self.number(storage.payloadRetentionDays))")
        lines.append("  record_retention_days: \(Self.number(storage.recordRetentionDays))")
        lines.append("partner:")
        lines.append("  base_url: \(Self.quoted(partner.baseURL))")
        lines.append("  timeout_seconds: \(Self.number(partner.timeoutSeconds))")
        lines.append("  auth:")
        lines.append("    mode: \(partner.auth.modeName)")
        lines += Self.renderAuth(partner.auth, indent: "    ", secret: secret)
        lines.append("  rate_limit: { requests: \(partner.rateLimit.requests), per_seconds: \(Self.number(partner.rateLimit.perSeconds)) }")
        let global = partner.globalRateLimit
        lines.append("  global_rate_limit: { requests: \(global.requests), per_seconds: \(Self.number(global.perSeconds)) }")
        if let namedAccounts {
            lines.append("accounts:")
            for account in namedAccounts {
                lines.append("  \(Self.quoted(account.id)):")  // `123`, `null`, `yes` are valid ids
                lines += Self.renderAuth(account.auth, indent: "    ", secret: secret)
                lines.append("    rate_limit: { requests: \(account.rateLimit.requests), per_seconds: \(Self.number(account.rateLimit.perSeconds)) }")
                let signing = account.signingSecrets.isEmpty
                    ? "null" : Self.quoted("<redacted: \(account.signingSecrets.count) secret(s) from \(account.signingSecrets[0].source)>")
                lines.append("    inbound: { signing_secrets: \(signing), bearer_token: \(secret(account.bearerToken)) }")
            }
        }
        lines.append("delivery:")
        lines.append("  workers: \(delivery.workers)")
        let b = delivery.backoff
        lines.append("  backoff: { initial_seconds: \(Self.number(b.initialSeconds)), multiplier: \(Self.number(b.multiplier)), max_seconds: \(Self.number(b.maxSeconds)) }")
        lines.append("  max_attempts: \(delivery.maxAttempts)")
        lines.append("  max_age_seconds: \(Self.number(delivery.maxAgeSeconds))")
        lines.append("  shutdown_grace_seconds: \(Self.number(delivery.shutdownGraceSeconds))")
        let cb = delivery.circuitBreaker
        lines.append("  circuit_breaker: { failures: \(cb.failures), cooldown_seconds: \(Self.number(cb.cooldownSeconds)) }")
        lines.append("logging:")
        lines.append("  level: \(logging.level.rawValue)")
        lines.append("  format: \(logging.format.rawValue)")
        lines.append("  heartbeat_seconds: \(Self.number(logging.heartbeatSeconds))")
        return lines.joined(separator: "\n") + "\n"
    }

    private static func renderAuth(_ auth: PartnerAuthConfiguration, indent: String, secret: (Secret?) -> String) -> [String] {
        switch auth {
        case .comeetJWT(let apiKey, let key, let ttl):
            return ["\(indent)api_key: \(secret(apiKey))", "\(indent)secret: \(secret(key))", "\(indent)token_ttl_seconds: \(number(ttl))"]
        case .oauth2ClientCredentials(let oauth):
            return ["\(indent)token_url: \(quoted(oauth.tokenURL))", "\(indent)client_id: \(quoted(oauth.clientID))",
                    "\(indent)client_secret: \(secret(oauth.clientSecret))", "\(indent)scope: \(oauth.scope.map(quoted) ?? "null")",
                    "\(indent)client_auth: \(oauth.clientAuth.rawValue)"]
        }
    }

    /// A YAML double-quoted scalar: `"`, `\` and every character YAML does not print as
    /// itself (controls, line and paragraph separators, the byte-order mark, U+FFFE and U+FFFF) escaped, so a
    /// newline, `#` or `: ` in a value shows as what it is, and the printout parses back to the
    /// values loaded.
    static func quoted(_ value: String) -> String {
        var out = "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            case "\u{00}"..."\u{1F}", "\u{7F}"..."\u{9F}", "\u{2028}", "\u{2029}", "\u{FEFF}", "\u{FFFE}", "\u{FFFF}":
                let hex = String(scalar.value, radix: 16, uppercase: true)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    static func number(_ value: Double) -> String {
        value.rounded() == value && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }
}
