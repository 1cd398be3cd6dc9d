import Foundation
import Logging

extension DeliveryWorkerPool {
    /// The partner exchange of one claimed event: token, request, and the single immediate
    /// resend with a fresh token after a 401 that is not `duplicate_candidate`.
    struct Exchange: Sendable {
        var answer: PartnerAnswer
        var classification: Classification
        var latencyMs: Int
        /// Nothing was sent: the lease was taken back (or could not be renewed) while waiting.
        var notSent = false
    }

    /// Delivers one claimed event and records the outcome. If shutdown's grace period ends
    /// first, the request is cancelled and the event handed back without using an attempt.
    func deliver(_ event: ClaimedEvent, permit: PartnerGate.Permit, settings: DeliverySettings) async {
        let policy = settings.policy
        let graceSeconds = settings.shutdownGraceSeconds
        let exchange: Exchange? = await withTaskGroup(of: Exchange?.self) { group in
            group.addTask { await self.exchange(event, admission: permit, leaseSeconds: settings.leaseSeconds) }
            group.addTask {
                while !self.isDraining {
                    try? await Task.sleep(for: .milliseconds(50))
                    if Task.isCancelled { return nil }
                }
                try? await Task.sleep(for: .seconds(graceSeconds))
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        let current = now()
        if let exchange, exchange.notSent {
            // Nothing left: hand the event back if the lease is still ours (the CAS ignores it,
            // and logs delivery.stale_outcome, when another worker holds it now).
            await gate.cancel(permit)
            await record(event, .interrupted, latencyMs: nil, now: current)
            return
        }
        guard let exchange else {
            await gate.cancel(permit)
            await record(event, .interrupted, latencyMs: nil, now: current)
            logger.event(.notice, "delivery.interrupted", "shutdown grace over; event handed back without using an attempt",
                         fields(event))
            metrics.delivery(outcome: "interrupted")
            return
        }
        let outcome = await decide(event, exchange: exchange, policy: policy, now: current)
        await record(event, outcome, latencyMs: exchange.latencyMs, now: current)
        log(event, outcome: outcome, exchange: exchange)
    }

    func exchange(_ event: ClaimedEvent, admission: PartnerGate.Permit, leaseSeconds: Double) async -> Exchange {
        let first = await send(event, admission: admission, leaseSeconds: leaseSeconds)
        guard first.classification == .refreshTokenAndResend else { return first }
        // Resend at once with a fresh token; it uses no attempt but it is a request, so it passes the rate limit.
        logger.event(.warning, "auth.token_rejected", "partner refused the token; minting a fresh one and resending once",
                     fields(event, status: 401))
        try? await outbox.recordAuthRetry(event, status: 401, now: now(), latencyMs: first.latencyMs)
        var second = await send(event, admission: nil, leaseSeconds: leaseSeconds)
        if second.notSent { return first }
        if second.classification == .refreshTokenAndResend {
            second.classification = .retry(error: "unauthorized", retryAfter: nil)
        }
        return second
    }

    /// One request: a rate slot (waiting if needed), the lease renewed (never send an event
    /// another worker may hold now), a token fetched after the wait (so it is fresh), then POST.
    private func send(_ event: ClaimedEvent, admission: PartnerGate.Permit?, leaseSeconds: Double) async -> Exchange {
        let notSent = Exchange(answer: .transportFailure(.other), classification: .retry(error: "not_sent", retryAfter: nil),
                               latencyMs: 0, notSent: true)
        // Cancelled while waiting (shutdown): nothing was sent.
        guard (try? await gate.takeSlot(for: admission)) != nil else { return notSent }
        // Only this daemon takes leases back, and only expired ones: while less than half of the
        // lease has run it is certainly still ours, and the renewal (an fsync) is skipped.
        if now().timeIntervalSince(event.leasedAt) > leaseSeconds / 2 {
            guard (try? await outbox.renewLease(event, seconds: leaseSeconds, now: now())) == true else { return notSent }
        }
        let provider = tokens.value
        let token: String
        do {
            token = try await provider.token()
        } catch {
            let answer = PartnerAnswer.transportFailure(.tokenUnavailable)
            return Exchange(answer: answer, classification: OutcomeClassifier.classify(answer, now: now()), latencyMs: 0)
        }
        let clock = ContinuousClock()
        let started = clock.now
        let answer = await client.createCandidate(payload: event.payload, idempotencyKey: event.id, bearerToken: token)
        let elapsed = clock.now - started
        metrics.partnerLatency.recordNanoseconds(Int64(elapsed.components.seconds) * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
        let latencyMs = Int(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000)
        let classification = OutcomeClassifier.classify(answer, now: now())
        switch answer {
        case .response(let status, _, _): metrics.partnerResponse(status: String(status))
        case .transportFailure(let failure): metrics.partnerResponse(status: failure.rawValue)
        }
        if classification == .refreshTokenAndResend { await provider.invalidate(token) }
        return Exchange(answer: answer, classification: classification, latencyMs: latencyMs)
    }

    /// Applies the retry budget and tells the gate what the partner's answer says about its health.
    func decide(_ event: ClaimedEvent, exchange: Exchange, policy: RetryPolicy, now: Date) async -> RecordedOutcome {
        var status: Int?
        var body = Data()
        if case .response(let code, _, let data) = exchange.answer {
            status = code
            body = data
        }
        switch exchange.classification {
        case .delivered(let uid, let summary):
            await gate.recordSuccess()
            return .delivered(candidateUID: uid, status: status ?? 200, summary: summary, fullResponse: body)
        case .linked(let uid, let error):
            await gate.recordSuccess()
            return .linked(candidateUID: uid, status: status ?? 409, error: error)
        case .dead(let error):
            await gate.recordSuccess()
            return .dead(status: status, error: Self.describe(error, body: body))
        case .refreshTokenAndResend:
            // The resend did not happen (the lease was taken back): the CAS will drop this, but
            // the breaker must still hear of the attempt, or a probe would never be released.
            await gate.recordFailure()
            return .retry(at: now, status: status, error: "unauthorized")
        case .retry(let error, let partnerRetryAfter):
            await gate.recordFailure()
            // A Retry-After beyond the longest backoff (a proxy's or a partner's bug) is capped,
            // so that it cannot pause every worker for days.
            let retryAfter = partnerRetryAfter.map { min($0, now.addingTimeInterval(policy.backoff.maxSeconds)) }
            if let retryAfter { await gate.pause(until: retryAfter) }
            if status == 429 {
                metrics.count("candidate_relay_partner_rate_limited_total")
                logger.event(.warning, "partner.rate_limited", "partner answered 429 too_many_requests",
                             fields(event, status: 429, extra: retryAfter.map { ["retry_after": Timestamp.string($0)] } ?? [:]))
            }
            if let next = policy.nextAttempt(after: event.attempt, budgetStartedAt: event.budgetStartedAt, now: now, retryAfter: retryAfter) {
                return .retry(at: next, status: status, error: error)
            }
            let reason = event.attempt >= policy.maxAttempts ? "attempts_exhausted" : "max_age_exceeded"
            return .dead(status: status, error: "\(reason): \(error)")
        }
    }

    /// `code: message` from the partner, bounded; the message is kept in the outbox only.
    static func describe(_ code: String, body: Data) -> String {
        guard let message = PartnerErrorBody(body).message, !message.isEmpty else { return code }
        return String("\(code): \(message)".prefix(500))
    }

    /// Records in a task of its own: shutdown may cancel the worker, and a cancelled GRDB write
    /// would leave the event in flight (an attempt lost) instead of recorded.
    private func record(_ event: ClaimedEvent, _ outcome: RecordedOutcome, latencyMs: Int?, now: Date) async {
        await Task { await self.recordNow(event, outcome, latencyMs: latencyMs, now: now) }.value
    }

    private func recordNow(_ event: ClaimedEvent, _ outcome: RecordedOutcome, latencyMs: Int?, now: Date) async {
        do {
            if try await outbox.complete(event, outcome: outcome, now: now, latencyMs: latencyMs) == false {
                logger.event(.warning, "delivery.stale_outcome", "outcome ignored: the lease was taken back meanwhile", fields(event))
            }
        } catch {
            // The lease stays; the rescuer returns the event to pending when it expires.
            logger.event(.error, "storage.failed", "could not record a delivery outcome", fields(event, error: Self.errorCode(error)))
        }
    }

    private func log(_ event: ClaimedEvent, outcome: RecordedOutcome, exchange: Exchange) {
        var status: Int?
        if case .response(let code, _, _) = exchange.answer { status = code }
        let latency = exchange.latencyMs
        switch outcome {
        case .delivered(let uid, _, _, _):
            metrics.delivery(outcome: "delivered")
            logger.event(.info, "delivery.succeeded", "candidate created at the partner", fields(event, status: status, latencyMs: latency, candidateUID: uid))
        case .linked(let uid, _, _):
            metrics.delivery(outcome: "linked")
            logger.event(.info, "delivery.linked", "candidate already existed at the partner; linked", fields(event, status: status, latencyMs: latency, candidateUID: uid))
        case .retry(let at, _, let error):
            metrics.delivery(outcome: "retry")
            logger.event(.warning, "delivery.retry_scheduled", "delivery failed; retry scheduled",
                         fields(event, status: status, latencyMs: latency, error: error, extra: ["next_attempt_at": Timestamp.string(at)]))
        case .dead(_, let error):
            metrics.delivery(outcome: "dead")
            let code = String(error.prefix { $0 != ":" })
            logger.event(.error, "delivery.dead", "delivery gave up; event is dead", fields(event, status: status, latencyMs: latency, error: code))
        case .interrupted:
            break
        }
    }

    func fields(_ event: ClaimedEvent, status: Int? = nil, latencyMs: Int? = nil, candidateUID: String? = nil,
                error: String? = nil, extra: [String: String] = [:]) -> LogFields {
        LogFields(eventID: event.id, positionUID: event.positionUID, partnerCandidateID: event.partnerCandidateID,
                  attempt: event.attempt, status: status, latencyMs: latencyMs, candidateUID: candidateUID, error: error, extra: extra)
    }
}
