import CandidateRelayTesting
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing
@testable import CandidateRelay

/// The defects found from outside, each as the request that showed it: the answer must be the
/// contract's JSON error (or a 202 where the request is fine), nothing rejected is stored, and
/// the next good request is still served.
@Suite struct HostileIngestTests {
    static let valid = IngestTests.valid

    static func storedCount(_ outbox: Outbox) async throws -> Int {
        try await outbox.status(now: Date()).counts.values.reduce(0, +)
    }

    /// A signed `Content-Type: ;` (or an empty one) trapped in the ingest path and took the
    /// daemon down. Now: 415, and the daemon answers the next request.
    @Test(arguments: [";", "", " ", ";;", "application/json;;;", "application/+json", "text/plain", "application/json; charset=utf-16",
                      String(repeating: "a", count: 10_000)])
    func oddContentTypesAre415(contentType: String) async throws {
        let f = try IngestTests.fixture(signed: true)
        defer { f.dir.cleanup() }
        try await f.app.test(.router) { client in
            var headers = IngestTests.signedHeaders(id: "msg_ct", body: Self.valid)
            headers[.contentType] = contentType
            let response = try await IngestTests.post(client, Self.valid, headers: headers)
            let expected: HTTPResponse.Status = contentType == "application/json;;;" ? .accepted : .unsupportedMediaType
            #expect(response.status == expected)
            if expected == .unsupportedMediaType {
                #expect(IngestTests.json(response)["error"] as? String == "unsupported_media_type")
            }
            let next = try await IngestTests.post(client, Self.valid, headers: IngestTests.signedHeaders(id: "msg_next", body: Self.valid))
            #expect(next.status == .accepted)
        }
    }

    @Test(arguments: [
        ("application/json", true), ("Application/JSON", true), ("application/json; charset=utf-8", true),
        ("application/json;charset=\"UTF-8\"", true), ("application/problem+json", true), ("application/json;;;", true),
        (";", false), ("", false), ("application/+json", false), ("application/json; charset=latin1", false), ("json", false),
        ("APPLICATION/JSON", true), ("application\u{0F}json", false), ("application/jsoN ", true), ("application/jso", false),
    ])
    func contentTypeRule(contentType: String, accepted: Bool) {
        #expect(IngestHandler.isJSON(contentType) == accepted)
    }

    /// A blank key was one key shared by every sender: after the first, every other candidate
    /// was refused as `idempotency_key_reused`.
    @Test(arguments: ["Idempotency-Key", "webhook-id"])
    func blankIdempotencyKeysAreNoKey(header: String) async throws {
        let f = try IngestTests.fixture()
        defer { f.dir.cleanup() }
        try await f.app.test(.router) { client in
            for name in ["One", "Two"] {
                let body = #"{"position_uid":"p","first_name":"\#(name)","last_name":"L"}"#
                let response = try await IngestTests.post(
                    client, body, headers: [.contentType: "application/json", HTTPField.Name(header)!: " "])
                #expect(response.status == .accepted)
            }
        }
        #expect(try await Self.storedCount(f.outbox) == 2)
        #expect(IngestHandler.idempotencyKey(webhookID: "", idempotencyKey: "k") == "k")
        #expect(IngestHandler.idempotencyKey(webhookID: "", idempotencyKey: nil) == nil)
        // Blank: white space of any kind, and characters that print as nothing.
        for key in [" ", "\t", "\u{00A0}", "\u{2003}", " \u{3000}\t", "", "\u{200B}", "\u{180E}", "\u{FEFF}", "\u{2028}", "\u{2029}",
                    "\u{85}", "\u{2060}", " \u{2028}\u{FEFF}"] {
            #expect(IngestHandler.isBlankKey(key), "\(key.unicodeScalars.map(\.value))")
        }
        for key in ["a", " a ", "\u{2028}a", "-", "\u{FFFD}", "\u{200D}x", "0"] {
            #expect(!IngestHandler.isBlankKey(key), "\(key.unicodeScalars.map(\.value))")
        }
    }

    /// What is validated must be what is sent: a body other parsers may read differently is 400.
    static let ambiguousBodies: [Data] = {
        var bodies: [Data] = []
        bodies.append(Data([0xEF, 0xBB, 0xBF]) + Data(valid.utf8))                    // UTF-8 BOM
        bodies.append(valid.data(using: .utf16LittleEndian)!)                         // UTF-16 LE
        bodies.append(valid.data(using: .utf16BigEndian)!)                            // UTF-16 BE
        bodies.append(valid.data(using: .utf32LittleEndian)!)                         // UTF-32
        bodies.append(Data(#"{"position_uid":"p","first_name":"A","first_name":"B","last_name":"L"}"#.utf8))  // repeated key
        bodies.append(Data(#"{"position_uid":"p","first_name":"A","last_name":"L","address":{"city":"x","city":"y"}}"#.utf8))
        bodies.append(Data(#"{"position_uid":"p","first_name":"\ud800","last_name":"L"}"#.utf8))     // lone surrogate
        bodies.append(Data([0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xC0, 0x80, 0x22, 0x7D]))       // overlong NUL
        bodies.append(Data([0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xED, 0xA0, 0x80, 0x22, 0x7D])) // encoded surrogate
        bodies.append(Data(String(repeating: "[", count: 100_000).utf8))               // deep nesting
        bodies.append(Data(#"{"position_uid":"p","first_name":"A","last_name":"L","n":1e400}"#.utf8))
        return bodies
    }()

    @Test(arguments: ambiguousBodies)
    func ambiguousBodiesAreMalformed(body: Data) async throws {
        let f = try IngestTests.fixture()
        defer { f.dir.cleanup() }
        try await f.app.test(.router) { client in
            let response = try await client.execute(uri: "/v1/candidates", method: .post, headers: [.contentType: "application/json"],
                                                    body: ByteBuffer(bytes: body))
            #expect(response.status == .badRequest)
            #expect(IngestTests.json(response)["error"] as? String == "malformed_json")
        }
        #expect(try await Self.storedCount(f.outbox) == 0)
    }

    /// The message says what is wrong (nesting used to read "not valid UTF-8 JSON"), by byte
    /// offset at most: nothing of the body is quoted back.
    @Test(arguments: [
        (String(repeating: "[", count: 100) + String(repeating: "]", count: 100), "deeper than 64 levels"),
        (#"{"first_name":"Secret-Name","first_name":"Other"}"#, "repeats an object key (byte "),
        (#"{"first_name":"Secret-Name"} x"#, "goes on after its JSON value"),
        ("\u{FEFF}{}", "byte order mark"),
    ])
    func malformedBodiesSayWhy(body: String, reason: String) async throws {
        let f = try IngestTests.fixture()
        defer { f.dir.cleanup() }
        try await f.app.test(.router) { client in
            let response = try await client.execute(uri: "/v1/candidates", method: .post, headers: [.contentType: "application/json"],
                                                    body: ByteBuffer(string: body))
            #expect(response.status == .badRequest)
            let answer = IngestTests.json(response)
            #expect(answer["error"] as? String == "malformed_json")
            let message = try #require(answer["message"] as? String)
            #expect(message.contains(reason), "\(message)")
            #expect(!message.contains("Secret") && !message.contains("Other"))
        }
    }

    /// A NUL in `first_name` was accepted and forwarded.
    @Test(arguments: [
        (#"{"position_uid":"p","first_name":"A\u0000","last_name":"L"}"#, "first_name"),
        (#"{"position_uid":"p","first_name":"A","last_name":"L\u001b[2J"}"#, "last_name"),
        (#"{"position_uid":"p","first_name":"A","last_name":"L","email":"a\u007f@b.co"}"#, "email"),
        (#"{"position_uid":"p","first_name":"A","last_name":"L","note":"ok\tok\r\n\u0007"}"#, "note"),
        (#"{"position_uid":"p","first_name":"A","last_name":"L","custom_fields":{"k":"v\u0001"}}"#, "custom_fields.k"),
        (#"{"position_uid":"p","first_name":"A","last_name":"L","extra":[{"x":"\u0002"}]}"#, "extra[0].x"),
        (#"{"position_uid":"p","first_name":"A","last_name":"L","address":{"city":"a\nb"}}"#, "address.city"),
    ])
    func controlCharactersAre422(body: String, field: String) async throws {
        let f = try IngestTests.fixture()
        defer { f.dir.cleanup() }
        try await f.app.test(.router) { client in
            let response = try await IngestTests.post(client, body)
            #expect(response.status == .unprocessableContent)
            let json = IngestTests.json(response)
            #expect(json["error"] as? String == "invalid_characters")
            let details = json["details"] as? [[String: String]] ?? []
            #expect(details.contains { $0["field"] == field && $0["problem"] == "invalid_characters" })
        }
        #expect(try await Self.storedCount(f.outbox) == 0)
    }

    /// Tab, CR and LF are fine in `note` (and line breaks in base64 files).
    @Test func lineBreaksAllowedInNote() async throws {
        let f = try IngestTests.fixture()
        defer { f.dir.cleanup() }
        try await f.app.test(.router) { client in
            let body = #"{"position_uid":"p","first_name":"A","last_name":"L","note":"a\tb\r\nc","resume":{"name":"cv.pdf","file":"QUJD\nQUJD"}}"#
            let response = try await IngestTests.post(client, body)
            #expect(response.status == .accepted)
        }
    }
}

/// CONTRACT section 8: `/v1/accounts/{account}/...`; without `accounts:` only `default` exists.
@Suite struct AccountPathTests {
    @Test func defaultAccountPathIsTheSameWebhook() async throws {
        let f = try IngestTests.fixture()
        defer { f.dir.cleanup() }
        try await f.app.test(.router) { client in
            let response = try await client.execute(uri: "/v1/accounts/default/candidates", method: .post,
                                                    headers: [.contentType: "application/json"], body: ByteBuffer(string: IngestTests.valid))
            #expect(response.status == .accepted)
            let id = try #require(IngestTests.json(response)["id"] as? String)
            let read = try await client.execute(uri: "/v1/accounts/default/candidates/\(id)", method: .get)
            #expect(read.status == .ok)
        }
    }

    @Test(arguments: [("POST", "/v1/accounts/acme/candidates"), ("POST", "/v1/accounts/NO..SUCH/candidates"),
                      ("GET", "/v1/accounts/acme/candidates/evt_0"), ("GET", "/v1/accounts/acme/candidates?position_uid=p&partner_candidate_id=x")])
    func unknownAccountIs404BeforeAnythingElse(method: String, path: String) async throws {
        let f = try IngestTests.fixture(signed: true)
        defer { f.dir.cleanup() }
        try await f.app.test(.router) { client in
            let response = try await client.execute(uri: path, method: method == "POST" ? .post : .get,
                                                    headers: [.contentType: "application/json"], body: ByteBuffer(string: IngestTests.valid))
            #expect(response.status == .notFound)
            #expect(IngestTests.json(response)["error"] as? String == "unknown_account")
        }
        #expect(try await HostileIngestTests.storedCount(f.outbox) == 0)
    }
}
