import Synchronization

/// A value that callers share: a computation in flight is joined, and a result less than
/// `reuse` old is the answer for the callers after it (only a result `keeps` accepts: a failed
/// readiness probe is never reused).
///
/// For what answers without credentials and costs the outbox work: `/readyz` (a fsync'd write
/// on the writer queue each time) and `/metrics` (a scan of the backlog each time, ~0.1 s of CPU
/// per 100,000 pending events). Both were found from outside: 512 connections asking for
/// `/readyz` cut ingest from 8,300 to 830 webhooks a second, and 16 asking for `/metrics` with
/// 100,000 events pending got 8 answers a second and halved ingest.
final class SharedRefresh<Value: Sendable>: Sendable {
    private struct State {
        var inFlight: Task<Value, Never>?
        /// The last result kept, when it was ready, and how long it stands.
        var recent: (at: ContinuousClock.Instant, stands: Duration, value: Value)?
    }

    private let state = Mutex(State())
    let reuse: Duration
    /// Whether a costly result stands longer (`standing`): for a read that costs CPU (the
    /// counts), not for a write whose time is mostly its wait for the writer queue (readiness,
    /// which must not answer for long after the disk went bad).
    let scalesWithCost: Bool
    let keeps: @Sendable (Value) -> Bool

    /// How long a costly result stands: `reuse`, or 20 times what it took if that is longer. A
    /// read of the counts that takes 0.25 s (1,000,000 events pending) then stands 5 s, so asking
    /// for it costs at most a twentieth of a core however often it is asked.
    static func standing(reuse: Duration, took: Duration) -> Duration {
        max(reuse, took * 20)
    }

    init(reuse: Duration = .seconds(1), scalesWithCost: Bool, keeping keeps: @escaping @Sendable (Value) -> Bool = { _ in true }) {
        self.reuse = reuse
        self.scalesWithCost = scalesWithCost
        self.keeps = keeps
    }

    /// A recent result, the one in flight, or `compute`'s.
    func value(_ compute: @escaping @Sendable () async -> Value) async -> Value {
        let task = state.withLock { state -> Task<Value, Never>? in
            if let recent = state.recent, recent.at.duration(to: .now) < recent.stands { return nil }
            if let running = state.inFlight { return running }
            let task = Task { [self] in
                let started = ContinuousClock.now
                let value = await compute()
                let took = started.duration(to: .now)
                self.state.withLock { state in
                    state.inFlight = nil
                    let stands = scalesWithCost ? Self.standing(reuse: reuse, took: took) : reuse
                    state.recent = keeps(value) ? (.now, stands, value) : nil
                }
                return value
            }
            state.inFlight = task
            return task
        }
        guard let task else {
            // Read again: since the look above, a newer result may have replaced it, or a result
            // not kept may have cleared it (then compute, or join the computation under way).
            if let recent = state.withLock({ $0.recent }) { return recent.value }
            return await value(compute)
        }
        return await task.value
    }
}
