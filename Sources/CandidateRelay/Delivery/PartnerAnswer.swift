import Foundation

/// What one partner request produced: an HTTP answer, or a failure before any answer.
public enum PartnerAnswer: Sendable, Equatable {
    /// `clockOffset`, for a 401 only: the partner's clock (its `Date` header) minus the relay's
    /// when the answer came, in seconds; nil without a `Date` that parses. A JWT's `exp` is read
    /// against the partner's clock, so a relay clock an hour off has its tokens refused just as
    /// wrong credentials are (`auth.rejected` says so when the difference is large).
    case response(status: Int, retryAfter: String?, body: Data, clockOffset: Double? = nil)
    case transportFailure(TransportFailure)

    /// No answer from the partner itself, though the request may have reached it (which may
    /// then still be working on it): a timeout, a reset or another failure mid-exchange; not a
    /// refused connection, a name or TLS handshake failure, or no token (nothing was sent).
    /// A gateway's give-up too: the gateway stopped waiting for the partner, which may still be
    /// creating the candidate (found from outside: a resend after the plain back-off met the
    /// first request still at work, and both created it). That is 502 and 504, Cloudflare's 520
    /// (the origin's answer lost, a reset) and 524 (the origin's timeout), the 598 and 599 of
    /// some proxies, and a 503 without `Retry-After`: Fastly's first-byte timeout, Heroku's
    /// 30 s router timeout and Envoy's upstream reset all answer 503 while the request may be
    /// at work behind them (found from outside: a 524 or a bare 503 resent after 0.5 s created
    /// the candidate twice). A 503 with `Retry-After` is the partner's own pause, and the
    /// statuses of a gateway that never reached the partner (Cloudflare's 521, 522, 523, 525,
    /// 526) are not give-ups.
    var mayStillBeAtThePartner: Bool {
        switch self {
        case .response(let status, let retryAfter, _, _):
            Self.gatewayGiveUps.contains(status) || (status == 503 && retryAfter == nil)
        case .transportFailure(let failure):
            switch failure {
            case .timeout, .connectionReset, .invalidResponse, .responseTooLarge, .other: true
            case .connectionRefused, .tls, .dns, .tokenUnavailable: false
            }
        }
    }
}

extension PartnerAnswer {
    /// Statuses a gateway answers when it stopped waiting for the partner (`mayStillBeAtThePartner`).
    static let gatewayGiveUps: Set<Int> = [502, 504, 520, 524, 598, 599]
}

/// Failures below HTTP; all retryable. The raw value is the `last_error` code operators see.
public enum TransportFailure: String, Sendable, Equatable, CaseIterable {
    case timeout
    case connectionRefused = "connection_refused"
    case connectionReset = "connection_reset"
    case tls = "tls_error"
    case dns = "dns_error"
    case tokenUnavailable = "token_unavailable"
    /// An answer came, but not one HTTP/1.1 lets the relay read (a folded header, two
    /// `Content-Length`s, a status line of four digits...): the partner, or a proxy, answered
    /// something. What it said is unknown, so it is held as a give-up.
    case invalidResponse = "invalid_response"
    /// An answer whose body is over the 1 MiB the relay reads (a Candidate is a few kB).
    case responseTooLarge = "response_too_large"
    case other = "transport_error"
}

/// The partner's error body `{"status", "error", "message", "candidate_uid"?}`.
struct PartnerErrorBody: Sendable, Equatable {
    var error: String?
    var message: String?
    var candidateUID: String?

    init(_ body: Data) {
        let document = try? StrictJSONParser.parseAnswer(body)
        let rawError = document?["error"]?.stringValue
        let rawMessage = document?["message"]?.stringValue
        // The code goes to logs, metrics and the HTTP record; the message stays in the outbox.
        // An `error` that is not one of the partner's documented codes (a sentence, a submitted
        // value echoed back, a code it added since) is kept with the message, out of the logs.
        error = rawError.flatMap(Self.partnerCode)
        if let rawError, error == nil {
            message = "error \"\(rawError.prefix(200))\"" + (rawMessage.map { ": \($0)" } ?? "")
        } else {
            message = rawMessage
        }
        candidateUID = Self.usableUID(document?["candidate_uid"])
    }

    /// The codes Comeet documents for "create a candidate" (CONTRACT.md §1). Found from outside:
    /// a shape check alone (lower-case word characters) let a value the partner echoed back as a
    /// lower-case word (`{"error":"lovelace"}`, an e-mail's local part, a user name) reach the log lines,
    /// the read API's `last_error`, and stay after `forget` (a shape check before it had let
    /// `987654321`, a national id, through). Any other `error` is answered as `http_<status>`;
    /// when the event goes dead, the partner's text is kept in the outbox with the message.
    static let documentedCodes: Set<String> = [
        "required_field", "string_size_limit", "invalid_email", "invalid_linkedin_url", "invalid_url",
        "source_contact_conflict", "incorrect_country_code", "invalid_custom_candidate_field", "invalid_datetime",
        "duplicate_candidate", "file_size_limit", "malicious_file", "no_permission", "position_not_found", "not_found",
        "candidate_post_conflict", "too_many_requests",
    ]

    /// `value` when it is one of the partner's documented codes.
    static func partnerCode(_ value: String) -> String? {
        documentedCodes.contains(value) ? value : nil
    }

    /// The codes the relay itself stores as an error (`last_error`, an attempt's `error`).
    static let relayCodes: Set<String> = Set(TransportFailure.allCases.map(\.rawValue)).union([
        "unauthorized", "no_uid_in_response", "invalid_uid_in_response", "attempts_exhausted", "max_age_exceeded",
        "payload_erased", "erased", "partner_error",
    ])

    /// The code part of a stored error (`last_error`, an attempt's `error`: "code: message") as
    /// the read API and `events list` show it and `forget` keeps it: one of the partner's
    /// documented codes, one of the relay's own, or `http_<status>`. Anything else is
    /// `partner_error`: a value a partner echoed, stored by a version that checked less
    /// (`987654321`, then `lovelace`; review: an outbox written before keeps them).
    static func storedCode(_ text: String) -> String {
        let code = String(text.prefix { $0 != ":" })
        if documentedCodes.contains(code) || relayCodes.contains(code) { return code }
        let utf8 = Array(code.utf8)
        if utf8.count == 8, code.hasPrefix("http_"), utf8[5...].allSatisfy({ (0x30...0x39).contains($0) }) { return code }
        return "partner_error"
    }

    /// A partner's candidate uid (a string or a number) fit to store, show and log: 1–128
    /// characters, no control character and no white space. An empty one links to nothing; a
    /// NUL was stored cut short at it (linking to another uid); a megabyte went into log lines.
    static func usableUID(_ value: JSONValue?) -> String? {
        guard let uid = value?.identifierString, (1...128).contains(uid.unicodeScalars.count),
              !uid.unicodeScalars.contains(where: { $0.properties.generalCategory == .control || $0.properties.isWhitespace })
        else { return nil }
        return uid
    }
}
