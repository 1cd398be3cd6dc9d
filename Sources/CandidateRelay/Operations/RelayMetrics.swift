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
    private let totals = Mutex<[String: Int]>([:])
    private let changes = Atomic<Int>(0)

    /// Bumped by every accepted event and every recorded delivery outcome: a cheap "did the
    /// counts change?" for STATUS= refreshes.
    public var changeCount: Int { changes.load(ordering: .relaxed) }

    public let outboxEvents: [EventState: Metrics.Gauge]
    public let oldestPendingAge: Metrics.Gauge
    public let circuitOpen: Metrics.Gauge
    public let partnerLatency: Metrics.Timer

    public init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5), .seconds(10), .seconds(30),
        ]
        self.factory = factory
        var gauges: [EventState: Metrics.Gauge] = [:]
        for state in EventState.allCases {
            gauges[state] = Metrics.Gauge(label: "candidate_relay_outbox_events", dimensions: [("state", state.rawValue)], factory: factory)
        }
        outboxEvents = gauges
        oldestPendingAge = Metrics.Gauge(label: "candidate_relay_oldest_pending_age_seconds", factory: factory)
        circuitOpen = Metrics.Gauge(label: "candidate_relay_partner_circuit_open", factory: factory)
        partnerLatency = Metrics.Timer(label: "candidate_relay_partner_request_duration_seconds", factory: factory)
    }

    /// Increments a counter, creating it on first use (label + dimensions identify it).
    public func count(_ label: String, _ dimensions: [(String, String)] = [], by amount: Int = 1) {
        let key = label + dimensions.map { "|\($0.0)=\($0.1)" }.joined()
        let counter = counters.withLock { counters in
            if let existing = counters[key] { return existing }
            let created = Metrics.Counter(label: label, dimensions: dimensions, factory: factory)
            counters[key] = created
            return created
        }
        counter.increment(by: amount)
    }

    public func ingest(result: String) {
        if result == "accepted" { changes.add(1, ordering: .relaxed) }
        count("candidate_relay_ingest_requests_total", [("result", result)])
    }
    public func delivery(outcome: String) {
        changes.add(1, ordering: .relaxed)
        count("candidate_relay_deliveries_total", [("outcome", outcome)])
        totals.withLock { $0[outcome, default: 0] += 1 }
    }

    /// Deliveries by outcome since start (for the heartbeat's "since last beat" figures).
    public func deliveryTotals() -> [String: Int] { totals.withLock { $0 } }
    public func partnerResponse(status: String) { count("candidate_relay_partner_responses_total", [("status", status)]) }
    public func tokenMinted(mode: String) { count("candidate_relay_token_mints_total", [("mode", mode)]) }
    public func rateLimitWait() { count("candidate_relay_rate_limit_waits_total") }

    /// Refreshes the state gauges from an outbox status.
    public func update(from status: OutboxStatus) {
        for state in EventState.allCases { outboxEvents[state]?.record(status.counts[state] ?? 0) }
        oldestPendingAge.record(status.oldestPendingAgeSeconds ?? 0)
    }

    /// Prometheus text exposition.
    public func exposition() -> String { registry.emitToString() }
}
