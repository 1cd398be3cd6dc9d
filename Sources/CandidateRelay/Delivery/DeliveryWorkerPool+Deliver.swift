import Foundation
import Logging

extension DeliveryWorkerPool {
    /// What reached the partner for one claimed event, and what came back.
    struct Exchange: Sendable {
        var answer: PartnerAnswer
        var classification: Classification
        var latencyMs: Int
        /// A 401 again right after the resend with a freshly minted token.
        var credentialsRejected = false
        /// The fingerprint of the credentials the (last) request was made with.
        var credentials: String?
        /// No token: the token endpoint's `Retry-After`, when it gave one.
        var tokenRetryAfter: Date?

        var status: Int? {
            if case .response(let code, _, _, _) = answer { return code }
            return nil
        }
        var body: Data {
            if case .response(_, _, let data, _) = answer { return data }
            return Data()
        }
        /// A 401's `PartnerAnswer.clockOffset`.
        var clockOffset: Double? {
            if case .response(_, _, _, let offset) = answer { return offset }
            return nil
        }
    }

    /// Delivers one claimed event: the exchange, then one pure decision, then its effects (the
    /// gate settled with what the attempt showed, the recorded outcome, the log line). If
    /// shutdown's grace period ends first, the request is cancelled and the event handed back
    /// without using an attempt.
    func deliver(_ event: ClaimedEvent, permit: PartnerGate.Permit, settings: DeliverySettings) async {
        let sent = await withinShutdownGrace(settings.shutdownGraceSeconds) {
            await self.exchange(event, permit: permit, leaseSeconds: settings.leaseSeconds)
        }
        guard case .some(.some(let exchange)) = sent else {
            // Hand the event back if the lease is still ours (the CAS ignores it otherwise),
            // without using an attempt. The grace period ran out (`sent == nil`): a request
            // may have reached the partner, and the history says so (`interrupted`). Nothing
            // was sent (the lease was taken back, the account paused or removed meanwhile), or
            // only a request refused with 401 whose resend could not go: no history row (the
            // 401's is written already), which would count as a request in the rate windows
            // rebuilt at the next start.
            await gate.settle(permit, .nothingSent)
            let current = now()
            let resendAt = current.addingTimeInterval(settings.cutOffHoldSeconds)
            let outcome: RecordedOutcome = sent == nil ? .interrupted(resendAt: resendAt) : .unsent
            let written = await record(event, outcome, latencyMs: nil, now: current)
            if sent == nil {
                logInterrupted(event, "shutdown grace over; event handed back without using an attempt, resent at `until` at the earliest "
                               + "(the cut-off request may still be at work at the partner)", written: written, until: resendAt)
            }
            return
        }
        // No token could be had (an OAuth2 token endpoint refusing the client, failing or not
        // answering): nothing of this event reached the partner. Its attempt is not used, and
        // the account waits (the credentials back-off) instead of every event of its backlog
        // asking the token endpoint in turn and spending its attempts: a revoked client secret
        // for a few hours turned a whole backlog dead.
        if case .transportFailure(.tokenUnavailable) = exchange.answer {
            await gate.settle(permit, AttemptReport(health: .untested, tokenUnavailable: true, credentials: exchange.credentials,
                                                    tokenRetryAfter: exchange.tokenRetryAfter))
            _ = await record(event, .unsent, latencyMs: nil, now: now())
            return
        }
        let current = now()
        var decision = DeliveryDecision.decide(
            exchange.classification, status: exchange.status, body: exchange.body, attempt: event.attempt,
            budgetStartedAt: event.budgetStartedAt, policy: settings.policy, now: current)
        // Given up without an answer after the request may have reached the partner: the
        // partner may still be creating the candidate, so the resend waits for it too, and so
        // does every other event of the candidate (`partner_open_until`).
        let partnerOpenUntil = exchange.answer.mayStillBeAtThePartner ? current.addingTimeInterval(settings.abandonedHoldSeconds) : nil
        if case .retry(let at, let status, let error) = decision.outcome, let partnerOpenUntil {
            decision.outcome = .retry(at: max(at, partnerOpenUntil), status: status, error: error)
        }
        // A 429's Retry-After is this account's (its api-key's limit); any other (a 503's) is
        // the partner's, for every account.
        let accountPause = exchange.status == 429
        await gate.settle(permit, AttemptReport(
            health: decision.health, status: exchange.status,
            accountPauseUntil: accountPause ? decision.pauseUntil : nil, partnerPauseUntil: accountPause ? nil : decision.pauseUntil,
            credentialsRejected: exchange.credentialsRejected, credentials: exchange.credentials,
            // Only for the relay's own JWTs: an oauth2 token's times are its token endpoint's (review).
            partnerClockOffset: exchange.credentialsRejected && tokens.value[event.account] is ComeetTokenProvider ? exchange.clockOffset : nil))
        // Refused credentials that a reload replaced while the request was out: the retry is
        // due at once (the reload made the others due already, before this outcome was written).
        if exchange.credentialsRejected, let used = exchange.credentials, let inForce = tokens.value[event.account]?.credentials,
           used != inForce, case .retry(_, let status, let error) = decision.outcome {
            decision.outcome = .retry(at: current, status: status, error: error)
        }
        // The worker goes on to its next claim without waiting for this outcome's commit: the
        // two usually share one transaction (one fsync wait per delivery, not two; with 16
        // workers delivery was bound by those waits). Shutdown waits for every outcome.
        var recorded = event
        recorded.payload = Data()  // not needed to record: not held (a large one) until the commit
        outcomes.run { [self, recorded, decision] in
            let written = await recordNow(recorded, decision.outcome, latencyMs: exchange.latencyMs, now: current,
                                          partnerOpenUntil: partnerOpenUntil)
            // A dead outcome of an event `forget` erased while its request was out is recorded
            // `erased`: its line says so too, not the partner's code, which sent the operator to
            // fix a cause and retry an event no retry can send (review). One read, dead ones only.
            var erased = false
            if written == .recorded, case .dead = decision.outcome {
                erased = (try? await outbox.record(id: recorded.id))??.lastError == "erased"
            }
            log(recorded, decision: decision, exchange: exchange, written: written, erased: erased)
        }
    }

    /// Runs `operation` until it returns, or until shutdown's grace period (counted from the
    /// start of draining) is over: then it is cancelled and the result is nil.
    private func withinShutdownGrace<T: Sendable>(_ graceSeconds: Double, _ operation: @escaping @Sendable () async -> T) async -> T? {
        await withTaskGroup(of: T?.self) { group in
            group.addTask { await operation() }
            group.addTask {
                await self.drain.wait()
                if Task.isCancelled { return nil }
                try? await TimerSleep.sleep(seconds: graceSeconds)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }

    /// The partner exchange of one claimed event: the request, and after a 401 that is not
    /// `duplicate_candidate` the single immediate resend with a fresh token. Nil: nothing sent,
    /// or nothing but a request the partner refused with 401 (nothing created) whose resend
    /// could not go (a pause, a credentials back-off or an open circuit since, the lease taken
    /// back, shutdown): the event is handed back without using an attempt (review: it was
    /// retried with the attempt used, and on the last attempt it went dead).
    func exchange(_ event: ClaimedEvent, permit: PartnerGate.Permit, leaseSeconds: Double) async -> Exchange? {
        guard let first = await send(event, permit: permit, leaseSeconds: leaseSeconds) else { return nil }
        guard first.classification == .refreshTokenAndResend else { return first }
        // Resend at once with a fresh token; it uses no attempt but it is a request, so it passes the rate limit.
        logger.event(.warning, "auth.token_rejected", "partner refused the token; minting a fresh one and resending once",
                     fields(event, status: 401))
        try? await outbox.recordAuthRetry(event, status: 401, now: now(), latencyMs: first.latencyMs)
        guard var second = await send(event, permit: nil, resendOf: permit, leaseSeconds: leaseSeconds) else { return nil }
        if second.classification == .refreshTokenAndResend {
            second.classification = .retry(error: "unauthorized", retryAfter: nil)
            second.credentialsRejected = true
        }
        return second
    }

    /// Claimed longer ago than this, an event is checked again before its request (`forget`).
    static let recheckAfterSeconds = 0.1

    /// One request: the account's token; the lease renewed if half of it has run (never send an
    /// event another worker may hold now), or the event read again if it was claimed a while
    /// ago (never send a payload erased since); then the POST in the permit's place of the
    /// rate windows (the resend after a 401, `permit == nil`, of the request made with
    /// `resendOf`, waits for a place of its own). Nil when nothing was sent.
    private func send(_ event: ClaimedEvent, permit: PartnerGate.Permit?, resendOf: PartnerGate.Permit? = nil,
                      leaseSeconds: Double) async -> Exchange? {
        // The account left the config meanwhile (a reload): its events wait for it.
        guard let provider = tokens.value[event.account] else { return nil }
        // A resend that may not go is not given a fresh token first (with oauth2, a request).
        if permit == nil, !(await gate.mayResend(account: event.account, resendOf: resendOf)) { return nil }
        let token: String
        do {
            token = try await provider.token()
        } catch {
            if Task.isCancelled { return nil }
            let answer = PartnerAnswer.transportFailure(.tokenUnavailable)
            return Exchange(answer: answer, classification: OutcomeClassifier.classify(answer, now: now()), latencyMs: 0,
                            credentials: provider.credentials, tokenRetryAfter: (error as? TokenUnavailable)?.retryAfter)
        }
        // Only this daemon takes leases back, and only expired ones: while less than half of the
        // lease has run it is certainly still ours, and the renewal (an fsync) is skipped. An
        // event that waited since its claim (claimed ahead behind another request, a slow
        // token) is read again: `forget` may have erased its payload meanwhile, and the copy
        // in memory must not reach the partner after that.
        let waited = now().timeIntervalSince(event.leasedAt)
        if waited > leaseSeconds / 2 {
            guard (try? await outbox.renewLease(event, seconds: leaseSeconds, now: now())) == true else { return nil }
        } else if waited > Self.recheckAfterSeconds {
            guard (try? await outbox.mayStillSend(event)) == true else { return nil }
        }
        let client = self.client
        let timed: (answer: PartnerAnswer, elapsed: Duration)
        do {
            timed = try await gate.withSlot(permit, account: event.account, resendOf: resendOf,
                                            giveUp: { [weak self] in self?.isDraining ?? true }) {
                let clock = ContinuousClock()
                let started = clock.now
                let answer = await client.createCandidate(payload: event.payload, idempotencyKey: event.id, bearerToken: token)
                return (answer, clock.now - started)
            }
        } catch {
            // Nothing was sent: shutdown while waiting for a place, or a pause, a credentials
            // back-off or an open circuit since the admission or, for a resend, since its first
            // request (the event is handed back rather than held, with a worker and a lease,
            // while it lasts).
            return nil
        }
        let answer = timed.answer
        let nanoseconds = Int64(timed.elapsed.components.seconds) * 1_000_000_000 + timed.elapsed.components.attoseconds / 1_000_000_000
        metrics.partnerLatency(account: event.account, nanoseconds: nanoseconds)
        let latencyMs = Int(nanoseconds / 1_000_000)
        let classification = OutcomeClassifier.classify(answer, now: now())
        switch answer {
        case .response(let status, _, _, _): metrics.partnerResponse(status: String(status), account: event.account)
        case .transportFailure(let failure): metrics.partnerResponse(status: failure.rawValue, account: event.account)
        }
        if classification == .refreshTokenAndResend { await provider.invalidate(token) }
        return Exchange(answer: answer, classification: classification, latencyMs: latencyMs, credentials: provider.credentials)
    }

    /// Records in a task of its own: shutdown may cancel the worker, and a cancelled GRDB write
    /// would leave the event in flight (an attempt lost) instead of recorded.
    func record(_ event: ClaimedEvent, _ outcome: RecordedOutcome, latencyMs: Int?, now: Date) async -> Written {
        await Task { await self.recordNow(event, outcome, latencyMs: latencyMs, now: now) }.value
    }

    /// What became of an outcome `recordNow` was given.
    enum Written {
        case recorded
        /// The lease had been taken back meanwhile: nothing changed (`delivery.stale_outcome`).
        case stale
        /// Every write failed (a full disk) until the lease's half or shutdown: the event stays
        /// in flight, and the rescuer sends it again.
        case notWritten
    }

    /// Retries a failed write (a full disk) once a second while the lease lasts, so that the
    /// outcome lands as soon as space is back; after that, or at shutdown, the lease stays and
    /// the rescuer returns the event to pending (it is sent again, and a 409 links it).
    private func recordNow(_ event: ClaimedEvent, _ outcome: RecordedOutcome, latencyMs: Int?, now: Date,
                           partnerOpenUntil: Date? = nil) async -> Written {
        // Recorded, found taken back, or given up: no longer this worker's to keep from the rescuer.
        defer { leasesHeld.withLock { if $0[event.id] == event.lease { $0[event.id] = nil } } }
        let deadline = event.leasedAt.addingTimeInterval(settings.value.leaseSeconds / 2)
        var logged = false
        while true {
            do {
                if try await outbox.complete(event, outcome: outcome, now: now, latencyMs: latencyMs, partnerOpenUntil: partnerOpenUntil) == false {
                    // What the partner answered, with its candidate_uid: the event's next request
                    // is counted, this one is not, and a candidate it created shows nowhere else.
                    logger.event(.warning, "delivery.stale_outcome", "outcome ignored: the lease was taken back meanwhile",
                                 fields(event, status: outcome.status, latencyMs: latencyMs, candidateUID: outcome.candidateUID,
                                        extra: ["outcome": outcome.name]))
                    return .stale
                }
                return .recorded
            } catch {
                if !logged {
                    logger.event(.error, "storage.failed", "could not record a delivery outcome; retrying while the lease lasts",
                                 fields(event, error: OutboxError.logCode(error)))
                    logged = true
                }
                guard !isDraining, self.now() < deadline else { return .notWritten }
                try? await TimerSleep.sleep(seconds: 1)
            }
        }
    }

    /// `delivery.interrupted`: the event went back to pending without using an attempt; or,
    /// when that could not be written (a full disk at shutdown), `delivery.outcome_unrecorded`.
    /// `until`: when it is due again, when it is held (a request cut off may still be at the partner).
    func logInterrupted(_ event: ClaimedEvent, _ message: String, written: Written, until: Date? = nil) {
        switch written {
        case .recorded:
            var fields = fields(event)
            if let until { fields.extra["until"] = Timestamp.string(until) }
            logger.event(.notice, "delivery.interrupted", message, fields)
            metrics.delivery(outcome: "interrupted", account: event.account)
        case .notWritten:
            logUnrecorded(event, status: nil, latencyMs: nil, candidateUID: nil, outcome: "interrupted")
        case .stale:
            break  // said by `delivery.stale_outcome`
        }
    }

    /// An outcome that could not be written: the event stays in flight until its lease is rescued.
    private func logUnrecorded(_ event: ClaimedEvent, status: Int?, latencyMs: Int?, candidateUID: String?, outcome: String) {
        // The candidate_uid (the partner's id, not personal data) lets an operator match the
        // candidate the resend's 409 will link.
        metrics.delivery(outcome: "unrecorded", account: event.account)
        logger.event(.error, "delivery.outcome_unrecorded",
                     "the outcome could not be written (storage failing); the event stays in flight "
                     + "and is sent again once its lease is rescued (a candidate created by this request is linked by the partner's 409)",
                     fields(event, status: status, latencyMs: latencyMs, candidateUID: candidateUID, extra: ["outcome": outcome]))
    }

    /// The partner's answer (a 429 is logged whatever became of the outcome), then the outcome:
    /// `delivery.succeeded`, `.linked`, `.retry_scheduled` or `.dead` and its count only once it
    /// is recorded. Found from outside: on a full disk an outcome that was never written was
    /// logged and counted as delivered, and its resend after the rescue was counted again.
    private func log(_ event: ClaimedEvent, decision: DeliveryDecision, exchange: Exchange, written: Written, erased: Bool = false) {
        let status = exchange.status
        let latency = exchange.latencyMs
        if status == 429 {
            metrics.count("candidate_relay_partner_rate_limited_total", [("account", event.account)])
            logger.event(.warning, "partner.rate_limited", "partner answered 429 too_many_requests",
                         fields(event, status: 429, extra: decision.pauseUntil.map { ["retry_after": Timestamp.string($0)] } ?? [:]))
        }
        guard written == .recorded else {
            if written == .notWritten {
                logUnrecorded(event, status: status, latencyMs: latency, candidateUID: decision.outcome.candidateUID,
                              outcome: decision.outcome.name)
            }
            return
        }
        switch decision.outcome {
        case .delivered(let uid, _, _, _):
            metrics.delivery(outcome: "delivered", account: event.account)
            logger.event(.info, "delivery.succeeded", "candidate created at the partner", fields(event, status: status, latencyMs: latency, candidateUID: uid))
        case .linked(let uid, _, _):
            metrics.delivery(outcome: "linked", account: event.account)
            logger.event(.info, "delivery.linked", "candidate already existed at the partner; linked", fields(event, status: status, latencyMs: latency, candidateUID: uid))
        case .retry(let at, _, let error):
            metrics.delivery(outcome: "retry", account: event.account)
            logger.event(.warning, "delivery.retry_scheduled", "delivery failed; retry scheduled",
                         fields(event, status: status, latencyMs: latency, error: error, extra: ["next_attempt_at": Timestamp.string(at)]))
        case .dead(_, let error):
            metrics.delivery(outcome: "dead", account: event.account)
            let code = erased ? "erased" : String(error.prefix { $0 != ":" })
            logger.event(.error, "delivery.dead", erased ? "delivery gave up; event is dead, and `forget` erased it while its request was out "
                         + "(the partner's answer is in its history)" : "delivery gave up; event is dead",
                         fields(event, status: status, latencyMs: latency, error: code))
        case .interrupted, .unsent:
            break
        }
    }

    func fields(_ event: ClaimedEvent, status: Int? = nil, latencyMs: Int? = nil, candidateUID: String? = nil,
                error: String? = nil, extra: [String: String] = [:]) -> LogFields {
        LogFields(account: event.account, eventID: event.id, positionUID: event.positionUID, partnerCandidateID: event.partnerCandidateID,
                  attempt: event.attempt, status: status, latencyMs: latencyMs, candidateUID: candidateUID, error: error, extra: extra)
    }
}

private extension RecordedOutcome {
    var status: Int? {
        switch self {
        case .delivered(_, let status, _, _), .linked(_, let status, _): status
        case .retry(_, let status, _), .dead(let status, _): status
        case .interrupted, .unsent: nil
        }
    }

    var candidateUID: String? {
        switch self {
        case .delivered(let uid, _, _, _), .linked(let uid, _, _): uid
        default: nil
        }
    }
}
