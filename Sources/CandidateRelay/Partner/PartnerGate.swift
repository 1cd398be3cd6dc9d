import Foundation
import Logging

/// What one admitted attempt showed of the partner's health, settled with the gate once.
public enum PartnerHealth: Sendable, Equatable {
    /// Nothing that tells whether the partner is up: nothing was sent (no event due, the claim
    /// failed, shutdown), or the answer was about this client, not an outage (429: slow down;
    /// 401: these credentials). The breaker's count does not move; a probe admission is given
    /// back, so the next request probes.
    case untested
    /// The partner answered in a way that shows it works (2xx, 409, a refusing 4xx).
    case up
    /// A retryable failure (5xx, 429, timeout, connection error).
    case down
}

/// The one place every partner request passes: the global pause ordered by a `Retry-After`,
/// the circuit breaker and the sliding-window rate limit, shared by all workers.
///
/// Two scopes. `admit()` before a worker claims an event waits out a pause, an open circuit
/// and a full window (so that no lease is held while the partner cannot be called); the
/// admission is settled exactly once with `settle(_:health:)`. `withSlot` wraps each request:
/// it waits for room, holds a place in the window while the request is out, and gives it up
/// (to age out of the window) when the answer or the failure comes back.
public actor PartnerGate {
    /// Admission for one claimed event; settle it with `settle(_:health:)`.
    public struct Permit: Sendable {
        let probe: Bool
    }

    private var limiter: SlidingWindowLimiter
    private var breaker: CircuitBreaker
    private var pausedUntil: Date = .distantPast
    private let logger: Logger
    private let metrics: RelayMetrics
    private let clock: any RelayClock

    /// `history`: when requests of a previous run were answered (or given up), to seed the window.
    public init(rateLimit: RateLimitConfiguration, breaker: CircuitBreakerConfiguration, history: [Date],
                logger: Logger, metrics: RelayMetrics, clock: any RelayClock = SystemClock()) {
        limiter = SlidingWindowLimiter(limit: rateLimit.requests, window: rateLimit.perSeconds, history: history)
        self.breaker = CircuitBreaker(failures: breaker.failures, cooldown: breaker.cooldownSeconds)
        self.logger = logger
        self.metrics = metrics
        self.clock = clock
    }

    private func now() -> Date { clock.now }

    /// Applies new limits on reload.
    public func reconfigure(rateLimit: RateLimitConfiguration, breaker configuration: CircuitBreakerConfiguration) {
        limiter.reconfigure(limit: rateLimit.requests, window: rateLimit.perSeconds)
        breaker.failures = configuration.failures
        breaker.cooldown = configuration.cooldownSeconds
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
            if allowedAt != current {
                if !waitedForRate {
                    waitedForRate = true
                    metrics.rateLimitWait()
                }
                try await sleep(until: allowedAt)
                continue
            }
            switch breaker.admit(now: current) {
            case .wait(let until):
                try await sleep(until: until)
                continue
            case .send(let probe):
                return Permit(probe: probe)
            }
        }
    }

    /// Settles an admission: the breaker hears what the attempt showed, or a probe that sent
    /// nothing is given back. Called once per admission, on every path.
    public func settle(_ permit: Permit, health: PartnerHealth) {
        switch health {
        case .untested:
            if permit.probe { breaker.cancelProbe() }
        case .up:
            if breaker.recordSuccess() {
                metrics.circuitOpen.record(0)
                logger.event(.notice, "partner.circuit_closed", "partner answers again; circuit closed")
            }
        case .down:
            if breaker.recordFailure(now: now()) {
                metrics.circuitOpen.record(1)
                logger.event(.error, "partner.circuit_opened", "partner failing; sending paused",
                             LogFields(extra: ["cooldown_seconds": String(breaker.cooldown), "failures": String(breaker.failures)]))
            }
        }
    }

    /// Runs one request in a place of the rate window: waits for room (a first send, with its
    /// `admission`, also waits out a pause or a circuit opened since its admission, unless it is
    /// the probe; the immediate resend after a 401 passes `nil`: same attempt, rate limit only),
    /// runs `request`, and keeps the place until `window` after it returned. Throws only when
    /// cancelled before sending.
    ///
    /// `giveUp` is asked while waiting (shutdown: a request not sent yet is not worth waiting
    /// for; the event is handed back at once instead of at the end of the grace period).
    public nonisolated func withSlot<T: Sendable>(
        for admission: Permit?, giveUp: @escaping @Sendable () -> Bool = { false }, _ request: @Sendable () async -> T
    ) async throws -> T {
        let ticket = try await takeSlot(for: admission, giveUp: giveUp)
        let result = await request()
        await finish(ticket)
        return result
    }

    private func takeSlot(for admission: Permit?, giveUp: @Sendable () -> Bool) async throws -> SlidingWindowLimiter.Ticket {
        var waited = false
        while true {
            try Task.checkCancellation()
            if giveUp() { throw CancellationError() }
            let current = now()
            if let admission {
                if pausedUntil > current {
                    try await sleep(until: pausedUntil, atMost: 0.25)
                    continue
                }
                if !admission.probe && breaker.isOpen {
                    try await sleep(until: nil, atMost: 0.25)
                    continue
                }
            }
            if let ticket = limiter.reserve(now: current) { return ticket }
            if !waited {
                waited = true
                metrics.rateLimitWait()
            }
            try await sleep(until: limiter.earliestAllowed(now: current), atMost: 0.25)
        }
    }

    private func finish(_ ticket: SlidingWindowLimiter.Ticket) {
        limiter.finish(ticket, now: now())
    }

    /// Every worker waits until `until` (a partner `Retry-After`).
    public func pause(until: Date) {
        if until > pausedUntil {
            pausedUntil = until
            logger.event(.warning, "partner.paused", "partner asked to retry later; all workers paused",
                         LogFields(extra: ["until": Timestamp.string(until)]))
        }
    }

    /// Sleeps until `date`, at most a second (a pause or a limit may change meanwhile); `nil`
    /// (waiting on something in flight) polls every 50 ms.
    private func sleep(until date: Date?, atMost limit: Double = 1) async throws {
        let seconds = date.map { max(0.001, min($0.timeIntervalSince(now()), limit)) } ?? 0.05
        try await clock.sleep(until: now().addingTimeInterval(seconds))
    }
}
