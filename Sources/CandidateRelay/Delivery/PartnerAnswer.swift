import Foundation

/// What one partner request produced: an HTTP answer, or a failure before any answer.
public enum PartnerAnswer: Sendable, Equatable {
    case response(status: Int, retryAfter: String?, body: Data)
    case transportFailure(TransportFailure)
}

/// Failures below HTTP; all retryable. The raw value is the `last_error` code operators see.
public enum TransportFailure: String, Sendable, Equatable {
    case timeout
    case connectionRefused = "connection_refused"
    case connectionReset = "connection_reset"
    case tls = "tls_error"
    case dns = "dns_error"
    case tokenUnavailable = "token_unavailable"
    case other = "transport_error"
}

/// The partner's error body `{"status", "error", "message", "candidate_uid"?}`.
struct PartnerErrorBody: Sendable, Equatable {
    var error: String?
    var message: String?
    var candidateUID: String?

    init(_ body: Data) {
        let document = try? JSONValue.parse(body, allowBOM: true)
        error = document?["error"]?.stringValue
        message = document?["message"]?.stringValue
        // An empty one links to nothing: as good as none (a 2xx's empty `uid` is treated the same).
        candidateUID = document?["candidate_uid"]?.identifierString.flatMap { $0.isEmpty ? nil : $0 }
    }
}
