import Foundation
import Logging

extension ConfigurationLoader {
    /// Maps every key to the typed configuration; type errors collect in `values.problems`.
    static func build(_ values: inout ConfigValues, secrets: SecretReader) -> RelayConfiguration {
        var config = RelayConfiguration()
        config.listen.host = values.string("listen.host", config.listen.host)
        config.listen.port = values.int("listen.port", config.listen.port)

        config.ingest.maxBodyBytes = values.int("ingest.max_body_bytes", config.ingest.maxBodyBytes)
        config.ingest.allowUnauthenticated = values.bool("ingest.allow_unauthenticated", false)
        config.ingest.maxBacklog = values.int("ingest.max_backlog", config.ingest.maxBacklog)
        config.ingest.signingSecrets = secrets.readList(
            fileKey: "ingest.signing_secrets_file",
            fileName: values.optionalString("ingest.signing_secrets_file", default: "inbound-secrets")
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
        config.partner.auth = buildAuth(&values, secrets: secrets)

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

    private static func buildAuth(_ values: inout ConfigValues, secrets: SecretReader) -> PartnerAuthConfiguration {
        let mode = values.choice("partner.auth.mode", AuthMode.comeet_jwt, [.comeet_jwt, .oauth2_client_credentials])
        switch mode {
        case .comeet_jwt:
            let apiKey = secrets.read(
                fileKey: "partner.auth.api_key_file",
                fileName: values.optionalString("partner.auth.api_key_file", default: "comeet-api-key"),
                required: true
            )
            let secret = secrets.read(
                fileKey: "partner.auth.secret_file",
                fileName: values.optionalString("partner.auth.secret_file", default: "comeet-secret"),
                required: true
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
                required: true
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
}
