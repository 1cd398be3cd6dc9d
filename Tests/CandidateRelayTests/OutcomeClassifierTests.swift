import Foundation
import NIOSSL
import Testing
@testable import CandidateRelay

/// Every row of CONTRACT section 5's outcome table.
@Suite struct OutcomeClassifierTests {
    static let now = Date(timeIntervalSince1970: 1_800_000_000)

    static func response(_ status: Int, _ body: String = "", retryAfter: String? = nil) -> PartnerAnswer {
        .response(status: status, retryAfter: retryAfter, body: Data(body.utf8))
    }

    static func error(_ status: Int, _ code: String) -> String {
        #"{"status":\#(status),"error":"\#(code)","message":"m"}"#
    }

    struct Row: Sendable, CustomTestStringConvertible {
        let name: String
        let answer: PartnerAnswer
        let expected: Classification
        var testDescription: String { name }
    }

    static let rows: [Row] = [
        Row(name: "201 delivered", answer: response(201, #"{"uid":"00.AAA","status":"In progress","first_name":"X"}"#),
            expected: .delivered(candidateUID: "00.AAA", summary: #"{"status":"In progress","uid":"00.AAA"}"#)),
        Row(name: "200 delivered numeric uid", answer: response(200, #"{"uid":42}"#), expected: .delivered(candidateUID: "42", summary: #"{"uid":42}"#)),
        Row(name: "2xx without uid", answer: response(204), expected: .retry(error: "no_uid_in_response", retryAfter: nil)),
        Row(name: "200 HTML page", answer: response(200, "<html>ok</html>"), expected: .retry(error: "no_uid_in_response", retryAfter: nil)),
        Row(name: "409 conflict string uid", answer: response(409, #"{"status":409,"error":"candidate_post_conflict","message":"m","candidate_uid":"00.AAA"}"#),
            expected: .linked(candidateUID: "00.AAA", error: "candidate_post_conflict")),
        Row(name: "409 conflict number uid", answer: response(409, #"{"status":409,"error":"candidate_post_conflict","candidate_uid":5555}"#),
            expected: .linked(candidateUID: "5555", error: "candidate_post_conflict")),
        Row(name: "409 other code with uid", answer: response(409, #"{"error":"other","candidate_uid":"7"}"#), expected: .linked(candidateUID: "7", error: "http_409")),
        Row(name: "409 without uid", answer: response(409, error(409, "something")), expected: .dead(error: "http_409")),
        Row(name: "409 candidate_post_conflict without uid", answer: response(409, error(409, "candidate_post_conflict")), expected: .dead(error: "candidate_post_conflict")),
        Row(name: "409 candidate_post_conflict with an empty uid", answer: response(409, #"{"error":"candidate_post_conflict","candidate_uid":""}"#),
            expected: .dead(error: "candidate_post_conflict")),
        Row(name: "409 other code with an empty uid", answer: response(409, #"{"error":"other","candidate_uid":""}"#), expected: .dead(error: "http_409")),
        Row(name: "401 token", answer: response(401, error(401, "unauthorized")), expected: .refreshTokenAndResend),
        Row(name: "401 empty body", answer: response(401), expected: .refreshTokenAndResend),
        Row(name: "401 duplicate_candidate", answer: response(401, error(401, "duplicate_candidate")), expected: .dead(error: "duplicate_candidate")),
        Row(name: "400 required_field", answer: response(400, error(400, "required_field")), expected: .dead(error: "required_field")),
        Row(name: "403 no_permission", answer: response(403, error(403, "no_permission")), expected: .dead(error: "no_permission")),
        Row(name: "404 position_not_found", answer: response(404, error(404, "position_not_found")), expected: .dead(error: "position_not_found")),
        Row(name: "405", answer: response(405), expected: .dead(error: "http_405")),
        Row(name: "410", answer: response(410), expected: .dead(error: "http_410")),
        Row(name: "413", answer: response(413), expected: .dead(error: "http_413")),
        Row(name: "422", answer: response(422), expected: .dead(error: "http_422")),
        Row(name: "408", answer: response(408), expected: .retry(error: "http_408", retryAfter: nil)),
        Row(name: "425", answer: response(425), expected: .retry(error: "http_425", retryAfter: nil)),
        // Misdirected: not handled on that connection (RFC 9110 15.5.20), so nothing was created.
        Row(name: "421", answer: response(421), expected: .retry(error: "http_421", retryAfter: nil)),
        Row(name: "431", answer: response(431), expected: .dead(error: "http_431")),
        Row(name: "429 without Retry-After", answer: response(429, error(429, "too_many_requests")), expected: .retry(error: "too_many_requests", retryAfter: nil)),
        Row(name: "429 Retry-After seconds", answer: response(429, error(429, "too_many_requests"), retryAfter: "30"),
            expected: .retry(error: "too_many_requests", retryAfter: now.addingTimeInterval(30))),
        // now is 2027-01-15T08:00:00Z
        Row(name: "503 Retry-After HTTP date", answer: response(503, "", retryAfter: "Fri, 15 Jan 2027 08:01:00 GMT"),
            expected: .retry(error: "http_503", retryAfter: now.addingTimeInterval(60))),
        Row(name: "301", answer: response(301), expected: .retry(error: "http_301", retryAfter: nil)),
        Row(name: "500", answer: response(500), expected: .retry(error: "http_500", retryAfter: nil)),
        Row(name: "502", answer: response(502), expected: .retry(error: "http_502", retryAfter: nil)),
        Row(name: "timeout", answer: .transportFailure(.timeout), expected: .retry(error: "timeout", retryAfter: nil)),
        Row(name: "connection refused", answer: .transportFailure(.connectionRefused), expected: .retry(error: "connection_refused", retryAfter: nil)),
        Row(name: "connection reset", answer: .transportFailure(.connectionReset), expected: .retry(error: "connection_reset", retryAfter: nil)),
        Row(name: "tls", answer: .transportFailure(.tls), expected: .retry(error: "tls_error", retryAfter: nil)),
        Row(name: "dns", answer: .transportFailure(.dns), expected: .retry(error: "dns_error", retryAfter: nil)),
        // A partner that lies: identifiers no one could use, codes that are not codes.
        Row(name: "201 uid null", answer: response(201, #"{"uid":null}"#), expected: .retry(error: "no_uid_in_response", retryAfter: nil)),
        Row(name: "201 empty uid", answer: response(201, #"{"uid":""}"#), expected: .retry(error: "invalid_uid_in_response", retryAfter: nil)),
        Row(name: "201 uid with a NUL", answer: response(201, #"{"uid":"00.A\u0000AA"}"#), expected: .retry(error: "invalid_uid_in_response", retryAfter: nil)),
        Row(name: "201 uid with a line break", answer: response(201, #"{"uid":"00.AAA\nlevel=error"}"#), expected: .retry(error: "invalid_uid_in_response", retryAfter: nil)),
        Row(name: "201 uid of 129 characters", answer: response(201, #"{"uid":""# + String(repeating: "A", count: 129) + #""}"#),
            expected: .retry(error: "invalid_uid_in_response", retryAfter: nil)),
        Row(name: "201 uid of 128 characters", answer: response(201, #"{"uid":""# + String(repeating: "A", count: 128) + #""}"#),
            expected: .delivered(candidateUID: String(repeating: "A", count: 128), summary: #"{"uid":""# + String(repeating: "A", count: 128) + #""}"#)),
        // 64-bit ids: a Double would round them (...993 was stored as ...992).
        Row(name: "201 uid beyond 2^53", answer: response(201, #"{"uid":9007199254740993}"#),
            expected: .delivered(candidateUID: "9007199254740993", summary: #"{"uid":"9007199254740993"}"#)),
        Row(name: "409 candidate_uid beyond Int64", answer: response(409, #"{"error":"candidate_post_conflict","candidate_uid":12345678901234567891}"#),
            expected: .linked(candidateUID: "12345678901234567891", error: "candidate_post_conflict")),
        Row(name: "201 uid 2^53 - 1 stays a number", answer: response(201, #"{"uid":9007199254740991}"#),
            expected: .delivered(candidateUID: "9007199254740991", summary: #"{"uid":9007199254740991}"#)),
        Row(name: "201 uid of 16 digits", answer: response(201, #"{"uid":1234567890123456}"#),
            expected: .delivered(candidateUID: "1234567890123456", summary: #"{"uid":1234567890123456}"#)),
        Row(name: "201 uid an object", answer: response(201, #"{"uid":{"a":1}}"#), expected: .retry(error: "invalid_uid_in_response", retryAfter: nil)),
        Row(name: "409 conflict with a uid holding a space", answer: response(409, #"{"error":"candidate_post_conflict","candidate_uid":"00 AAA"}"#),
            expected: .dead(error: "candidate_post_conflict")),
        Row(name: "422 with a sentence for a code", answer: response(422, #"{"error":"ada@example.com is taken","message":"m"}"#),
            expected: .dead(error: "http_422")),
        Row(name: "503 with a code of 65 characters", answer: response(503, #"{"error":""# + String(repeating: "e", count: 65) + #""}"#),
            expected: .retry(error: "http_503", retryAfter: nil)),
        Row(name: "429 with an undocumented code of 64 characters", answer: response(429, #"{"error":""# + String(repeating: "e", count: 64) + #""}"#),
            expected: .retry(error: "http_429", retryAfter: nil)),
    ]

    @Test(arguments: rows)
    func classifies(row: Row) {
        #expect(OutcomeClassifier.classify(row.answer, now: Self.now) == row.expected)
    }

    /// A TLS failure in the handshake sent nothing; one after it (garbage from the partner
    /// once the request was out) may have reached the partner, which is then held as after a
    /// reset (found from outside: resent at once, and both requests created the candidate).
    @Test func aTLSFailureAfterTheHandshakeMayHaveReachedThePartner() {
        #expect(HTTPPartnerClient.classify(NIOSSLError.handshakeFailed(.sslError([]))) == .tls)
        #expect(HTTPPartnerClient.classify(NIOSSLExtraError.failedToValidateHostname) == .tls)
        #expect(HTTPPartnerClient.classify(NIOSSLError.unableToValidateCertificate) == .tls)
        #expect(HTTPPartnerClient.classify(BoringSSLError.sslError([])) == .other)
        #expect(HTTPPartnerClient.classify(NIOSSLError.shutdownFailed(.sslError([]))) == .other)
        #expect(!PartnerAnswer.transportFailure(.tls).mayStillBeAtThePartner)
        #expect(PartnerAnswer.transportFailure(.other).mayStillBeAtThePartner)
    }

    /// A gateway's 502 or 504 gave up on the partner, which may still be creating the
    /// candidate; the partner's own answers (a 503 included) end the request.
    @Test func aGatewaysGiveUpMayStillBeAtThePartner() {
        // Found from outside: a 524 or a bare 503 (Fastly's, Heroku's, Envoy's give-up) was
        // resent after the plain back-off and the candidate was created twice.
        for status in [502, 504, 520, 524, 598, 599, 503] {
            #expect(PartnerAnswer.response(status: status, retryAfter: nil, body: Data()).mayStillBeAtThePartner)
        }
        // The partner's own pause; a gateway that never reached the partner; the partner's answers.
        #expect(!PartnerAnswer.response(status: 503, retryAfter: "5", body: Data()).mayStillBeAtThePartner)
        for status in [200, 201, 400, 401, 409, 429, 500, 521, 522, 523, 525, 526] {
            #expect(!PartnerAnswer.response(status: status, retryAfter: nil, body: Data()).mayStillBeAtThePartner)
        }
    }

    /// A code that is not one stays out of the logs, but with the message in the outbox.
    @Test func anErrorThatIsNotACodeIsKeptWithTheMessage() {
        let body = Data(#"{"error":"ada@example.com is taken","message":"see support"}"#.utf8)
        #expect(PartnerErrorBody(body).error == nil)
        #expect(DeliveryDecision.describe("http_422", body: body) == #"http_422: error "ada@example.com is taken": see support"#)
        #expect(DeliveryDecision.describe("too_many_requests", body: Data(Self.error(429, "too_many_requests").utf8)) == "too_many_requests: m")
    }

    /// Found from outside: a partner that echoes a submitted value as a lower-case word (an
    /// e-mail's local part, a surname) in `error` had it logged, shown as `last_error` and kept
    /// after `forget`. Only the partner's documented codes are taken; any other is `http_<status>`,
    /// with the partner's text kept in the outbox with the message when the event goes dead (a
    /// retry or a link stores the code alone).
    @Test(arguments: [(422, "zorblax_quendrith"), (400, "zorblax.quendrith"), (503, "quendrith"), (409, "lovelace")])
    func aCodeThePartnerDoesNotDocumentStaysOutOfTheLogs(status: Int, echoed: String) {
        let body = Data(Self.error(status, echoed).utf8)
        #expect(PartnerErrorBody(body).error == nil)
        let decision = OutcomeClassifier.classify(Self.response(status, Self.error(status, echoed)), now: Self.now)
        #expect(!"\(decision)".contains(echoed), "\(decision)")
        #expect("\(decision)".contains("http_\(status)"), "\(decision)")
        if status == 422 || status == 400 {
            #expect(DeliveryDecision.describe("http_\(status)", body: body) == "http_\(status): error \"\(echoed)\": m")
        }
        for code in PartnerErrorBody.documentedCodes {
            #expect(PartnerErrorBody(Data(Self.error(400, code).utf8)).error == code)
        }
    }

    /// Found from outside, earlier: a number, a phone or an id spelled with dashes, echoed back by
    /// a partner, was taken for a code. None is one of the partner's codes: none is taken.
    @Test(arguments: ["987654321", "555-123-4567", "id-123456789", "RSSMRA85T10A562S", "Lovelace", "INVALID_REQUEST",
                      "E1001", "http.429-retry", "v2_error_404", "", String(repeating: "a", count: 65)])
    func echoedValuesAreNotCodes(value: String) {
        #expect(PartnerErrorBody(Data(Self.error(400, value).utf8)).error == nil, "\(value)")
    }

    @Test func summaryKeepsOnlyNonPersonalFields() throws {
        let body = #"{"uid":"1","position_uid":"p","status":"s","first_name":"Ada","email":"a@example.com","current_steps":[],"completed_steps":[],"source_contact":{"email":"b@example.com"}}"#
        guard case .delivered(_, let summary?) = OutcomeClassifier.classify(Self.response(201, body), now: Self.now) else {
            Issue.record("not delivered")
            return
        }
        #expect(!summary.contains("Ada"))
        #expect(!summary.contains("example.com"))
        #expect(summary.contains(#""position_uid":"p""#))
    }
}
