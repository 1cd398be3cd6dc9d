import AsyncHTTPClient
import Crypto
import Foundation
import Logging

/// Builds what the relay holds per account while it runs (CONTRACT section 8): the
/// authenticator of its webhooks and its partner token provider. Rebuilt on SIGHUP, so that
/// secrets are re-read and accounts come and go.
enum AccountWiring {
    /// Each account's webhook authenticator: only its own secrets and token.
    static func authenticators(_ configuration: RelayConfiguration) -> [String: IngestAuthenticator] {
        Dictionary(uniqueKeysWithValues: configuration.accounts.map { account in
            (account.id, IngestAuthenticator(signingSecrets: account.signingSecrets, bearerToken: account.bearerToken,
                                             allowUnauthenticated: configuration.ingest.allowUnauthenticated))
        })
    }

    /// Each account's token provider, minting with its own credentials. `keeping`: the
    /// providers in use; an account whose credentials did not change keeps its provider, and so
    /// its token (a reload no longer asks an OAuth2 token endpoint for a new one, nor fails to
    /// when it is down).
    static func tokenProviders(_ configuration: RelayConfiguration, httpClient: HTTPClient, logger: Logger, metrics: RelayMetrics,
                               keeping current: [String: any TokenProvider] = [:]) -> [String: any TokenProvider] {
        Dictionary(uniqueKeysWithValues: configuration.accounts.map { account in
            if let kept = current[account.id], kept.credentials == credentialsFingerprint(account.auth) {
                return (account.id, kept)
            }
            return (account.id, tokenProvider(account, partner: configuration.partner, httpClient: httpClient, logger: logger, metrics: metrics))
        })
    }

    /// Each account's `credentialsFingerprint`.
    static func credentialsFingerprints(_ configuration: RelayConfiguration) -> [String: String] {
        Dictionary(uniqueKeysWithValues: configuration.accounts.map { ($0.id, credentialsFingerprint($0.auth)) })
    }

    /// Tells one set of partner credentials from another without holding them: 16 hex digits
    /// of a SHA-256 over the mode and every value of it (the secrets' values, not where they
    /// were read from). Any change may be the operator's fix for a refusal (a new secret, scope
    /// or token lifetime). Kept in the outbox with a refused account's back-off.
    static func credentialsFingerprint(_ auth: PartnerAuthConfiguration) -> String {
        let parts: [String]
        switch auth {
        case .comeetJWT(let apiKey, let secret, let ttl):
            parts = ["comeet_jwt", apiKey.value, secret.value, String(ttl)]
        case .oauth2ClientCredentials(let oauth):
            parts = ["oauth2_client_credentials", oauth.tokenURL, oauth.clientID, oauth.clientSecret.value,
                     oauth.scope ?? "", oauth.clientAuth.rawValue]
        }
        // Each part with its length, so that no two different lists hash the same text.
        let text = parts.map { "\($0.utf8.count):\($0)" }.joined()
        return String(IngestHandler.hex(SHA256.hash(data: Data(text.utf8))).prefix(16))
    }

    /// The token provider of the configured auth mode for one account.
    static func tokenProvider(_ account: AccountConfiguration, partner: PartnerConfiguration, httpClient: HTTPClient,
                              logger: Logger, metrics: RelayMetrics) -> any TokenProvider {
        switch account.auth {
        case .comeetJWT(let apiKey, let secret, let ttl):
            return ComeetTokenProvider(apiKey: apiKey, secret: secret, ttlSeconds: ttl, logger: logger, metrics: metrics, account: account.id,
                                       credentials: credentialsFingerprint(account.auth))
        case .oauth2ClientCredentials(let oauth):
            return OAuth2TokenProvider(
                configuration: oauth, fetch: OAuth2TokenProvider.httpFetch(client: httpClient, timeoutSeconds: partner.timeoutSeconds),
                logger: logger, metrics: metrics, account: account.id, credentials: credentialsFingerprint(account.auth))
        }
    }

    /// Each account's rate limit, for the gate.
    static func rateLimits(_ configuration: RelayConfiguration) -> [String: RateLimitConfiguration] {
        Dictionary(uniqueKeysWithValues: configuration.accounts.map { ($0.id, $0.rateLimit) })
    }
}
