import Foundation
import HTTPTypes

/// The request headers ingest reads, found in one pass over a webhook's head.
///
/// Each value is what `HTTPFields`' subscript gives (a header sent more than once: its values
/// joined with ", "), but `webhook-signature`, whose own list is space-separated: its fields are
/// joined with a space (found from outside: with ", " a valid signature in the first of two
/// fields became `v1,<signature>,` and failed, in the second it passed). Looked up one by one,
/// the webhook's ~17 lookups were a scan of every field and a joined string each (perf: ~3.5 %
/// of ingest's CPU).
struct WebhookHeaders: Sendable {
    var contentLength: String?
    var contentType: String?
    var contentEncoding: String?
    var expect: String?
    var connection: String?
    var auth = IngestAuthenticator.Headers()
    var idempotencyKey: String?
    /// How many `webhook-id` and `Idempotency-Key` fields came (a repeated key is refused).
    var webhookIDFields = 0
    var idempotencyKeyFields = 0

    init(_ fields: HTTPFields) {
        for field in fields {
            switch field.name {
            case .contentLength: Self.add(field.value, to: &contentLength)
            case .contentType: Self.add(field.value, to: &contentType)
            case IngestHandler.webhookID:
                Self.add(field.value, to: &auth.webhookID)
                webhookIDFields += 1
            case IngestHandler.webhookTimestamp: Self.add(field.value, to: &auth.webhookTimestamp)
            case IngestHandler.webhookSignature: Self.add(field.value, to: &auth.webhookSignature, separator: " ")
            case .authorization: Self.add(field.value, to: &auth.authorization)
            case IngestHandler.idempotencyKey:
                Self.add(field.value, to: &idempotencyKey)
                idempotencyKeyFields += 1
            case .contentEncoding: Self.add(field.value, to: &contentEncoding)
            case .expect: Self.add(field.value, to: &expect)
            case .connection: Self.add(field.value, to: &connection)
            default: break
            }
        }
    }

    private static func add(_ value: String, to slot: inout String?, separator: String = ", ") {
        if let first = slot { slot = first + separator + value } else { slot = value }
    }

    /// The declared body length, when it is a number; `Int.max` for digits past it (found from
    /// outside: a length from 2^63 to 2^64 − 1, which the HTTP parser takes, was no number here,
    /// so the head's 413 did not come and a client waiting for it got `100 Continue`).
    var declaredLength: Int? {
        guard let text = contentLength, !text.isEmpty, text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
            return nil
        }
        return Int(text) ?? .max
    }

    /// The client waits for `100 Continue` before its body (also said twice, as a list or in two
    /// fields: found from outside, such a client got no 100 and stalled).
    var expectsContinue: Bool { Self.list(expect, contains: "100-continue") }

    /// `Connection: close`, also as one of a list (`keep-alive, close`) or in a second field.
    var asksToClose: Bool { Self.list(connection, contains: "close") }

    /// A comma-separated header value holds `token` (any case, spaces around it).
    private static func list(_ value: String?, contains token: String) -> Bool {
        guard let value else { return false }
        return value.split(separator: ",").contains { $0.trimmingCharacters(in: .whitespaces).lowercased() == token }
    }
}
