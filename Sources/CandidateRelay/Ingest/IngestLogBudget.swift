import Foundation
import Synchronization

/// At most `perSecond` log lines a second (bursts of as many) for each kind of refused webhook,
/// and for replays; the next line written of a kind says how many of that kind were left out.
///
/// Found from outside: one connection sending garbage without credentials wrote ~8,800
/// `ingest.rejected` lines a second. journald keeps at most 10,000 lines per 30 s of a unit
/// (`RateLimitBurst=`, scaled by free disk) and then drops all of them, so a second of garbage
/// hid the daemon's own `delivery.dead`, `storage.failed` and `relay.stopping` lines for the
/// rest of the interval. A kind is an error code (or `duplicate`), so a flood of 401s leaves
/// room for the 422s of a sender that is actually trying. Every request is still counted in
/// `candidate_relay_ingest_requests_total`; new events (202) are never left out: each is a
/// stored event, and only an authenticated sender makes them.
final class IngestLogBudget: Sendable {
    private struct Bucket {
        var tokens: Double
        var at: Double
        var suppressed = 0
    }

    private let buckets = Mutex<[String: Bucket]>([:])
    let perSecond: Double

    init(perSecond: Double = 10) {
        self.perSecond = perSecond
    }

    /// Nil: leave this line out. Otherwise: write it, with the number of lines of `kind` left
    /// out since the last one written. `kind` comes from a fixed set (error codes), never from
    /// the request, so the buckets stay few.
    func admit(_ kind: String, now: Date) -> Int? {
        let time = now.timeIntervalSince1970
        return buckets.withLock { buckets in
            var bucket = buckets[kind] ?? Bucket(tokens: perSecond, at: time)
            // A clock that went back refills nothing (and takes nothing away).
            bucket.tokens = min(perSecond, bucket.tokens + max(0, time - bucket.at) * perSecond)
            bucket.at = time
            defer { buckets[kind] = bucket }
            guard bucket.tokens >= 1 else {
                bucket.suppressed += 1
                return nil
            }
            bucket.tokens -= 1
            defer { bucket.suppressed = 0 }
            return bucket.suppressed
        }
    }
}
