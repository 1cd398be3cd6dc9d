import Foundation
import Logging

/// The one place every partner request passes: the global pause ordered by a `Retry-After`,
/// the circuit breaker and the sliding-window rate limit, shared by all workers.
///
/// Two steps. `admit()` before a worker claims an event: waits out a pause, an open circuit and
/// a full window (so that no lease is held while the partner cannot be called). `takeSlot()`
/// right before the request leaves: waits until the window has room and records the send in
/// the same step, so the window holds real send instants and never more than the limit.
public actor PartnerGate {
    /// Admission for one claimed event; give it back with `cancel` if nothing is sent.
    public struct Permit: Sendable {
        let probe: Bool
    }

    private var limiter: SlidingWindowLimiter
    private var breaker: CircuitBreaker
    private var pausedUntil: Date = .distantPast
    private let logger: Logger
    private let metrics: RelayMetrics
    private let now: @Sendable () -> Date

    public init(rateLimit: RateLimitConfiguration, breaker: CircuitBreakerConfiguration, history: [Date],
                logger: Logger, metrics: RelayMetrics, now: @escaping @Sendable () -> Date = Date.init) {
        limiter = SlidingWindowLimiter(limit: rateLimit.requests, window: Self.guardedWindow(rateLimit.perSeconds), history: history)
        self.breaker = CircuitBreaker(failures: breaker.failures, cooldown: breaker.cooldownSeconds)
        self.logger = logger
        self.metrics = metrics
        self.now = now
    }

    /// Applies new limits on reload.
    public func reconfigure(rateLimit: RateLimitConfiguration, breaker configuration: CircuitBreakerConfiguration) {
        limiter.reconfigure(limit: rateLimit.requests, window: Self.guardedWindow(rateLimit.perSeconds))
        breaker.failures = configuration.failures
        breaker.cooldown = configuration.cooldownSeconds
    }

    /// The window the limiter enforces: the partner's plus 1 % (at least 50 ms, at most 1 s), so
    /// that jitter between our send and the partner's arrival cannot squeeze one request too
    /// many into the partner's own window.
    static func guardedWindow(_ perSeconds: Double) -> Double {
        perSeconds + min(1, max(0.05, perSeconds * 0.01))
    }

    /// Waits until a request could go (no pause, room in the window, circuit closed or this is
    /// the probe). Cancellation ends the wait (throws).
    public func admit() async throws -> Permit {
        var waitedForRate = false
        while true {
            try Task.checkCancellation()
            let current = now()
            if pausedUntil > current {
                try await sleep(until: pausedUntil)
                continue
            }
            let allowedAt = limiter.earliestAllowed(now: current)
            if allowedAt > current {
                if !waitedForRate {
                    waitedForRate = true
                    metrics.rateLimitWait()
                }
                try await sleep(until: allowedAt)
                continue
            }
            switch breaker.admit(now: current) {
            case .wait(let until):
                try await sleep(until: until ?? current.addingTimeInterval(0.05))
                continue
            case .send(let probe):
                return Permit(probe: probe)
            }
        }
    }

    /// Records a send now, waiting first if the window is full. A first send (`admission`
    /// given) also waits out a pause or a circuit that opened after its admission, unless it is
    /// the probe. The immediate resend after a 401 (`admission == nil`) is part of the same
    /// attempt and only respects the rate limit (waiting on a probe it holds would deadlock).
    public func takeSlot(for admission: Permit?) async throws {
        var waited = false
        while true {
            try Task.checkCancellation()
            let current = now()
            if let admission {
                if pausedUntil > current {
                    try await sleep(until: pausedUntil)
                    continue
                }
                if !admission.probe && breaker.isOpen {
                    try await sleep(until: current.addingTimeInterval(0.05))
                    continue
                }
            }
            if limiter.reserve(now: current) { return }
            if !waited {
                waited = true
                metrics.rateLimitWait()
            }
            try await sleep(until: limiter.earliestAllowed(now: current))
        }
    }

    /// Gives back an admission that sent nothing (no event was due, the claim failed).
    public func cancel(_ permit: Permit) {
        if permit.probe { breaker.cancelProbe() }
    }

    /// Every worker waits until `until` (a partner `Retry-After`).
    public func pause(until: Date) {
        if until > pausedUntil {
            pausedUntil = until
            logger.event(.warning, "partner.paused", "partner asked to retry later; all workers paused",
                         LogFields(extra: ["until": Timestamp.string(until)]))
        }
    }

    /// The partner answered (any non-retryable answer proves it is up).
    public func recordSuccess() {
        if breaker.recordSuccess() {
            metrics.circuitOpen.record(0)
            logger.event(.notice, "partner.circuit_closed", "partner answers again; circuit closed")
        }
    }

    /// A retryable failure (5xx, 429, timeout, connection error).
    public func recordFailure() {
        if breaker.recordFailure(now: now()) {
            metrics.circuitOpen.record(1)
            logger.event(.error, "partner.circuit_opened", "partner failing; sending paused",
                         LogFields(extra: ["cooldown_seconds": String(breaker.cooldown), "failures": String(breaker.failures)]))
        }
    }

    private func sleep(until date: Date) async throws {
        let seconds = max(0.001, min(date.timeIntervalSince(now()), 1))
        try await Task.sleep(for: .seconds(seconds))
    }
}
