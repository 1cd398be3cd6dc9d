import Foundation
import Metrics
@preconcurrency import Prometheus
import Synchronization

/// The relay's metrics (names prefixed `candidate_relay_`), on a registry of its own so several
/// relays can live in one test process without a global bootstrap.
public final class RelayMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    let factory: PrometheusMetricsFactory
    private let counters = Mutex<[String: Metrics.Counter]>([:])
    /// `candidate_relay_ingest_requests_total`'s counters by their two labels (`ingest`).
    private let ingestCounters = Mutex<[IngestCounterKey: Metrics.Counter]>([:])
    private struct IngestCounterKey: Hashable {
        let account: String
        let result: String
    }
    private let totals = Mutex<[String: Int]>([:])
    private let changes = Atomic<Int>(0)

    /// Bumped by every accepted event and every recorded delivery outcome: a cheap "did the
    /// counts change?" for STATUS= refreshes.
    public var changeCount: Int { changes.load(ordering: .relaxed) }

    private let gauges = Mutex<[String: Metrics.Gauge]>([:])
    private let timers = Mutex<[String: Metrics.Timer]>([:])
    /// Accounts whose gauges were set: one that left keeps reading 0, not its last value.
    private let gaugedAccounts = Mutex<Set<String>>([])
    public let circuitOpen: Metrics.Gauge
    /// 1 while the config file on disk (with its secrets) loads as a start would load it, 0
    /// while it does not: a crash or reboot would then leave the daemon down (`ConfigFileWatch`).
    public let configFileValid: Metrics.Gauge

    public init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30),
        ]
        self.factory = factory
        circuitOpen = Metrics.Gauge(label: "candidate_relay_partner_circuit_open", factory: factory)
        configFileValid = Metrics.Gauge(label: "candidate_relay_config_file_valid", factory: factory)
        configFileValid.record(1)
    }

    /// Makes the heartbeat refresh STATUS= at its next tick, as a change of the counts does.
    public func statusChanged() { changes.add(1, ordering: .relaxed) }

    /// The cache key of a metric: its label and dimensions, built in place (this runs for
    /// every request).
    private static func key(_ label: String, _ dimensions: [(String, String)]) -> String {
        var key = label
        for (name, value) in dimensions {
            key += "|"
            key += name
            key += "="
            key += value
        }
        return key
    }

    private func gauge(_ label: String, _ dimensions: [(String, String)]) -> Metrics.Gauge {
        let key = Self.key(label, dimensions)
        return gauges.withLock { gauges in
            if let existing = gauges[key] { return existing }
            let created = Metrics.Gauge(label: label, dimensions: dimensions, factory: factory)
            gauges[key] = created
            return created
        }
    }

    /// The partner's answer time, per account.
    public func partnerLatency(account: String, nanoseconds: Int64) {
        let timer = timers.withLock { timers in
            if let existing = timers[account] { return existing }
            let created = Metrics.Timer(label: "candidate_relay_partner_request_duration_seconds", dimensions: [("account", account)],
                                        factory: factory)
            timers[account] = created
            return created
        }
        timer.recordNanoseconds(nanoseconds)
    }

    /// Increments a counter, creating it on first use (label + dimensions identify it).
    public func count(_ label: String, _ dimensions: [(String, String)] = [], by amount: Int = 1) {
        counter(label, dimensions).increment(by: amount)
    }

    private func counter(_ label: String, _ dimensions: [(String, String)]) -> Metrics.Counter {
        let key = Self.key(label, dimensions)
        return counters.withLock { counters in
            if let existing = counters[key] { return existing }
            let created = Metrics.Counter(label: label, dimensions: dimensions, factory: factory)
            counters[key] = created
            return created
        }
    }

    /// The counters an alert reads with `rate()` or `increase()`, exported from 0 for each
    /// account (at start, and for an account a reload adds): born at their first increment,
    /// already at 1, they let the first dead event, retry, 429 or webhook after a start go
    /// uncounted by those functions (found from outside).
    public func declare(accounts: [String]) {
        for account in accounts {
            for outcome in ["delivered", "linked", "retry", "dead", "interrupted", "unrecorded"] {
                count("candidate_relay_deliveries_total", [("account", account), ("outcome", outcome)], by: 0)
            }
            count("candidate_relay_partner_rate_limited_total", [("account", account)], by: 0)
            ingestCounter(result: "accepted", account: account).increment(by: 0)
        }
    }

    /// `account` is empty when the request named no known account (404 `unknown_account`): an
    /// unknown name never becomes a label.
    public func ingest(result: String, account: String) {
        if result == "accepted" { changes.add(1, ordering: .relaxed) }
        ingestCounter(result: result, account: account).increment()
    }

    /// Every webhook's counter: found by its two labels, without building `count`'s key string.
    private func ingestCounter(result: String, account: String) -> Metrics.Counter {
        let key = IngestCounterKey(account: account, result: result)
        if let counter = ingestCounters.withLock({ $0[key] }) { return counter }
        let counter = counter("candidate_relay_ingest_requests_total", [("account", account), ("result", result)])
        ingestCounters.withLock { $0[key] = counter }
        return counter
    }

    public func delivery(outcome: String, account: String) {
        changes.add(1, ordering: .relaxed)
        count("candidate_relay_deliveries_total", [("account", account), ("outcome", outcome)])
        totals.withLock {
            $0[outcome, default: 0] += 1
            $0["\(account)|\(outcome)", default: 0] += 1
        }
    }

    /// Deliveries by outcome since start (for the heartbeat's "since last beat" figures): keys
    /// `outcome` in total and `account|outcome` per account.
    public func deliveryTotals() -> [String: Int] { totals.withLock { $0 } }
    public func partnerResponse(status: String, account: String) {
        count("candidate_relay_partner_responses_total", [("account", account), ("status", status)])
    }
    public func tokenMinted(mode: String, account: String) {
        count("candidate_relay_token_mints_total", [("account", account), ("mode", mode)])
    }
    /// A request that waited for room in a window (`account` empty: the global one).
    public func rateLimitWait(account: String) { count("candidate_relay_rate_limit_waits_total", [("account", account)]) }

    /// Refreshes the state gauges from an outbox status: one series per account and state.
    public func update(from status: OutboxStatus) {
        let accounts = gaugedAccounts.withLock { known -> Set<String> in
            known.formUnion(status.accounts.keys)
            return known
        }
        for account in accounts {
            let counts = status.accounts[account]
            for state in EventState.allCases {
                gauge("candidate_relay_outbox_events", [("account", account), ("state", state.rawValue)]).record(counts?.counts[state] ?? 0)
            }
            gauge("candidate_relay_oldest_pending_age_seconds", [("account", account)]).record(counts?.oldestPendingAgeSeconds ?? 0)
        }
    }

    /// Prometheus text exposition.
    public func exposition() -> String {
        // Log lines the process's output refused since the last exposition: a log handler has no
        // metrics of its own (and its reader being gone is exactly when a log line cannot say so).
        let dropped = LogOutput.droppedLines
        let unseen = droppedLinesSeen.withLock { seen in
            defer { seen = max(seen, dropped) }
            return dropped - seen
        }
        // Exported from 0 on (found from outside: the series was born at its first drop, above
        // 0, which Prometheus' `increase()` and `rate()` do not count).
        count("candidate_relay_log_lines_dropped_total", by: unseen)
        return registry.emitToString()
    }
    /// `LogOutput.droppedLines` already counted in this registry.
    private let droppedLinesSeen = Mutex(0)
}
