import Logging

/// The only context a log line may carry (CONTRACT section 6). Typed, so a name, an email or a
/// payload cannot be attached to a log line by accident: there is no field for them.
public struct LogFields: Sendable {
    /// The account (CONTRACT section 8) an event or a signal belongs to.
    public var account: String?
    public var eventID: String?
    public var positionUID: String?
    public var partnerCandidateID: String?
    public var attempt: Int?
    public var status: Int?
    public var latencyMs: Int?
    public var candidateUID: String?
    /// A partner or relay error code (`position_not_found`, `timeout`...), never a body.
    public var error: String?
    /// Free-form operational detail chosen by the relay (counts, durations, reasons).
    public var extra: [String: String] = [:]
    /// Numeric operational values (counts, ages), logged as JSON numbers.
    public var numbers: [String: Double] = [:]

    public init(account: String? = nil, eventID: String? = nil, positionUID: String? = nil, partnerCandidateID: String? = nil,
                attempt: Int? = nil, status: Int? = nil, latencyMs: Int? = nil, candidateUID: String? = nil,
                error: String? = nil, extra: [String: String] = [:], numbers: [String: Double] = [:]) {
        self.numbers = numbers
        self.account = account
        self.eventID = eventID
        self.positionUID = positionUID
        self.partnerCandidateID = partnerCandidateID
        self.attempt = attempt
        self.status = status
        self.latencyMs = latencyMs
        self.candidateUID = candidateUID
        self.error = error
        self.extra = extra
    }

    var metadata: Logger.Metadata {
        var m: Logger.Metadata = [:]
        if let account { m["account"] = .string(account) }
        if let eventID { m["event_id"] = .string(eventID) }
        if let positionUID { m["position_uid"] = .string(positionUID) }
        if let partnerCandidateID { m["partner_candidate_id"] = .string(partnerCandidateID) }
        if let attempt { m["attempt"] = .stringConvertible(attempt) }
        if let status { m["status"] = .stringConvertible(status) }
        if let latencyMs { m["latency_ms"] = .stringConvertible(latencyMs) }
        if let candidateUID { m["candidate_uid"] = .string(candidateUID) }
        if let error { m["error"] = .string(error) }
        for (key, value) in extra { m[key] = .string(value) }
        for (key, value) in numbers {
            if key.hasSuffix("_seconds") {
                m[key] = .stringConvertible(LogSeconds(value: value))
            } else {
                m[key] = value.rounded() == value && abs(value) < 1e15 ? .stringConvertible(Int(value)) : .stringConvertible(value)
            }
        }
        return m
    }
}

/// A duration in seconds as a log field: always written with a fraction (`0.0`, `2.9`). Found
/// from outside: `oldest_pending_age_seconds` was `0` in one heartbeat and `2.9` in the next, and
/// a log store that types a field by its first value (Elasticsearch's dynamic mapping) would
/// have kept it a whole number and cut every later fraction.
struct LogSeconds: CustomStringConvertible, Sendable {
    var value: Double
    var description: String {
        guard value.isFinite else { return "0.0" }
        return value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) + ".0" : String(value)
    }
}

extension Logger {
    /// Logs one catalogued event (`docs/operations.md`): `event` is a stable name such as
    /// `delivery.succeeded`, `message` a short human sentence without personal data.
    /// The fields are built only when the line is written: below `logging.level` (the
    /// benchmark's `warning` drops every per-event line) building them was a dictionary per event.
    public func event(_ level: Logger.Level, _ event: String, _ message: String, _ fields: @autoclosure () -> LogFields = LogFields()) {
        guard logLevel <= level else { return }
        var metadata = fields().metadata
        metadata["event"] = .string(event)
        log(level: level, "\(message)", metadata: metadata)
    }
}
