import Foundation
import Logging

extension ConfigurationLoader {
    /// Maps every key to the typed configuration; type errors collect in `values.problems`.
    /// `accountIDs`: the ids under `accounts:`, nil when the section is absent.
    static func build(_ values: inout ConfigValues, secrets: SecretReader, accountIDs: [String]? = nil) -> RelayConfiguration {
        var config = RelayConfiguration()
        config.listen.host = values.string("listen.host", config.listen.host)
        config.listen.port = values.int("listen.port", config.listen.port)

        config.ingest.maxBodyBytes = values.int("ingest.max_body_bytes", config.ingest.maxBodyBytes)
        config.ingest.allowUnauthenticated = values.bool("ingest.allow_unauthenticated", false)
        config.ingest.maxBacklog = values.int("ingest.max_backlog", config.ingest.maxBacklog)
        config.ingest.signingSecrets = secrets.readList(
            fileKey: "ingest.signing_secrets_file",
            // With `accounts:` these are only the accounts' defaults: no default file name then.
            fileName: values.optionalString("ingest.signing_secrets_file", default: accountIDs == nil ? "inbound-secrets" : nil)
        )
        config.ingest.bearerToken = secrets.read(
            fileKey: "ingest.bearer_token_file",
            fileName: values.optionalString("ingest.bearer_token_file", default: nil),
            required: false
        )

        config.storage.path = values.string("storage.path", config.storage.path)
        config.storage.payloadRetentionDays = values.double("storage.payload_retention_days", 7)
        config.storage.recordRetentionDays = values.double("storage.record_retention_days", 365)

        config.partner.baseURL = values.string("partner.base_url", config.partner.baseURL)
        config.partner.timeoutSeconds = values.double("partner.timeout_seconds", 30)
        config.partner.rateLimit.requests = values.int("partner.rate_limit.requests", 100)
        config.partner.rateLimit.perSeconds = values.double("partner.rate_limit.per_seconds", 60)
        config.partner.globalRateLimit.requests = values.int("partner.global_rate_limit.requests", 0)
        config.partner.globalRateLimit.perSeconds = values.double("partner.global_rate_limit.per_seconds", 60)
        if let accountIDs {
            config.namedAccounts = buildAccounts(accountIDs, &values, secrets: secrets, config: config)
            // Not needed with `accounts:`; read (not required) for the accounts' defaults.
            config.partner.auth = buildAuth(&values, secrets: secrets, apiKeyRequired: false)
        } else {
            config.partner.auth = buildAuth(&values, secrets: secrets, apiKeyRequired: true)
        }

        config.delivery.workers = values.int("delivery.workers", 4)
        config.delivery.backoff.initialSeconds = values.double("delivery.backoff.initial_seconds", 5)
        config.delivery.backoff.multiplier = values.double("delivery.backoff.multiplier", 2)
        config.delivery.backoff.maxSeconds = values.double("delivery.backoff.max_seconds", 3600)
        config.delivery.maxAttempts = values.int("delivery.max_attempts", 20)
        config.delivery.maxAgeSeconds = values.double("delivery.max_age_seconds", 259_200)
        config.delivery.shutdownGraceSeconds = values.double("delivery.shutdown_grace_seconds", 10)
        config.delivery.circuitBreaker.failures = values.int("delivery.circuit_breaker.failures", 5)
        config.delivery.circuitBreaker.cooldownSeconds = values.double("delivery.circuit_breaker.cooldown_seconds", 30)

        config.logging.level = values.choice("logging.level", Logger.Level.info, Logger.Level.allCases)
        config.logging.format = values.choice("logging.format", LoggingConfiguration.Format.json, [.json, .logfmt])
        config.logging.heartbeatSeconds = values.double("logging.heartbeat_seconds", 60)
        return config
    }

    private enum AuthMode: String { case comeet_jwt, oauth2_client_credentials }

    private static func buildAuth(_ values: inout ConfigValues, secrets: SecretReader, apiKeyRequired: Bool) -> PartnerAuthConfiguration {
        let mode = values.choice("partner.auth.mode", AuthMode.comeet_jwt, [.comeet_jwt, .oauth2_client_credentials])
        // With `accounts:`, partner.auth only supplies defaults: a default file that is not
        // there is no problem (an account that needs it says so).
        let defaultsOnly = !apiKeyRequired
        switch mode {
        case .comeet_jwt:
            let apiKey = defaultsOnly ? nil : secrets.read(
                fileKey: "partner.auth.api_key_file",
                fileName: values.optionalString("partner.auth.api_key_file", default: "comeet-api-key"),
                required: true
            )
            let secret = secrets.read(
                fileKey: "partner.auth.secret_file",
                fileName: values.optionalString("partner.auth.secret_file", default: defaultsOnly ? nil : "comeet-secret"),
                required: !defaultsOnly
            )
            return .comeetJWT(
                apiKey: apiKey ?? Secret("", source: "missing"),
                secret: secret ?? Secret("", source: "missing"),
                tokenTTLSeconds: values.double("partner.auth.token_ttl_seconds", 600)
            )
        case .oauth2_client_credentials:
            let tokenURL = values.raw("partner.auth.token_url") ?? ""
            let clientID = values.raw("partner.auth.client_id") ?? ""
            let clientSecret = secrets.read(
                fileKey: "partner.auth.client_secret_file",
                fileName: values.optionalString("partner.auth.client_secret_file", default: nil),
                required: !defaultsOnly
            )
            return .oauth2ClientCredentials(OAuth2Configuration(
                tokenURL: tokenURL,
                clientID: clientID,
                clientSecret: clientSecret ?? Secret("", source: "missing"),
                scope: values.raw("partner.auth.scope"),
                clientAuth: values.choice("partner.auth.client_auth", OAuth2Configuration.ClientAuth.basic, [.basic, .body])
            ))
        }
    }

    /// The `accounts:` section: each account's credentials, falling back to `partner.auth`
    /// (secret, client id and secret, scope), `partner.rate_limit` and the `ingest` secrets.
    private static func buildAccounts(_ ids: [String], _ values: inout ConfigValues, secrets: SecretReader,
                                      config: RelayConfiguration) -> [AccountConfiguration] {
        let mode = values.choice("partner.auth.mode", AuthMode.comeet_jwt, [.comeet_jwt, .oauth2_client_credentials])
        return ids.map { id in
            let prefix = "accounts.\(id)."
            // Whether the account gives this `*_file` key itself (in the file, even as null, or by env).
            func own(_ key: String) -> Bool { values.isSet(prefix + key) || secrets.hasEnvironmentValue(for: prefix + key) }
            let auth: PartnerAuthConfiguration
            switch mode {
            case .comeet_jwt:
                let apiKey = secrets.read(fileKey: prefix + "api_key_file",
                                          fileName: values.optionalString(prefix + "api_key_file", default: nil), required: true)
                let secret = secrets.read(
                    fileKey: own("secret_file") ? prefix + "secret_file" : "partner.auth.secret_file",
                    fileName: values.optionalString(prefix + "secret_file", default: nil)
                        ?? values.optionalString("partner.auth.secret_file", default: "comeet-secret"),
                    required: true)
                auth = .comeetJWT(apiKey: apiKey ?? Secret("", source: "missing"), secret: secret ?? Secret("", source: "missing"),
                                  tokenTTLSeconds: values.double("partner.auth.token_ttl_seconds", 600))
            case .oauth2_client_credentials:
                let ownSecret = own("client_secret_file")
                let clientSecret = secrets.read(
                    fileKey: ownSecret ? prefix + "client_secret_file" : "partner.auth.client_secret_file",
                    fileName: ownSecret ? values.optionalString(prefix + "client_secret_file", default: nil)
                        : values.optionalString("partner.auth.client_secret_file", default: nil),
                    required: true)
                auth = .oauth2ClientCredentials(OAuth2Configuration(
                    tokenURL: values.raw("partner.auth.token_url") ?? "",
                    clientID: values.raw(prefix + "client_id") ?? values.raw("partner.auth.client_id") ?? "",
                    clientSecret: clientSecret ?? Secret("", source: "missing"),
                    scope: values.raw(prefix + "scope") ?? values.raw("partner.auth.scope"),
                    clientAuth: values.choice("partner.auth.client_auth", OAuth2Configuration.ClientAuth.basic, [.basic, .body])))
            }
            var rateLimit = config.partner.rateLimit
            rateLimit.requests = values.int(prefix + "rate_limit.requests", rateLimit.requests)
            rateLimit.perSeconds = values.double(prefix + "rate_limit.per_seconds", rateLimit.perSeconds)
            let signingKey = prefix + "inbound.signing_secrets_file"
            let signingSecrets = own("inbound.signing_secrets_file")
                ? secrets.readList(fileKey: signingKey, fileName: values.optionalString(signingKey, default: nil))
                : config.ingest.signingSecrets
            let bearerKey = prefix + "inbound.bearer_token_file"
            let bearerToken = own("inbound.bearer_token_file")
                ? secrets.read(fileKey: bearerKey, fileName: values.optionalString(bearerKey, default: nil), required: false)
                : config.ingest.bearerToken
            return AccountConfiguration(id: id, auth: auth, rateLimit: rateLimit, signingSecrets: signingSecrets, bearerToken: bearerToken)
        }
    }
}
