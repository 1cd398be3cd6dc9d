import Foundation

/// Everything one partner answer decides, in one pure function: the outcome to record (with the
/// retry budget applied), what it says of the partner's health, and the pause it orders.
/// The worker pool only applies it.
public struct DeliveryDecision: Sendable, Equatable {
    public var outcome: RecordedOutcome
    public var health: PartnerHealth
    /// Sending waits until then (a `Retry-After`, capped at `backoff.max_seconds`): the
    /// account's sending after a 429, every account's otherwise.
    public var pauseUntil: Date?

    /// - Parameters:
    ///   - classification: the answer's meaning (`OutcomeClassifier`).
    ///   - status: the HTTP status, nil for a transport failure.
    ///   - body: the answer's body (the full Candidate of a 2xx, an error's message).
    ///   - attempt: this attempt's number (1-based), `budgetStartedAt`: start of the age budget.
    ///   - unit: the jitter's random number in [0, 1).
    public static func decide(
        _ classification: Classification, status: Int?, body: Data, attempt: Int, budgetStartedAt: Date,
        policy: RetryPolicy, now: Date, unit: Double = Double.random(in: 0..<1)
    ) -> DeliveryDecision {
        switch classification {
        case .delivered(let uid, let summary):
            return DeliveryDecision(outcome: .delivered(candidateUID: uid, status: status ?? 200, summary: summary, fullResponse: body),
                                    health: .up)
        case .linked(let uid, let error):
            return DeliveryDecision(outcome: .linked(candidateUID: uid, status: status ?? 409, error: error), health: .up)
        case .dead(let error):
            return DeliveryDecision(outcome: .dead(status: status, error: describe(error, body: body)), health: .up)
        case .refreshTokenAndResend:
            // Not reached from the worker pool (a resend that could not go hands the event back
            // unsent); kept total: the partner answered 401 for a token it should have accepted.
            return retry(error: "unauthorized", retryAfter: nil, status: status, attempt: attempt,
                         budgetStartedAt: budgetStartedAt, policy: policy, now: now, unit: unit)
        case .retry(let error, let retryAfter):
            return retry(error: error, retryAfter: retryAfter, status: status, attempt: attempt,
                         budgetStartedAt: budgetStartedAt, policy: policy, now: now, unit: unit)
        }
    }

    private static func retry(
        error: String, retryAfter: Date?, status: Int?, attempt: Int, budgetStartedAt: Date,
        policy: RetryPolicy, now: Date, unit: Double
    ) -> DeliveryDecision {
        // A Retry-After beyond the longest backoff (a proxy's or a partner's bug) is capped, so
        // that it cannot pause every worker for days; one already past pauses nobody.
        let pause = retryAfter.map { min($0, now.addingTimeInterval(policy.backoff.maxSeconds)) }.flatMap { $0 > now ? $0 : nil }
        // 429 and 401 are the partner answering about this account (its pace, its credentials):
        // not an outage, so they do not count towards opening the circuit for every account
        // (CONTRACT section 8). (A token that could not be had never comes here: nothing was
        // sent, and the worker hands the event back and holds the account.)
        let health: PartnerHealth = status == 429 || status == 401 ? .untested : .down
        guard let next = policy.nextAttempt(after: attempt, budgetStartedAt: budgetStartedAt, now: now, retryAfter: pause, unit: unit) else {
            let reason = attempt >= policy.maxAttempts ? "attempts_exhausted" : "max_age_exceeded"
            return DeliveryDecision(outcome: .dead(status: status, error: "\(reason): \(error)"), health: health, pauseUntil: pause)
        }
        return DeliveryDecision(outcome: .retry(at: next, status: status, error: error), health: health, pauseUntil: pause)
    }

    /// `code: message` from the partner, bounded; the message is kept in the outbox only.
    static func describe(_ code: String, body: Data) -> String {
        guard let message = PartnerErrorBody(body).message, !message.isEmpty else { return code }
        return String("\(code): \(message)".prefix(500))
    }
}
