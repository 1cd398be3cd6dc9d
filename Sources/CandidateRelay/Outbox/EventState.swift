import Foundation

/// The closed set of event states (CONTRACT section 5), mirrored by the schema's CHECK constraint.
public enum EventState: String, Sendable, Codable, CaseIterable {
    case pending
    case inFlight = "in_flight"
    case delivered
    case linked
    case dead

    /// States after which nothing more is sent.
    public var isTerminal: Bool { self == .delivered || self == .linked || self == .dead }
}

/// Milliseconds since the Unix epoch: how the outbox stores time (exact, sortable, cheap).
public typealias Millis = Int64

extension Date {
    var millis: Millis { Millis((timeIntervalSince1970 * 1000).rounded()) }
    init(millis: Millis) { self.init(timeIntervalSince1970: Double(millis) / 1000) }
}

/// Event identifiers: `evt_` + 12 hex digits of milliseconds + 16 random hex digits, so ids sort
/// by arrival and never collide across restarts.
public enum EventID {
    public static func generate(now: Date = Date()) -> String {
        let time = String(UInt64(max(0, now.millis)), radix: 16)
        let padded = String(repeating: "0", count: max(0, 12 - time.count)) + time
        let random = String(UInt64.random(in: 0...UInt64.max), radix: 16)
        return "evt_" + padded + String(repeating: "0", count: 16 - random.count) + random
    }
}
