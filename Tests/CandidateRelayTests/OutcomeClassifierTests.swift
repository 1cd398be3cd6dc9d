import Foundation
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
        Row(name: "409 other code with uid", answer: response(409, #"{"error":"other","candidate_uid":"7"}"#), expected: .linked(candidateUID: "7", error: "other")),
        Row(name: "409 without uid", answer: response(409, error(409, "something")), expected: .dead(error: "something")),
        Row(name: "409 candidate_post_conflict without uid", answer: response(409, error(409, "candidate_post_conflict")), expected: .dead(error: "candidate_post_conflict")),
        Row(name: "409 candidate_post_conflict with an empty uid", answer: response(409, #"{"error":"candidate_post_conflict","candidate_uid":""}"#),
            expected: .dead(error: "candidate_post_conflict")),
        Row(name: "409 other code with an empty uid", answer: response(409, #"{"error":"other","candidate_uid":""}"#), expected: .dead(error: "other")),
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
    ]

    @Test(arguments: rows)
    func classifies(row: Row) {
        #expect(OutcomeClassifier.classify(row.answer, now: Self.now) == row.expected)
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
