import AsyncHTTPClient
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

    /// Each account's token provider, minting with its own credentials.
    static func tokenProviders(_ configuration: RelayConfiguration, httpClient: HTTPClient, logger: Logger,
                               metrics: RelayMetrics) -> [String: any TokenProvider] {
        Dictionary(uniqueKeysWithValues: configuration.accounts.map { account in
            (account.id, tokenProvider(account, partner: configuration.partner, httpClient: httpClient, logger: logger, metrics: metrics))
        })
    }

    /// The token provider of the configured auth mode for one account.
    static func tokenProvider(_ account: AccountConfiguration, partner: PartnerConfiguration, httpClient: HTTPClient,
                              logger: Logger, metrics: RelayMetrics) -> any TokenProvider {
        switch account.auth {
        case .comeetJWT(let apiKey, let secret, let ttl):
            return ComeetTokenProvider(apiKey: apiKey, secret: secret, ttlSeconds: ttl, logger: logger, metrics: metrics, account: account.id)
        case .oauth2ClientCredentials(let oauth):
            return OAuth2TokenProvider(
                configuration: oauth, fetch: OAuth2TokenProvider.httpFetch(client: httpClient, timeoutSeconds: partner.timeoutSeconds),
                logger: logger, metrics: metrics, account: account.id)
        }
    }

    /// Each account's rate limit, for the gate.
    static func rateLimits(_ configuration: RelayConfiguration) -> [String: RateLimitConfiguration] {
        Dictionary(uniqueKeysWithValues: configuration.accounts.map { ($0.id, $0.rateLimit) })
    }
}
