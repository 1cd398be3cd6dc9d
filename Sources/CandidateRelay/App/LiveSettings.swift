import Foundation

/// Everything SIGHUP can change without a restart, each behind its own `Live` box.
final class LiveSettings: Sendable {
    /// Each account's webhook authenticator, by account id (the keys are the known accounts).
    let authenticators: Live<[String: IngestAuthenticator]>
    let ingest: Live<IngestConfiguration>
    let delivery: Live<DeliverySettings>
    let storage: Live<StorageConfiguration>
    let heartbeat: Live<Double>
    /// Each account's partner token provider.
    let tokens: Live<[String: any TokenProvider]>
    /// The configured account ids.
    let accounts: Live<KnownAccounts>

    init(configuration: RelayConfiguration, tokens: [String: any TokenProvider]) {
        self.tokens = Live(tokens)
        authenticators = Live(AccountWiring.authenticators(configuration))
        accounts = Live(KnownAccounts(ids: Set(configuration.accounts.map(\.id)), named: configuration.namedAccounts != nil))
        ingest = Live(configuration.ingest)
        delivery = Live(DeliverySettings(configuration: configuration.delivery, partnerTimeoutSeconds: configuration.partner.timeoutSeconds,
                                         rateWindowSeconds: configuration.longestRateWindowSeconds))
        storage = Live(configuration.storage)
        heartbeat = Live(configuration.logging.heartbeatSeconds)
    }
}
