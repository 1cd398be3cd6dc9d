import Foundation
import Synchronization

/// Group commit for ingest: submissions that arrive while a commit runs wait for the next one,
/// and each commit (one fsync) holds all of them. A caller is resumed only after the commit
/// that holds its event returned, so a 202 still means "on disk".
///
/// One drain task at a time takes everything queued (up to `maxBatch`), runs it as one write
/// transaction through `commit`, and hands every waiter its own result. When the batch's
/// transaction fails, each item is retried alone, so only the items that fail alone fail.
///
/// A waiter is a task (`submit(_:commit:) async`) or a callback (`submit(_:commit:completion:)`,
/// for ingest's channel handler on an event loop, which must not wait): both share the queue.
final class GroupCommit<Item: Sendable, Result: Sendable>: Sendable {
    typealias Commit = @Sendable ([Item]) async throws -> [Swift.Result<Result, any Error>]
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
    /// `commit` writes a batch (every caller passes the same one; the caller that starts a
    /// drain lends it to that drain).
    func submit(_ item: Item, commit: @escaping Commit) async throws -> Result {
        try await withCheckedThrowingContinuation { continuation in
            submit(item, commit: commit) { continuation.resume(with: $0) }
        }
    }

    /// Queues `item`; `completion` is called once, from the drain, after the transaction holding
    /// it committed (or with the error that kept it out).
    func submit(_ item: Item, commit: @escaping Commit, completion: @escaping Completion) {
        let startDrain = state.withLock { state -> Bool in
            state.queue.append(Waiter(item: item, completion: completion))
            guard !state.draining else { return false }
            state.draining = true
            return true
        }
        if startDrain {
            // Unstructured on purpose: the drain outlives the request that started it (a
            // client that disconnects must not cancel the commit of the others).
            Task { await self.drain(commit) }
        }
    }

    private func drain(_ commit: Commit) async {
        while true {
            let batch = state.withLock { state -> [Waiter] in
                let batch = Array(state.queue.prefix(maxBatch))
                state.queue.removeFirst(batch.count)
                if batch.isEmpty { state.draining = false }
                return batch
            }
            if batch.isEmpty { return }
            do {
                let results = try await commit(batch.map(\.item))
                for (waiter, result) in zip(batch, results) { waiter.completion(result) }
            } catch {
                // Nothing of the batch was committed. Each item alone, so that one item's
                // failure never fails the others (a full disk fails them all again).
                for waiter in batch {
                    do {
                        let result = batch.count == 1 ? nil : try await commit([waiter.item]).first
                        waiter.completion(result ?? .failure(error))
                    } catch {
                        waiter.completion(.failure(error))
                    }
                }
            }
        }
    }
}
