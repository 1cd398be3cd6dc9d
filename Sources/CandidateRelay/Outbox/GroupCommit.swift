import Foundation
import Synchronization

/// Group commit: submissions that arrive while a commit runs wait for the next one, and each
/// commit (one fsync) holds all of them. A caller gets its result only after the commit that
/// holds its item returned, so a 202 still means "on disk".
///
/// One drain at a time takes everything queued (up to `maxBatch`), runs it as one write
/// transaction through `run`, and hands every waiter its own result. When the batch's
/// transaction fails, each item is retried alone, so only the items that fail alone fail.
///
/// The drain is not a task: `run` is called again from the completion of the commit before
/// (the outbox's `run` is a job on SQLite's writer queue, whose completion runs on that queue),
/// so a busy queue goes from batch to batch without waking another thread in between.
///
/// A waiter is a task (`submit(_:run:) async`) or a callback (`submit(_:run:completion:)`,
/// for ingest's channel handler on an event loop, which must not wait): both share the queue.
final class GroupCommit<Item: Sendable, Result: Sendable>: Sendable {
    /// The results of one batch, one per item in order, or the error that failed its transaction.
    typealias BatchResult = Swift.Result<[Swift.Result<Result, any Error>], any Error>
    /// Commits a batch and calls its second argument once, when the transaction is over.
    typealias Run = @Sendable ([Item], @escaping @Sendable (BatchResult) -> Void) -> Void
    typealias Completion = @Sendable (Swift.Result<Result, any Error>) -> Void

    private struct Waiter {
        let item: Item
        let completion: Completion
    }

    private struct State {
        var queue: [Waiter] = []
        var draining = false
    }

    private let state = Mutex(State())
    private let maxBatch: Int

    init(maxBatch: Int = 256) {
        self.maxBatch = maxBatch
    }

    /// Queues `item` and returns its result once the transaction holding it committed.
    /// `run` writes a batch (every caller passes the same one; the caller that starts a drain
    /// lends it to that drain).
    func submit(_ item: Item, run: @escaping Run) async throws -> Result {
        try await withCheckedThrowingContinuation { continuation in
            submit(item, run: run) { continuation.resume(with: $0) }
        }
    }

    /// Queues `item`; `completion` is called once, from the drain, after the transaction holding
    /// it committed (or with the error that kept it out).
    func submit(_ item: Item, run: @escaping Run, completion: @escaping Completion) {
        let startDrain = state.withLock { state -> Bool in
            state.queue.append(Waiter(item: item, completion: completion))
            guard !state.draining else { return false }
            state.draining = true
            return true
        }
        // The drain outlives the request that started it: a client that disconnects does not
        // stop the commit of the others.
        if startDrain { drainNext(run) }
    }

    /// Commits the next batch, or ends the drain when nothing is queued.
    private func drainNext(_ run: @escaping Run) {
        let batch = state.withLock { state -> [Waiter] in
            let batch = Array(state.queue.prefix(maxBatch))
            state.queue.removeFirst(batch.count)
            if batch.isEmpty { state.draining = false }
            return batch
        }
        if batch.isEmpty { return }
        run(batch.map(\.item)) { outcome in
            switch outcome {
            case .success(let results):
                for (index, waiter) in batch.enumerated() {
                    waiter.completion(index < results.count ? results[index] : .failure(OutboxError.storage("a commit returned no result")))
                }
                self.drainNext(run)
            case .failure(let error) where batch.count == 1:
                batch[0].completion(.failure(error))
                self.drainNext(run)
            case .failure:
                // Nothing of the batch was committed. Each item alone, so that one item's
                // failure never fails the others (a full disk fails them all again).
                self.retryAlone(batch[...], run)
            }
        }
    }

    /// Commits each waiter's item in a transaction of its own, one after the other, then goes on
    /// with the queue.
    private func retryAlone(_ waiters: ArraySlice<Waiter>, _ run: @escaping Run) {
        guard let waiter = waiters.first else {
            drainNext(run)
            return
        }
        run([waiter.item]) { outcome in
            switch outcome {
            case .success(let results):
                waiter.completion(results.first ?? .failure(OutboxError.storage("a commit returned no result")))
            case .failure(let error):
                waiter.completion(.failure(error))
            }
            self.retryAlone(waiters.dropFirst(), run)
        }
    }
}
