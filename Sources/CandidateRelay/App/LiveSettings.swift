import Foundation

/// Everything SIGHUP can change without a restart, each behind its own `Live` box.
final class LiveSettings: Sendable {
    let authenticator: Live<IngestAuthenticator>
    let ingest: Live<IngestConfiguration>
    let delivery: Live<DeliverySettings>
    let storage: Live<StorageConfiguration>
    let heartbeat: Live<Double>
    let tokens: Live<any TokenProvider>

    init(configuration: RelayConfiguration, tokens: any TokenProvider) {
        self.tokens = Live(tokens)
        authenticator = Live(IngestAuthenticator(configuration: configuration.ingest))
        ingest = Live(configuration.ingest)
        delivery = Live(DeliverySettings(configuration: configuration.delivery, partnerTimeoutSeconds: configuration.partner.timeoutSeconds,
                                         rateWindowSeconds: configuration.partner.rateLimit.perSeconds))
        storage = Live(configuration.storage)
        heartbeat = Live(configuration.logging.heartbeatSeconds)
    }
}
