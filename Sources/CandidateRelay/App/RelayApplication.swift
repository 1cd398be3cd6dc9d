import AsyncHTTPClient
import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// The single composition root: builds every component from the configuration, recovers crash
/// leftovers before any service starts, and runs the services in one `ServiceGroup` (registered
/// in dependency order so that shutdown stops ingest first and drains the workers last).
public final class RelayApplication: Sendable {
    /// How long the partner client may take to connect, its own retries included (see `init`).
    static let connectTimeoutSeconds = 3.0

    public let configuration: RelayConfiguration
    public let outbox: Outbox
    public let metrics = RelayMetrics()
    let lock: OutboxLock
    let logger: Logger
    let logSettings: LogSettings
    let notifier: SystemdNotifier
    let httpClient: HTTPClient
    let stopFlag = StopFlag()
    let doorbell = Doorbell()
    /// The wall clock and the boot clock read at the start's check for a step back while
    /// stopped: the heartbeat's first look compares with it (`ClockStepDetector`).
    let clockBaseline: (wall: Date, boot: Double)
    /// What the gate and the workers read as the time (`GuardedWallClock`).
    let guardedClock: GuardedWallClock
    let gate: PartnerGate
    let pool: DeliveryWorkerPool
    let handler: IngestHandler
    let live: LiveSettings
    let reloader: ConfigurationLoader?
    let onReady: @Sendable (Int) -> Void
    let environment: [String: String]
    let group = Live<ServiceGroup?>(nil)
    /// `shutdown()` was called, perhaps before `run()` made the group (a SIGTERM while the start
    /// waited for disk space, `StartStopSignals`).
    let shutdownRequested = Live(false)
    /// `STOPPING=1` and `relay.stopping` were sent: `READY=1` and `relay.started` no longer go
    /// (found from outside: a stop asked for as the start finished sent READY after STOPPING).
    let stoppingAnnounced = Mutex(false)
    /// A service threw (the port in use, the outbox gone): the stop that follows is a failure,
    /// said by `relay.failed` and exit 1, not `relay.stopping`/`relay.stopped`, which mean a
    /// SIGTERM and exit 0 (found from outside: a start on a port in use logged both).
    let serviceFailed = Live(false)
    /// Set once READY=1 has been sent (the watchdog must not be petted before).
    let ready = Live(false)
    /// How slowly a request's body may arrive before its connection is closed.
    let bodyDeadline: BodyDeadlinePolicy
    /// Reloads handled so far (`<outbox>.reload`'s generation).
    let reloadGeneration = Mutex(0)
    /// Why the config file on disk does not load now (`ConfigFileWatch`), empty while it does,
    /// and the number of looks recorded.
    let configFile = Mutex<(problems: [String], looks: Int)>(([], 0))

    /// Opens the outbox (taking the one-daemon lock, unless `lock` holds it already), migrates,
    /// recovers leases left by a crash and wires every component. Throws before anything is
    /// listening when storage is unusable.
    public init(configuration: RelayConfiguration, logSettings: LogSettings, output: LogOutput = .standardOutput,
                environment: [String: String] = ProcessInfo.processInfo.environment,
                reloader: ConfigurationLoader? = nil, partnerClient: (any PartnerClient)? = nil,
                bodyDeadline: BodyDeadlinePolicy = BodyDeadlinePolicy(),
                lock: OutboxLock? = nil,
                onReady: @escaping @Sendable (Int) -> Void = { _ in }) async throws {
        MallocTuning.apply()
        self.configuration = configuration
        self.bodyDeadline = bodyDeadline
        self.logSettings = logSettings
        self.reloader = reloader
        self.onReady = onReady
        self.environment = environment
        var logger = Logger(label: "relay.framework") { RelayLogHandler(label: $0, settings: logSettings, output: output) }
        logger.logLevel = .trace
        self.logger = logger
        notifier = SystemdNotifier(environment: environment)

        self.lock = try lock ?? OutboxLock(outboxPath: configuration.storage.path)
        // Ingest's rule, with the largest body allowed at start.
        outbox = try Outbox(path: configuration.storage.path,
                            payloadMemory: PayloadMemory(budget: PayloadMemory.budget(maxBodyBytes: configuration.ingest.maxBodyBytes)))
        let now = Date()
        clockBaseline = (now, ClockStepDetector.bootSeconds())
        guardedClock = GuardedWallClock(baseline: clockBaseline)
        metrics.declare(accounts: configuration.accounts.map(\.id))
        // The rate windows outlive a restart: requests answered within the last window, and the
        // ones a crash left in flight (they may reach the partner as late as now).
        let leftInFlight = try await outbox.inFlightByAccount()
        // The clock went back while the daemon was stopped (the wall clock its last run saw is
        // later than now): what that run scheduled moves back by as much (by no more: the
        // downtime cannot be known). Else a clock an hour fast, set right during a restart,
        // held every stored event and pause for an hour.
        // A rebase the last run began and did not finish (its stop, a crash) goes on first:
        // its chunks are committed with their progress, none is moved twice.
        try await outbox.finishRebase()
        var stepBack = 0.0
        if let seen = try await outbox.wallClockSeen(), seen.timeIntervalSince(now) >= ClockStepDetector.threshold {
            stepBack = now.timeIntervalSince(seen)
            try await outbox.rebaseSchedules(by: stepBack, now: now)
            logger.event(.warning, "clock.stepped", "the wall clock the last run saw is later than now: it went back while the daemon was stopped; "
                         + "what was scheduled moves back with it",
                         LogFields(extra: ["while_stopped": "true"], numbers: ["step_seconds": (stepBack * 1000).rounded() / 1000]))
        }
        // After the rebase: the events a crash left in flight are held from now, on the clock
        // as it is (review: recovered before it, their hold moved back with the step, and a
        // step as long as the timeout undid it).
        // Twice the timeout (`DeliverySettings.cutOffHoldSeconds`): a request may have left
        // just before the crash, and a timed-out one is resent twice the timeout after it left;
        // the timeout the last run sent them under, when it was longer than this run's.
        let recovered = try await outbox.recoverCrashedLeases(now: now, partnerTimeoutSeconds: configuration.partner.timeoutSeconds)
        if recovered.count > 0 {
            logger.event(.warning, "lease.recovered", "in-flight events from a previous run returned to pending, resent at `until` at the earliest "
                         + "(their requests may still be at work at the partner)",
                         LogFields(extra: ["until": Timestamp.string(recovered.until)], numbers: ["count": Double(recovered.count)]))
        }
        var history = try await outbox.requestTimes(since: now.addingTimeInterval(-configuration.longestRateWindowSeconds - stepBack))
            .mapValues { times in times.map { $0.addingTimeInterval(stepBack) } }
        for (account, count) in leftInFlight { history[account, default: []] += Array(repeating: now, count: count) }

        // A connection gets `connectTimeoutSeconds`, the client's own retries of a failed
        // connect included: a partner that refuses connections (down) costs an attempt that
        // much, not 10 s, and with a shorter wait than the request's the refusal is recorded as
        // `connection_refused` (nothing sent: the plain backoff), not as a `timeout` held back
        // as if the partner might be working on it. The retries stay on: turned off, one failed
        // connect failed every request waiting for a connection (all workers' after an idle
        // spell), each an attempt used and a failure for the breaker.
        var clientConfiguration = HTTPClient.Configuration(
            redirectConfiguration: .disallow,
            timeout: .init(connect: .milliseconds(Int64(Self.connectTimeoutSeconds * 1000))))
        // One connection per worker (the default, 8, would queue a larger pool's requests
        // behind each other); the workers may grow on reload, hence the margin, and spares may
        // join them while every worker waits on a slow answer (a spare's request must not queue
        // behind the hung ones). An idle connection is closed after 4 s, before the partner's
        // side would: a server that closes it first (Node's 5 s, many proxies' own) can do so
        // just as a request leaves on it, and that request fails as `connection_reset`: an
        // attempt used and its resend held `partner.timeout_seconds` (found from outside: 1 of 20
        // requests against a 1 s server-side idle timeout, with our 60 s).
        clientConfiguration.connectionPool = .init(
            idleTimeout: .seconds(4),
            concurrentHTTP1ConnectionsPerHostSoftLimit: max(64, configuration.delivery.workers) + DeliveryWorkerPool.maxSpares)
        // No distributed tracing here: without this the client opens a (no-op) span per request
        // and parses the URL again for its attributes, ~2 % of the daemon's CPU while delivering.
        clientConfiguration.tracing.tracer = nil
        httpClient = HTTPClient(eventLoopGroupProvider: .singleton, configuration: clientConfiguration)
        live = LiveSettings(
            configuration: configuration,
            tokens: AccountWiring.tokenProviders(configuration, httpClient: httpClient, logger: logger, metrics: metrics))
        gate = PartnerGate(
            accounts: AccountWiring.rateLimits(configuration), globalRateLimit: configuration.partner.globalRateLimit,
            breaker: configuration.delivery.circuitBreaker, workers: configuration.delivery.workers,
            backoff: configuration.delivery.backoff, history: history,
            credentials: live.tokens.value.compactMapValues(\.credentials), logger: logger, metrics: metrics,
            clock: GuardedSystemClock(guardedClock))
        // The partner's pauses, an open circuit, a refused account's back-off: still in force
        // after a restart, and kept for the next one. Not a back-off for credentials changed since.
        let lifted = await gate.restore(try await outbox.loadHolds())
        await gate.onHoldsChanged { [outbox] holds in outbox.saveHolds(holds) }
        if !lifted.isEmpty {
            await Self.credentialsChanged([], lifted: lifted, outbox: outbox, logger: logger)
            outbox.saveHolds(await gate.holds())
        }
        pool = DeliveryWorkerPool(
            outbox: outbox, gate: gate,
            client: partnerClient ?? HTTPPartnerClient(httpClient: httpClient, baseURL: configuration.partner.baseURL,
                                                       timeoutSeconds: configuration.partner.timeoutSeconds),
            tokens: live.tokens, settings: live.delivery, doorbell: doorbell, metrics: metrics, logger: logger,
            now: { [guardedClock] in guardedClock.now() })
        handler = IngestHandler(
            outbox: outbox, authenticators: live.authenticators, settings: live.ingest, doorbell: doorbell,
            metrics: metrics, logger: logger, stopFlag: stopFlag, now: Date.init)
        // `account.unknown` comes with the first heartbeat, right after READY=1: counting the
        // backlog here held READY=1 back 0.84 s with 1,000,000 events pending (and counting
        // every event, before, ~0.3 s per 1,000,000 stored).
        reportReload(ok: true, problems: [], generation: 0)
    }

    /// The `Server` header of every answer.
    static let serverName = "candidate-relay"

    /// Runs until SIGTERM/SIGINT (or `shutdown()`), then drains and closes; returns normally.
    public func run() async throws {
        let config = configuration
        let router = IngestRoutes.router(handler: handler)
        let connections = ConnectionCap.fromFileLimit()
        if connections.fileLimit < ConnectionCap.lowFileLimit {
            // Found from outside: under `ulimit -n 32` the daemon started as usual, its cap as
            // large as the whole limit, and said nothing until partner requests failed for want
            // of a socket.
            logger.event(.warning, "relay.open_files_low",
                         "the open-files limit is low: at most \(connections.cap) inbound connections, and fewer than 512 "
                         + "descriptors for the outbox, the partner connections and the logs; raise LimitNOFILE= (or ulimit -n) "
                         + "to \(ConnectionCap.lowFileLimit) or more",
                         LogFields(numbers: ["open_files_limit": Double(connections.fileLimit), "max_connections": Double(connections.cap)]))
        }
        let app = Application(
            router: router,
            // A connection that completes no request part for a minute is closed: slow senders
            // that never finish their headers cannot hold sockets (and file descriptors) for ever.
            // A body that trickles is cut off by `BodyDeadlineHandler` (`bodyDeadline`).
            // The webhook itself is answered on the event loop (`IngestChannelHandler`).
            server: RelayHTTP1Channel.builder(ingest: handler, serverName: Self.serverName, bodyDeadline: bodyDeadline,
                                              configuration: .init(idleTimeout: .seconds(60))),
            configuration: .init(address: .hostname(config.listen.host, port: config.listen.port), serverName: Self.serverName,
                                 availableConnectionsDelegate: ConnectionCap(limit: connections.cap, logger: logger)),
            onServerRunning: { [self] channel in
                let port = channel.localAddress?.port ?? config.listen.port
                stoppingAnnounced.withLock { stopping in
                    guard !stopping else { return }
                    notifier.notify("READY=1\nSTATUS=listening on \(config.listen.host):\(port)")
                    ready.set(true)
                    logger.event(.notice, "relay.started", "candidate-relay is ready",
                                 LogFields(extra: ["listen": "\(config.listen.host):\(port)", "version": RelayVersion.current,
                                                   "storage": config.storage.path, "accounts": config.accounts.map(\.id).joined(separator: ",")],
                                           numbers: ["workers": Double(config.delivery.workers), "max_connections": Double(connections.cap),
                                                     "open_files_limit": Double(connections.fileLimit)]))
                }
                onReady(port)
            },
            logger: logger)
        let failed: @Sendable () -> Void = { [serviceFailed] in serviceFailed.set(true) }
        func noted(_ service: some Service) -> FailureNoted { FailureNoted(inner: service, failed: failed) }
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: noted(pool), serviceName: "delivery"),
            // On the workers' clock: a lease claimed just before a step forward the heartbeat has
            // not handled yet must not look expired (review).
            .init(service: noted(LeaseRescuer(outbox: outbox, logger: logger, now: { [guardedClock] in guardedClock.now() },
                                              held: { [pool] in pool.heldLeases() })), serviceName: "lease-rescuer"),
            .init(service: noted(RetentionPruner(outbox: outbox, storage: live.storage, logger: logger)), serviceName: "retention"),
            .init(service: noted(MemoryTrimmer()), serviceName: "memory-trimmer"),
            .init(service: noted(Heartbeat(outbox: outbox, interval: live.heartbeat, metrics: metrics, notifier: notifier,
                                     watchdogInterval: SystemdNotifier.watchdogInterval(environment: environment), logger: logger,
                                     isReady: { [ready] in ready.value }, accounts: { [live] in live.accounts.value }, gate: gate,
                                     tick: { [handler] in handler.logQuietLeftOut() }, clockBaseline: clockBaseline,
                                     statusNote: { [self] in configFile.withLock(\.problems.isEmpty) ? nil : Self.configFileInvalidStatus },
                                     guardedClock: guardedClock)),
                  serviceName: "heartbeat"),
        ]
        if let reloader {
            services.append(.init(service: noted(ReloadService(application: self, loader: reloader)), serviceName: "reload"))
            services.append(.init(service: noted(ConfigFileWatch(application: self, loader: reloader)), serviceName: "config-file-watch"))
        }
        services.append(.init(service: noted(app), serviceName: "ingest"))
        services.append(.init(service: ShutdownAnnouncer(application: self), successTerminationBehavior: .gracefullyShutdownGroup,
                              serviceName: "shutdown-announcer"))
        // No overall shutdown deadline here: the worker pool bounds in-flight deliveries by
        // shutdown_grace_seconds (which SIGHUP may change), the rest stops at once, and
        // systemd's TimeoutStopSec is the outer bound.
        let groupConfig = ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        let group = ServiceGroup(configuration: groupConfig)
        self.group.set(group)
        // Set before `group` is read there: one of the two sees the other.
        if shutdownRequested.value { await group.triggerGracefulShutdown() }
        do {
            try await group.run()
        } catch {
            let reason = Self.failureReason(error).map { ["reason": $0] } ?? [:]
            logger.event(.error, "relay.failed", "a service failed", LogFields(error: String(describing: type(of: error)), extra: reason))
            await close(failed: true)
            throw error
        }
        await close(failed: false)
    }

    /// Why a service failed, for `relay.failed` and the command's stderr line: a system call's
    /// failure says which and why (the port in use was only on stderr); other errors say nothing
    /// here, only their type elsewhere (a message could quote stored data). NIO's `IOError` says
    /// "...: Address already in use) (errno: 98)": its stray parenthesis goes.
    public static func failureReason(_ error: any Error) -> String? {
        (error as? IOError)?.description.replacingOccurrences(of: ") (errno:", with: " (errno:")
            ?? (error as? SocketAddressError.UnknownHost)?.description
    }

    /// Starts a graceful shutdown (as SIGTERM does); before `run()`, `run()` starts the services
    /// and stops them at once.
    public func shutdown() async {
        shutdownRequested.set(true)
        await group.value?.triggerGracefulShutdown()
    }

    private func close(failed: Bool) async {
        await moveForwardStepAtStop(wall: Date(), boot: ClockStepDetector.bootSeconds())
        try? await httpClient.shutdown()
        do { try outbox.close() } catch {
            logger.event(.error, "storage.failed", "outbox did not close cleanly", LogFields(error: "storage_error"))
        }
        if !failed { logger.event(.notice, "relay.stopped", "candidate-relay stopped") }
    }
}

extension RelayApplication {
    /// A step forward of the wall clock that the heartbeat had not handled when it stopped (the
    /// step came in its last second, or during the delivery drain after it): handled now, before
    /// the outbox closes. The next start cannot tell such a step from downtime, and sent at once
    /// what the windows and pauses, stored on the old clock, still held (found from outside: a
    /// SIGTERM within a second of a +30 s step, and the restart's resend met the partner still
    /// creating the candidate: two candidates; a `Retry-After: 20` waited 0.4 s). A kill -9 in
    /// that second is not covered. `wall`, `boot`: the clocks read now.
    func moveForwardStepAtStop(wall: Date, boot: Double) async {
        let before = guardedClock.now()
        let step = wall.timeIntervalSince(before)
        guard step >= ClockStepDetector.threshold else { return }
        logger.event(.warning, "clock.stepped", "the wall clock stepped forward just before the stop; the waits kept for the partner "
                     + "keep the wait they had left for the next start",
                     LogFields(numbers: ["step_seconds": (step * 1000).rounded() / 1000]))
        do {
            try await Heartbeat.moveForward(step, before: before, outbox: outbox, gate: gate,
                                            settle: { [guardedClock] in guardedClock.settle(wall: wall, boot: boot) })
        } catch {
            logger.event(.error, "storage.failed", "the outbox's holds could not follow the clock's step forward before the stop",
                         LogFields(error: OutboxError.logCode(error)))
        }
    }
}

/// A service whose failure is noted before it reaches the group, which then stops the others
/// (`RelayApplication.serviceFailed`).
struct FailureNoted: Service {
    let inner: any Service
    let failed: @Sendable () -> Void

    func run() async throws {
        do {
            try await inner.run()
        } catch {
            failed()
            throw error
        }
    }
}

/// First to hear of a graceful shutdown: makes `/readyz` and ingest answer 503, starts the
/// delivery drain (and its grace period), tells systemd.
struct ShutdownAnnouncer: Service {
    let application: RelayApplication

    func run() async throws {
        try? await gracefulShutdown()
        application.stopFlag.stop()
        application.stoppingAnnounced.withLock { announced in
            announced = true
            application.notifier.notify("STOPPING=1")
            // A failing service's stop is said by `relay.failed` once every service has stopped.
            guard !application.serviceFailed.value else { return }
            application.logger.event(.notice, "relay.stopping", "shutting down: ingest stops, in-flight deliveries get the grace period",
                                     LogFields(numbers: ["grace_seconds": application.live.delivery.value.shutdownGraceSeconds]))
        }
        // After the announcement: an idle pool's `delivery.drained` came before it (found from
        // outside, in the same millisecond).
        application.pool.beginDraining()
    }
}
