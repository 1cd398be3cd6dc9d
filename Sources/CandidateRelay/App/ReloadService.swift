import Foundation
import Logging
import ServiceLifecycle
import UnixSignals

/// SIGHUP: re-read the config file and secrets and apply what can change live (log level and
/// format, workers, rate limits, backoff, breaker, inbound secrets, partner credentials,
/// accounts added or removed). A new config that does not validate, or that drops an account
/// with events still to deliver, is refused and logged; the old one stays.
struct ReloadService: Service {
    let application: RelayApplication
    let loader: ConfigurationLoader

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            for await _ in signals {
                await application.reload(using: loader)
            }
        }
    }
}

/// Loads the config file (and its secrets) every `logging.heartbeat_seconds` (a minute at
/// most), as a start would,
/// and says when it stops loading (`config.file_invalid`, STATUS=, a gauge) and when it loads
/// again. A refused reload keeps the daemon on its old configuration, but the file stays as it
/// was written: found from outside, the next crash or reboot then exited 78, which the unit does
/// not restart (`RestartPreventExitStatus=`), and delivery stopped until someone looked. The
/// reload command refuses an invalid file before it signals the daemon, and a file may be edited
/// without a reload at all: only a look at the file itself sees those.
struct ConfigFileWatch: Service {
    let application: RelayApplication
    let loader: ConfigurationLoader

    func run() async throws {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await gracefulSleep(seconds: min(application.live.heartbeat.value, 60))
            guard !Task.isShuttingDownGracefully && !Task.isCancelled else { return }
            await application.checkConfigFile(using: loader)
        }
    }
}

extension RelayApplication {
    /// What `STATUS=` adds while the config file on disk does not load.
    static let configFileInvalidStatus = "config file invalid: a restart would fail (exit 78); see config.file_invalid in the journal"

    /// Loads the config file as a start would and records the outcome (`noteConfigFile`),
    /// unless a reload recorded its own meanwhile (its look at the file is as recent).
    public func checkConfigFile(using loader: ConfigurationLoader) async {
        let since = configFile.withLock(\.looks)
        let problems: [String]
        do {
            _ = try await loader.load()
            problems = []
        } catch let error as ConfigurationError {
            problems = error.problems.map(\.description)
        } catch {
            problems = ["the configuration could not be read"]
        }
        noteConfigFile(problems: problems, lookedSince: since)
    }

    /// Logs a change in whether the config file on disk loads (and in its problems), and keeps
    /// the gauge and STATUS= in step. Nothing is logged while nothing changed. `lookedSince`:
    /// the count of looks when this one began; when another was recorded meanwhile, this one is
    /// older and left out.
    func noteConfigFile(problems: [String], lookedSince: Int? = nil) {
        let before = configFile.withLock { state -> [String]? in
            if let lookedSince, lookedSince != state.looks { return nil }
            state.looks += 1
            defer { state.problems = problems }
            return state.problems
        }
        guard let before, before != problems else { return }
        metrics.configFileValid.record(problems.isEmpty ? 1 : 0)
        metrics.statusChanged()
        if problems.isEmpty {
            logger.event(.notice, "config.file_valid", "the config file loads again: a restart would start")
        } else {
            logger.event(.warning, "config.file_invalid",
                         "the config file no longer loads: the daemon keeps running on the configuration it has, but a restart "
                         + "(a crash, a reboot, systemctl restart) would exit 78 and stay down; fix it, check it "
                         + "(candidate-relay check-config) and reload",
                         LogFields(extra: ["problems": Self.problemsField(problems)]))
        }
    }

    /// A config's problems as one log field, at most `maxProblemsBytes` of them, then how many
    /// more (found from outside: 250 accounts whose secret files were missing made a 60 KB line,
    /// which journald splits at its 48 KB `LineMax` into pieces that are no longer JSON; the line
    /// saying why the next start would fail was lost to `jq`).
    static func problemsField(_ problems: [String]) -> String {
        var field = ""
        var bytes = 0
        for (index, problem) in problems.enumerated() {
            let separator = index == 0 ? "" : "; "
            let added = separator.utf8.count + problem.utf8.count
            guard bytes + added <= maxProblemsBytes else {
                var left = problems.count - index
                if index == 0 {
                    // One problem alone over the limit: cut between characters, not inside one.
                    var kept = 0
                    field = String(String.UnicodeScalarView(problem.unicodeScalars.prefix { scalar in
                        kept += String(scalar).utf8.count
                        return kept <= maxProblemsBytes
                    })) + "…"
                    left -= 1
                }
                if left > 0 { field += "; and \(left) more (candidate-relay check-config lists every problem)" }
                return field
            }
            field += separator + problem
            bytes += added
        }
        return field
    }

    static let maxProblemsBytes = 8192

    /// One reload; also called by tests. Returns whether the new configuration was applied.
    @discardableResult
    public func reload(using loader: ConfigurationLoader) async -> Bool {
        notifier.notify("RELOADING=1\nMONOTONIC_USEC=\(SystemdNotifier.monotonicMicroseconds())")
        defer { notifier.notify("READY=1") }
        var problems: [String] = []
        var restartNeeded: [String] = []
        do {
            let new = try await loader.load()
            let removed = live.accounts.value.ids.subtracting(new.accounts.map(\.id))
            problems = await removalProblems(removed)
            if problems.isEmpty {
                restartNeeded = await apply(new)
            } else {
                outbox.openAccounts(removed)
            }
            // Refused or not, the file loads: a restart would start.
            noteConfigFile(problems: [])
        } catch let error as ConfigurationError {
            problems = error.problems.map(\.description)
            logger.event(.error, "config.reload_rejected", "new configuration is invalid; keeping the old one",
                         LogFields(extra: ["problems": Self.problemsField(problems)]))
            noteConfigFile(problems: problems)
        } catch {
            problems = ["the configuration could not be read"]
            logger.event(.error, "config.reload_rejected", "new configuration could not be read; keeping the old one")
            noteConfigFile(problems: problems)
        }
        reportReload(ok: problems.isEmpty, problems: problems, restartNeeded: restartNeeded)
        return problems.isEmpty
    }

    /// Writes `<outbox>.reload` for `candidate-relay reload`: generation 0 at start-up
    /// (`generation: 0`), then one more after each reload, once it is applied or refused.
    func reportReload(ok: Bool, problems: [String], restartNeeded: [String] = [], generation: Int? = nil) {
        let number = generation ?? reloadGeneration.withLock { value -> Int in
            value += 1
            return value
        }
        let report = ReloadReport(pid: getpid(), generation: number, ok: ok, problems: problems, restartNeeded: restartNeeded, at: Date())
        do {
            try report.write(outboxPath: configuration.storage.path)
        } catch {
            logger.event(.error, "storage.failed", "could not write the reload report", LogFields(error: "storage_error"))
        }
    }

    /// Accounts whose partner credentials changed, and `lifted`: those that were waiting, with
    /// the end of the back-off lifted (refused credentials changed since, or a failed token
    /// request). Their events retried after a refusal are due now; each account that waited
    /// logs `auth.credentials_changed` if its credentials changed, else `auth.backoff_lifted`
    /// (`sameCredentials`: a reload after a failed token request).
    static func credentialsChanged(_ changed: Set<String>, lifted: [String: Date], outbox: Outbox, logger: Logger,
                                   sameCredentials: Set<String> = []) async {
        let accounts = changed.union(lifted.keys)
        guard !accounts.isEmpty else { return }
        let released: [String: Int]
        do {
            released = try await outbox.releaseRefused(accounts: accounts, now: Date())
        } catch {
            // They go when their own retry is due (within `delivery.backoff`).
            logger.event(.error, "storage.failed", "could not make the events retried after a credentials refusal due now",
                         LogFields(error: OutboxError.logCode(error)))
            released = [:]
        }
        for account in accounts.sorted() where lifted[account] != nil || released[account, default: 0] > 0 {
            var fields = LogFields(account: account, numbers: ["count_released": Double(released[account, default: 0])])
            if let until = lifted[account] { fields.extra["back_off_was_until"] = Timestamp.string(until) }
            if sameCredentials.contains(account) {
                logger.event(.notice, "auth.backoff_lifted",
                             "a reload ended this account's wait after a failed token request (its credentials unchanged): its events are sent again now", fields)
            } else {
                logger.event(.notice, "auth.credentials_changed",
                             "this account's partner credentials changed since the partner refused them: its events are sent again now", fields)
            }
        }
    }

    /// An account may leave the config only when it has nothing left to deliver (CONTRACT
    /// section 8): otherwise the reload is refused, each such account logged with its counts.
    /// The removed accounts are closed to new events first, then counted (`Outbox.closeAccounts`):
    /// the caller opens them again when the removal is refused.
    func removalProblems(_ removed: Set<String>) async -> [String] {
        guard !removed.isEmpty else { return [] }
        guard let counts = try? await outbox.closeAccounts(removed) else {
            logger.event(.error, "config.reload_rejected", "could not check the outbox for the accounts the new configuration drops")
            return ["accounts: could not check the outbox for the events of the accounts removed"]
        }
        var problems: [String] = []
        for account in removed.sorted() {
            guard let (pending, inFlight) = counts[account], pending + inFlight > 0 else { continue }
            problems.append("accounts.\(account): still has \(pending) pending and \(inFlight) in-flight event(s); it can leave once they are delivered or dead")
            logger.event(.error, "config.reload_rejected", "the new configuration drops an account that still has events to deliver; keeping the old one",
                         LogFields(account: account, numbers: ["count_pending": Double(pending), "count_in_flight": Double(inFlight)]))
        }
        return problems
    }

    /// Applies what can change live; returns the changed keys that wait for a restart.
    func apply(_ new: RelayConfiguration) async -> [String] {
        let old = configuration
        // An account added back after a removal takes events again.
        outbox.openAccounts(Set(new.accounts.map(\.id)))
        live.authenticators.set(AccountWiring.authenticators(new))
        live.ingest.set(new.ingest)
        live.delivery.set(DeliverySettings(configuration: new.delivery, partnerTimeoutSeconds: old.partner.timeoutSeconds,
                                       rateWindowSeconds: new.longestRateWindowSeconds))
        live.storage.set(StorageConfiguration(path: old.storage.path, payloadRetentionDays: new.storage.payloadRetentionDays,
                                              recordRetentionDays: new.storage.recordRetentionDays))
        live.heartbeat.set(new.logging.heartbeatSeconds)
        var tokenConfiguration = new
        tokenConfiguration.partner.timeoutSeconds = old.partner.timeoutSeconds
        // Credentials compared with those in use (not the start's: reloads may have changed them).
        let credentials = (before: live.tokens.value.compactMapValues(\.credentials), after: AccountWiring.credentialsFingerprints(new))
        live.tokens.set(AccountWiring.tokenProviders(tokenConfiguration, httpClient: httpClient, logger: logger, metrics: metrics,
                                                     keeping: live.tokens.value))
        // Awaited: when `candidate-relay reload` returns, the new accounts and limits are in force.
        // Sends already made stay in the windows, also a window this reload turns on or widens:
        // those are rebuilt from the history, as at start-up.
        let history = try? await outbox.requestTimes(since: Date().addingTimeInterval(-new.longestRateWindowSeconds))
        let lifted = await gate.reconfigure(
            accounts: AccountWiring.rateLimits(new), globalRateLimit: new.partner.globalRateLimit,
            breaker: new.delivery.circuitBreaker, workers: new.delivery.workers, backoff: new.delivery.backoff,
            history: history, credentials: credentials.after)
        let changed = credentials.after.filter { id, after in credentials.before[id].map { $0 != after } ?? false }
        await Self.credentialsChanged(Set(changed.keys), lifted: lifted, outbox: outbox, logger: logger,
                                      sameCredentials: Set(lifted.keys).subtracting(changed.keys))
        let before = live.accounts.value.ids
        live.accounts.set(KnownAccounts(ids: Set(new.accounts.map(\.id)), named: new.namedAccounts != nil))
        let added = Set(new.accounts.map(\.id)).subtracting(before).sorted()
        metrics.declare(accounts: added)
        let removed = before.subtracting(new.accounts.map(\.id)).sorted()
        pool.settingsChanged()
        var restartNeeded: [String] = []
        if new.listen != old.listen { restartNeeded.append("listen") }
        if new.storage.path != old.storage.path { restartNeeded.append("storage.path") }
        if new.partner.baseURL != old.partner.baseURL { restartNeeded.append("partner.base_url") }
        if new.partner.timeoutSeconds != old.partner.timeoutSeconds { restartNeeded.append("partner.timeout_seconds") }
        if !restartNeeded.isEmpty {
            logger.event(.warning, "config.restart_needed", "some changes apply only after a restart",
                         LogFields(extra: ["keys": restartNeeded.joined(separator: ",")]))
        }
        var extra = ["log_level": new.logging.level.rawValue, "accounts": new.accounts.map(\.id).joined(separator: ",")]
        if !added.isEmpty { extra["accounts_added"] = added.joined(separator: ",") }
        if !removed.isEmpty { extra["accounts_removed"] = removed.joined(separator: ",") }
        logger.event(.notice, "config.reloaded", "configuration reloaded",
                     LogFields(extra: extra, numbers: ["workers": Double(new.delivery.workers)]))
        // Last, so that the reload itself is logged whatever the new level.
        logSettings.update(level: new.logging.level, format: new.logging.format)
        return restartNeeded
    }
}
