import Foundation

/// Stops sending after `failures` consecutive retryable failures, for `cooldown` seconds, then
/// lets exactly one probe through: success closes it, failure opens it again. Pure.
public struct CircuitBreaker: Sendable, Equatable {
    public enum State: Sendable, Equatable {
        case closed(consecutiveFailures: Int)
        case open(until: Date)
        case halfOpen(probeInFlight: Bool)
    }

    public enum Admission: Sendable, Equatable {
        case send(probe: Bool)
        case wait(until: Date?)
    }

    public var failures: Int
    public var cooldown: Double
    public private(set) var state: State = .closed(consecutiveFailures: 0)

    public init(failures: Int, cooldown: Double) {
        self.failures = failures
        self.cooldown = cooldown
    }

    /// Open until `until` (a restart keeping the cooldown the last run started).
    public mutating func restoreOpen(until: Date) {
        state = .open(until: until)
    }

    /// The wall clock stepped by `seconds`: an open circuit keeps the cooldown it had left.
    public mutating func shift(by seconds: Double) {
        if case .open(let until) = state { state = .open(until: until.addingTimeInterval(seconds)) }
    }

    public var isOpen: Bool {
        if case .closed = state { return false }
        return true
    }

    /// May a request go now? Admits the single probe when the cooldown is over.
    public mutating func admit(now: Date) -> Admission {
        switch state {
        case .closed:
            return .send(probe: false)
        case .open(let until):
            guard now >= until else { return .wait(until: until) }
            state = .halfOpen(probeInFlight: true)
            return .send(probe: true)
        case .halfOpen(let probeInFlight):
            if probeInFlight { return .wait(until: nil) }
            state = .halfOpen(probeInFlight: true)
            return .send(probe: true)
        }
    }

    /// A probe admission given back unused (no event to send).
    public mutating func cancelProbe() {
        if case .halfOpen = state { state = .halfOpen(probeInFlight: false) }
    }

    /// The partner answered in a way that shows it works (2xx, 409, 4xx). Returns true if this closed the circuit.
    public mutating func recordSuccess() -> Bool {
        let wasOpen = isOpen
        state = .closed(consecutiveFailures: 0)
        return wasOpen
    }

    /// A retryable failure. Returns true if this opened the circuit.
    public mutating func recordFailure(now: Date) -> Bool {
        switch state {
        case .closed(let count):
            if count + 1 >= failures {
                state = .open(until: now.addingTimeInterval(cooldown))
                return true
            }
            state = .closed(consecutiveFailures: count + 1)
            return false
        case .halfOpen:
            state = .open(until: now.addingTimeInterval(cooldown))
            return true
        case .open:
            // A request admitted before the circuit opened: the cooldown already runs.
            return false
        }
    }
}
