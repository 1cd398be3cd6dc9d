import Foundation

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-30T01:02:03.456Z`.
public enum Timestamp {
    public static func string(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true, timeZone: .gmt))
    }
}

extension EventRecord {
    /// The contract's record JSON object (absent values are `null`). Over HTTP
    /// (`includeMessages: false`) `last_error` is the code only: the partner's free-text message
    /// may repeat a submitted value, and the read endpoints show no personal data.
    public func jsonObject(includeMessages: Bool = true) -> [String: Any] {
        let lastError = includeMessages ? self.lastError : self.lastError.map { String($0.prefix { $0 != ":" }) }
        var partner: Any = NSNull()
        if let text = partnerResponse, let data = text.data(using: .utf8),
           let object = try? JSONSerialization.jsonObject(with: data) {
            partner = object
        }
        return [
            "id": id,
            "state": state.rawValue,
            "attempts": attempts,
            "position_uid": positionUID,
            "partner_candidate_id": partnerCandidateID,
            "candidate_uid": candidateUID ?? NSNull(),
            "received_at": Timestamp.string(receivedAt),
            "updated_at": Timestamp.string(updatedAt),
            "next_attempt_at": nextAttemptAt.map(Timestamp.string) ?? NSNull(),
            "last_status": lastStatus ?? NSNull(),
            "last_error": lastError ?? NSNull(),
            "partner_response": partner,
        ]
    }
}

extension AttemptRecord {
    public func jsonObject() -> [String: Any] {
        [
            "attempt": attempt,
            "at": Timestamp.string(at),
            "outcome": outcome,
            "status": status ?? NSNull(),
            "error": error ?? NSNull(),
            "latency_ms": latencyMs ?? NSNull(),
        ]
    }
}

extension OutboxStatus {
    public func jsonObject() -> [String: Any] {
        var counts: [String: Int] = [:]
        for state in EventState.allCases { counts[state.rawValue] = self.counts[state] ?? 0 }
        return [
            "counts": counts,
            "oldest_pending_age_seconds": oldestPendingAgeSeconds ?? NSNull(),
            "last_delivery_at": lastDeliveryAt.map(Timestamp.string) ?? NSNull(),
        ]
    }
}

/// Serialises contract JSON with stable key order.
public enum ContractJSON {
    public static func data(_ object: Any) -> Data {
        (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
    }
    public static func string(_ object: Any) -> String {
        String(decoding: data(object), as: UTF8.self)
    }
}
