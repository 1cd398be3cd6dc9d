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
        let lastError = includeMessages ? self.lastError : self.lastError.map(PartnerErrorBody.storedCode)
        var partner: Any = NSNull()
        if let text = partnerResponse, let data = text.data(using: .utf8),
           let object = try? JSONSerialization.jsonObject(with: data) {
            partner = object
        }
        return [
            "id": id,
            "account": account,
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
    /// `status --json`: the totals, and `accounts` with each account's counts (all five states)
    /// and oldest pending age: a number always (CONTRACT section 5 shows one), 0 when nothing
    /// is pending or in flight, as in the heartbeat and the metric (found from outside: `null`
    /// then, which a numeric comparison in a script trips over).
    public func jsonObject() -> [String: Any] {
        [
            "counts": Self.countsObject(counts),
            "oldest_pending_age_seconds": oldestPendingAgeSeconds ?? 0,
            "last_delivery_at": lastDeliveryAt.map(Timestamp.string) ?? NSNull(),
            "accounts": accounts.mapValues { account -> [String: Any] in
                ["counts": Self.countsObject(account.counts),
                 "oldest_pending_age_seconds": account.oldestPendingAgeSeconds ?? 0]
            },
        ]
    }

    static func countsObject(_ counts: [EventState: Int]) -> [String: Int] {
        Dictionary(uniqueKeysWithValues: EventState.allCases.map { ($0.rawValue, counts[$0] ?? 0) })
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

    /// A JSON string literal written directly (hot paths: the 202 answer, every log line):
    /// `"` and `\\` escaped, control characters (and U+2028/9) as escapes, the rest as is.
    public static func quoted(_ text: String) -> String {
        var result = ""
        result.reserveCapacity(text.utf8.count + 2)
        appendQuoted(text, to: &result)
        return result
    }

    /// `quoted`, appended to `result`. A string with nothing to escape (nearly all) is copied
    /// whole after one pass over its bytes.
    /// Characters no output of the daemon carries raw (JSON, logfmt, the admin CLI's text):
    /// the controls (C0, DEL, C1: U+009B is an 8-bit CSI, and a sender's value put terminal
    /// escape sequences on an operator's `tail -f`; U+0085 split lines for some readers), the
    /// line and paragraph separators, the bidi controls and marks, which reorder what a terminal
    /// shows, and the invisible format characters and fillers (soft hyphen, zero-width space and
    /// joiners, word joiner and invisible operators, BOM, interlinear annotation marks, Hangul
    /// fillers, tags), which hide what is there (found from outside: U+200E/F, U+061C and U+FEFF
    /// in an id came out raw in `events list`, the journal and `systemctl status`).
    static func mustEscape(_ value: UInt32) -> Bool {
        switch value {
        case 0..<0x20, 0x7F...0x9F, 0xAD, 0x061C, 0x115F, 0x1160, 0x180E, 0x200B...0x200F, 0x2028...0x202E, 0x2060...0x2064,
             0x2066...0x2069, 0x3164, 0xFEFF, 0xFFA0, 0xFFF9...0xFFFB, 0xE0000...0xE007F: true
        default: false
        }
    }

    public static func appendQuoted(_ text: String, to result: inout String) {
        result.append("\"")
        // The lead bytes of what `mustEscape` names: 0xC2 (C1, U+00AD), 0xD8 (U+061C), 0xE1
        // (U+115F, U+1160, U+180E), 0xE2 (U+200B...U+2069), 0xE3 (U+3164), 0xEF (U+FEFF, U+FFA0,
        // U+FFF9...B), 0xF3 (tags). Other characters behind them the slow path keeps as they are.
        let plain = !text.utf8.contains {
            $0 < 0x20 || $0 == 0x22 || $0 == 0x5C || $0 == 0x7F || $0 == 0xC2 || $0 == 0xD8 || $0 == 0xE1 || $0 == 0xE2
                || $0 == 0xE3 || $0 == 0xEF || $0 == 0xF3
        }
        if plain {
            result.append(text)
        } else {
            for scalar in text.unicodeScalars {
                switch scalar.value {
                case 0x22: result += "\\\""
                case 0x5C: result += "\\\\"
                case 0x0A: result += "\\n"
                case 0x0D: result += "\\r"
                case 0x09: result += "\\t"
                case let value where ContractJSON.mustEscape(value):
                    // JSON's `\u` escape takes four hex digits: past U+FFFF (the tags), a UTF-16 pair.
                    for unit in String(scalar).utf16 {
                        let hex = String(unit, radix: 16)
                        result += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                    }
                default: result.unicodeScalars.append(scalar)
                }
            }
        }
        result.append("\"")
    }
}
