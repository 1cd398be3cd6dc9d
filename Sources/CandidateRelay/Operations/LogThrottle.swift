import Foundation
import Synchronization

/// At most one log line per interval for a failure that repeats with every request (a full
/// disk refuses every webhook: one `storage.failed` line each flooded the journal); the next
/// line written says how many were left out.
final class LogThrottle: Sendable {
    private let state = Mutex<(last: Double, suppressed: Int)>((-Double.infinity, 0))
    private let seconds: Double

    init(seconds: Double) {
        self.seconds = seconds
    }

    /// Nil: leave this line out. Otherwise: write it, with the number left out since the last one.
    /// A clock that went back since the last line written starts a new interval (found from
    /// outside: after a step back of ten minutes, a full disk's 503s logged nothing for ten
    /// minutes).
    func admit(now: Date) -> Int? {
        let time = now.timeIntervalSince1970
        return state.withLock { state in
            if time - state.last < seconds, time >= state.last {
                state.suppressed += 1
                return nil
            }
            defer { state = (time, 0) }
            return state.suppressed
        }
    }
}
