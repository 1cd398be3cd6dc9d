import Foundation

/// `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 section 10.2.3).
public enum RetryAfter {
    public static func parse(_ value: String, now: Date) -> Date? {
        let trimmed = value.trimmingCharacters(in: .whitespaces)
        // Delay-seconds are digits (RFC 9110; a fraction is tolerated): Swift's Double also
        // reads "0x10" (16 s, found from outside), "1e3" and "+5".
        let digits = trimmed.utf8.split(separator: UInt8(ascii: "."), maxSplits: 1, omittingEmptySubsequences: false)
        if !trimmed.isEmpty, digits.allSatisfy({ !$0.isEmpty && $0.allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") } }),
           let seconds = Double(trimmed), seconds >= 0 {
            // Digits past what a Double holds (309 and more) are the longest wait, not none:
            // found from outside, they were ignored and the event retried after the back-off.
            // The caller caps every wait at `backoff.max_seconds`.
            return seconds.isFinite ? now.addingTimeInterval(seconds) : .distantFuture
        }
        return httpDate(trimmed).map { max($0, now) }
    }

    /// An HTTP-date in any of RFC 9110's three forms.
    static func httpDate(_ value: String) -> Date? {
        let trimmed = value.trimmingCharacters(in: .whitespaces)
        for format in ["EEE, dd MMM yyyy HH:mm:ss zzz", "EEEE, dd-MMM-yy HH:mm:ss zzz", "EEE MMM d HH:mm:ss yyyy"] {
            let formatter = DateFormatter()
            formatter.locale = Locale(identifier: "en_US_POSIX")
            formatter.timeZone = TimeZone(identifier: "GMT")
            formatter.dateFormat = format
            if let date = formatter.date(from: trimmed) { return date }
        }
        return nil
    }

    /// `value` as delay-seconds when it is an HTTP-date and the answer's `Date` (the partner's
    /// clock when it answered) is known: the wait the partner meant, whatever the two clocks
    /// say (found from outside: a relay five minutes slow paused 320 s for a 20 s ask, and one
    /// two minutes fast did not pause at all). Otherwise as it is.
    static func relative(_ value: String, partnerNow: Date?) -> String {
        guard let partnerNow, value.contains(where: { $0.isLetter }), let at = httpDate(value) else { return value }
        return String(Int(max(0, at.timeIntervalSince(partnerNow)).rounded(.up)))
    }

    /// The field as sent more than once (a proxy adding its own, say): the value asking for the
    /// longest wait, never the first (found from outside: `7` then `1` waited 7 s, `1` then `7`
    /// only 1 s). Values that do not parse lose to any that does. Only the first
    /// `maxValuesRead` are read, each once: a date costs three formatters, and an answer may
    /// repeat the field thousands of times (review).
    ///
    /// A proxy may also join the copies into one field with commas (RFC 9110 section 5.3), as in
    /// `Retry-After: 3, 3` (found from outside: ignored, the event retried after its back-off).
    /// Such a field is read as its elements; an HTTP-date's own comma, after its day name,
    /// stays inside its element.
    ///
    /// `date`: the answer's `Date` header. An HTTP-date is then read against it, not against the
    /// relay's clock, and returned as delay-seconds (`relative`).
    public static func longest(_ values: [String], now: Date, date: String? = nil) -> String? {
        // Read only when a value may be a date (letters): an HTTP-date takes three formatters to
        // parse, and every answer carries a `Date` (parsed for each one, delivery lost a quarter
        // of its rate).
        guard !values.isEmpty else { return nil }
        let partnerNow = values.contains(where: { $0.contains(where: \.isLetter) }) ? date.flatMap(httpDate) : nil
        let base = partnerNow ?? now
        guard values.count > 1 || values.first?.contains(",") == true else {
            return values.first.map { relative($0, partnerNow: partnerNow) }
        }
        let elements = values.prefix(maxValuesRead).flatMap(Self.elements).prefix(maxValuesRead)
        let parsed = elements.compactMap { value in parse(value, now: base).map { (value, $0) } }
        return (parsed.max { $0.1 < $1.1 }?.0 ?? values.first).map { relative($0, partnerNow: partnerNow) }
    }

    /// A field's comma-separated elements, a day name joined back to the date after it. At most
    /// `maxValuesRead` are read (two parts each, for a date): the rest of the field is one last
    /// part that does not parse, so a field of many thousand commas is not split and trimmed
    /// whole only for all but the first few to be dropped (review).
    static func elements(_ value: String) -> [String] {
        guard value.contains(",") else { return [value] }
        let parts = value.split(separator: ",", maxSplits: 2 * maxValuesRead, omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }
        var elements: [String] = []
        var index = 0
        while index < parts.count {
            if index + 1 < parts.count, dayNames.contains(parts[index].lowercased()) {
                elements.append(parts[index] + ", " + parts[index + 1])
                index += 2
            } else {
                if !parts[index].isEmpty { elements.append(parts[index]) }
                index += 1
            }
        }
        return elements
    }

    private static let dayNames: Set<String> = [
        "mon", "tue", "wed", "thu", "fri", "sat", "sun",
        "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
    ]

    static let maxValuesRead = 8
}

/// Pure retry arithmetic: exponential backoff with jitter, capped, and the attempt/age budget.
public struct RetryPolicy: Sendable, Equatable {
    public var backoff: BackoffConfiguration
    public var maxAttempts: Int
    public var maxAgeSeconds: Double

    public init(backoff: BackoffConfiguration, maxAttempts: Int, maxAgeSeconds: Double) {
        self.backoff = backoff
        self.maxAttempts = maxAttempts
        self.maxAgeSeconds = maxAgeSeconds
    }

    /// The un-jittered delay after failed attempt number `attempt` (1-based).
    public func baseDelay(attempt: Int) -> Double {
        backoff.baseDelay(attempt: attempt)
    }

    /// "Equal jitter": half the delay fixed, half random, so retries of many events spread out
    /// while each still waits at least half its backoff. `unit` is a random number in [0, 1).
    public func delay(attempt: Int, unit: Double = Double.random(in: 0..<1)) -> Double {
        let base = baseDelay(attempt: attempt)
        return base / 2 + base / 2 * unit
    }

    /// When to try again, or `nil` when the budget is spent (the event goes dead): the later of
    /// the backoff and the partner's `Retry-After`, never beyond `max_seconds` from now. The
    /// backoff is a floor, so a `Retry-After: 0` (or a date in the past) cannot burn the attempt
    /// budget in a burst of immediate retries.
    public func nextAttempt(after attempt: Int, budgetStartedAt: Date, now: Date, retryAfter: Date?, unit: Double = Double.random(in: 0..<1)) -> Date? {
        guard attempt < maxAttempts else { return nil }
        let backoffAt = now.addingTimeInterval(delay(attempt: attempt, unit: unit))
        let next = min(max(backoffAt, retryAfter ?? backoffAt), now.addingTimeInterval(backoff.maxSeconds))
        guard next.timeIntervalSince(budgetStartedAt) < maxAgeSeconds else { return nil }
        return next
    }
}

extension BackoffConfiguration {
    /// `initial * multiplier^(n-1)`, capped at `max`, for the `n`th failure in a row (1-based):
    /// an event's retries and an account's credentials back-off.
    public func baseDelay(attempt: Int) -> Double {
        let exponent = Double(max(0, attempt - 1))
        let raw = initialSeconds * pow(multiplier, exponent)
        return min(maxSeconds, raw.isFinite ? raw : maxSeconds)
    }
}
