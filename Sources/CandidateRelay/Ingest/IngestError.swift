import Foundation
import HTTPTypes
import Hummingbird

/// Every error ingest can answer, mapped in one place to the contract's status and JSON code.
public enum IngestError: Error, Sendable {
    case payloadTooLarge(limit: Int)
    /// Why, for a webhook (nil for a read without its token).
    case unauthorized(AuthRefusal?)
    case unsupportedMediaType
    /// A `Content-Encoding` other than identity: 415 too (RFC 9110), with its own message.
    case unsupportedContentEncoding
    /// Not the strict JSON the relay forwards; the parser's reason when it got that far (a
    /// byte offset at most: nothing of the body is quoted).
    case malformedJSON(StrictJSONError?)
    case validationFailed([ValidationProblem])
    /// A lookup by natural key without one of its two query parameters, or with one repeated.
    case lookupIncomplete([ValidationProblem])
    /// A lookup parameter holding a control character, which no stored key has (and which the
    /// database would read as the end of the value: `K1%00ZZZ` found K1's events), or not
    /// valid percent-encoded UTF-8.
    case lookupInvalid([ValidationProblem])
    /// `location`: the read API's path of the event that holds the key (the same account's).
    case idempotencyKeyReused(location: String)
    case unavailable(reason: String, retryAfterSeconds: Int)
    case notFound
    case unknownAccount
    /// No route has this path (any method).
    case noSuchPath
    /// The path exists, but not for this method; `allow` lists the methods it answers.
    case methodNotAllowed(allow: String)

    var status: HTTPResponse.Status {
        switch self {
        case .payloadTooLarge: .contentTooLarge
        case .unauthorized: .unauthorized
        case .unsupportedMediaType, .unsupportedContentEncoding: .unsupportedMediaType
        case .malformedJSON: .badRequest
        case .validationFailed, .lookupIncomplete, .lookupInvalid: .unprocessableContent
        case .idempotencyKeyReused: .conflict
        case .unavailable: .serviceUnavailable
        case .notFound, .unknownAccount, .noSuchPath: .notFound
        case .methodNotAllowed: .methodNotAllowed
        }
    }

    /// The contract's error code, also the `result` of the ingest metric and log line.
    public var code: String {
        switch self {
        case .payloadTooLarge: "payload_too_large"
        case .unauthorized: "unauthorized"
        case .unsupportedMediaType, .unsupportedContentEncoding: "unsupported_media_type"
        case .malformedJSON: "malformed_json"
        case .validationFailed(let problems):
            // CONTRACT section 4 names control characters a code of their own.
            problems.contains { $0.problem == "invalid_characters" } ? "invalid_characters" : "validation_failed"
        case .lookupIncomplete: "validation_failed"
        case .lookupInvalid: "invalid_characters"
        case .idempotencyKeyReused: "idempotency_key_reused"
        case .unavailable: "unavailable"
        case .notFound, .noSuchPath: "not_found"
        case .unknownAccount: "unknown_account"
        case .methodNotAllowed: "method_not_allowed"
        }
    }

    var message: String {
        switch self {
        case .payloadTooLarge(let limit): "the body is larger than \(limit) bytes"
        case .unauthorized(let refusal?): refusal.message
        case .unauthorized: "missing or invalid webhook signature or bearer token"
        case .unsupportedMediaType: "Content-Type must be application/json"
        case .unsupportedContentEncoding: "Content-Encoding must be identity: bodies are not decompressed"
        case .malformedJSON(let reason): Self.malformedMessage(reason)
        case .validationFailed(let problems):
            // A problem that is a header's, not a field's: the idempotency key's.
            if problems.count == 1, [IngestHandler.webhookID.rawName, IngestHandler.idempotencyKey.rawName].contains(problems[0].field) {
                switch problems[0].problem {
                case "repeated": "the \(problems[0].field) header is sent more than once: one key per request"
                case "string_size_limit": "the \(problems[0].field) header is longer than \(IngestHandler.maxKeyBytes) bytes"
                default: "the \(problems[0].field) header is not valid UTF-8"
                }
            } else if problems.count == 1, problems[0].field == "$", problems[0].problem == "too_many_values" {
                "the body holds more than \(StrictJSONParser.maxDocumentValues) JSON values: no candidate has that many"
            } else if problems.count > Self.maxDetails {
                "\(problems.count) field(s) would be rejected by the partner; the first \(Self.maxDetails) are listed"
            } else {
                "\(problems.count) field(s) would be rejected by the partner"
            }
        case .lookupIncomplete: "a lookup needs both query parameters, position_uid and partner_candidate_id, once each"
        case .lookupInvalid: "a lookup's query parameters are percent-encoded UTF-8 without control characters (no stored key has one)"
        case .idempotencyKeyReused(let location): "this idempotency key was already used with a different body, by the event at \(location)"
        case .unavailable(let reason, _): reason
        case .notFound: "no such event"
        case .unknownAccount: "no such account"
        case .noSuchPath: "no such path"
        case .methodNotAllowed(let allow): "this path answers \(allow) only"
        }
    }

    static func malformedMessage(_ reason: StrictJSONError?) -> String {
        switch reason {
        case nil: "the body is not valid UTF-8 JSON"
        case .byteOrderMark: "the body starts with a byte order mark: plain UTF-8 JSON only"
        case .invalidUTF8(let offset): "the body is not valid UTF-8 (byte \(offset))"
        case .unexpected(let offset): "the body is not valid JSON (byte \(offset))"
        case .duplicateKey(let offset): "the body repeats an object key (byte \(offset)): each key once"
        case .tooDeep(let limit): "the body nests objects or arrays deeper than \(limit) levels"
        case .numberOutOfRange(let offset): "the body holds a number out of range (byte \(offset))"
        case .loneSurrogate(let offset): "the body escapes a lone UTF-16 surrogate (byte \(offset))"
        case .trailingData(let offset): "the body goes on after its JSON value (byte \(offset))"
        case .tooManyValues(let limit, _): "the body holds more than \(limit) JSON values"
        }
    }

    /// The most `details` an answer lists (the message gives the whole count): a sender's
    /// mistake repeated in every element of a long array is the same mistake.
    static let maxDetails = 100
    /// The longest field path a detail shows (longer ones end in "…").
    static let maxFieldScalars = 256

    /// The JSON answer `{"error", "message", "details"}` (plus Retry-After for 503).
    var answer: IngestAnswer {
        var details: [[String: String]] = []
        if case .validationFailed(let problems) = self {
            // A field's path names the sender's own keys (`custom_fields.<key>`), of any length:
            // cut, so that a 422 stays small whatever the body.
            details = problems.prefix(Self.maxDetails).map { problem in
                var detail = problem.detail
                if let field = detail["field"], field.unicodeScalars.count > Self.maxFieldScalars {
                    detail["field"] = String(String.UnicodeScalarView(field.unicodeScalars.prefix(Self.maxFieldScalars))) + "…"
                }
                return detail
            }
        }
        if case .lookupIncomplete(let problems) = self { details = problems.map(\.detail) }
        if case .lookupInvalid(let problems) = self { details = problems.map(\.detail) }
        if case .unauthorized(let refusal?) = self { details = [refusal.detail] }
        var headers: HTTPFields = [.contentType: "application/json"]
        if case .unavailable(_, let seconds) = self { headers[.retryAfter] = String(seconds) }
        if case .methodNotAllowed(let allow) = self { headers[.allow] = allow }
        if case .idempotencyKeyReused(let location) = self { headers[.location] = location }
        let body = ContractJSON.data(["error": code, "message": message, "details": details])
        return IngestAnswer(status: status, headers: headers, body: ByteBuffer(bytes: body))
    }

    public var response: Response { answer.response }
}

/// An answer of the API, apart from how it is written: as a Hummingbird `Response` by the
/// router, as HTTP parts by ingest's channel handler (`IngestChannelHandler`).
struct IngestAnswer: Sendable {
    var status: HTTPResponse.Status
    var headers: HTTPFields
    var body: ByteBuffer

    var response: Response { Response(status: status, headers: headers, body: .init(byteBuffer: body)) }
}

extension Response {
    /// A JSON response from a contract object.
    static func json(_ status: HTTPResponse.Status, _ object: Any, headers extra: HTTPFields = [:]) -> Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        headers.append(contentsOf: extra)
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: ContractJSON.data(object))))
    }
}
