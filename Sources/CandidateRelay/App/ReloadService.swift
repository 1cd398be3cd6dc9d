import Foundation
import Logging
import ServiceLifecycle
import UnixSignals

/// SIGHUP: re-read the config file and secrets and apply what can change live (log level and
/// format, workers, rate limit, backoff, breaker, inbound secrets, partner credentials). A new
/// config that does not validate is refused and logged; the old one stays.
struct ReloadService: Service {
    let application: RelayApplication
    let loader: ConfigurationLoader

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        try await cancelWhenGracefulShutdown {
            for await _ in signals {
                await application.reload(using: loader)
            }
        }
    }
}

extension RelayApplication {
    /// One reload; also called by tests. Returns whether the new configuration was applied.
    @discardableResult
    public func reload(using loader: ConfigurationLoader) async -> Bool {
        notifier.notify("RELOADING=1\nMONOTONIC_USEC=\(SystemdNotifier.monotonicMicroseconds())")
        defer { notifier.notify("READY=1") }
        var problems: [String] = []
        do {
            await apply(try await loader.load())
        } catch let error as ConfigurationError {
            problems = error.problems.map(\.description)
            logger.event(.error, "config.reload_rejected", "new configuration is invalid; keeping the old one",
                         LogFields(extra: ["problems": problems.joined(separator: "; ")]))
        } catch {
            problems = ["the configuration could not be read"]
            logger.event(.error, "config.reload_rejected", "new configuration could not be read; keeping the old one")
        }
        reportReload(ok: problems.isEmpty, problems: problems)
        return problems.isEmpty
    }

    /// Writes `<outbox>.reload` for `candidate-relay reload`: generation 0 at start-up
    /// (`generation: 0`), then one more after each reload, once it is applied or refused.
    func reportReload(ok: Bool, problems: [String], generation: Int? = nil) {
        let number = generation ?? reloadGeneration.withLock { value -> Int in
            value += 1
            return value
        }
        let report = ReloadReport(pid: getpid(), generation: number, ok: ok, problems: problems, at: Date())
        do {
            try report.write(outboxPath: configuration.storage.path)
        } catch {
            logger.event(.error, "storage.failed", "could not write the reload report", LogFields(error: "storage_error"))
        }
    }

    func apply(_ new: RelayConfiguration) async {
        let old = configuration
        live.authenticator.set(IngestAuthenticator(configuration: new.ingest))
        live.ingest.set(new.ingest)
        live.delivery.set(DeliverySettings(configuration: new.delivery, partnerTimeoutSeconds: old.partner.timeoutSeconds,
                                       rateWindowSeconds: new.partner.rateLimit.perSeconds))
        live.storage.set(StorageConfiguration(path: old.storage.path, payloadRetentionDays: new.storage.payloadRetentionDays,
                                              recordRetentionDays: new.storage.recordRetentionDays))
        live.heartbeat.set(new.logging.heartbeatSeconds)
        var partner = new.partner
        partner.timeoutSeconds = old.partner.timeoutSeconds
        live.tokens.set(Self.tokenProvider(partner, httpClient: httpClient, logger: logger, metrics: metrics))
        // Awaited: when `candidate-relay reload` returns, the new limits are in force.
        await gate.reconfigure(rateLimit: new.partner.rateLimit, breaker: new.delivery.circuitBreaker)
        doorbell.ring()
        var restartNeeded: [String] = []
        if new.listen != old.listen { restartNeeded.append("listen") }
        if new.storage.path != old.storage.path { restartNeeded.append("storage.path") }
        if new.partner.baseURL != old.partner.baseURL { restartNeeded.append("partner.base_url") }
        if new.partner.timeoutSeconds != old.partner.timeoutSeconds { restartNeeded.append("partner.timeout_seconds") }
        if !restartNeeded.isEmpty {
            logger.event(.warning, "config.restart_needed", "some changes apply only after a restart",
                         LogFields(extra: ["keys": restartNeeded.joined(separator: ",")]))
        }
        logger.event(.notice, "config.reloaded", "configuration reloaded",
                     LogFields(extra: ["workers": String(new.delivery.workers), "log_level": new.logging.level.rawValue]))
        // Last, so that the reload itself is logged whatever the new level.
        logSettings.update(level: new.logging.level, format: new.logging.format)
    }
}
