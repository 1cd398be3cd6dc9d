import AsyncHTTPClient
import CandidateRelay
import Foundation
import NIOCore

/// Minimal HTTP for end-to-end tests: status, headers and parsed JSON body.
public struct HTTPTestClient: Sendable {
    public let baseURL: String
    public init(port: Int) { baseURL = "http://127.0.0.1:\(port)" }
    public init(baseURL: String) { self.baseURL = baseURL }

    public struct Reply: Sendable {
        public let status: Int
        public let headers: [String: String]
        public let body: Data
        public var json: [String: Any] { (try? JSONSerialization.jsonObject(with: body) as? [String: Any]) ?? [:] }
    }

    public func request(_ method: String, _ path: String, body: String? = nil, headers: [String: String] = [:]) async throws -> Reply {
        var request = HTTPClientRequest(url: baseURL + path)
        request.method = .init(rawValue: method)
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        let bytes = try await response.body.collect(upTo: 16 << 20)
        var flat: [String: String] = [:]
        for header in response.headers { flat[header.name.lowercased()] = header.value }
        return Reply(status: Int(response.status.code), headers: flat, body: Data(buffer: bytes))
    }

    /// The candidates path of `account` (CONTRACT section 8); nil is `/v1/candidates`, the `default` account's.
    public static func candidatesPath(account: String?) -> String {
        account.map { "/v1/accounts/\($0)/candidates" } ?? "/v1/candidates"
    }

    /// POSTs a candidate as JSON, to `account`'s path when one is named.
    public func post(_ body: String, key: String? = nil, account: String? = nil) async throws -> Reply {
        var headers = ["Content-Type": "application/json"]
        if let key { headers["webhook-id"] = key }
        return try await request("POST", Self.candidatesPath(account: account), body: body, headers: headers)
    }

    /// POSTs a candidate signed as a Standard Webhooks sender does with `secret` (`whsec_...`),
    /// as message `id`, timestamped now.
    public func postSigned(_ body: String, id: String, secret: String, account: String? = nil) async throws -> Reply {
        guard let key = WebhookSecret(Secret(secret, source: "test")) else { throw SigningError.invalidSecret }
        let timestamp = Int64(Date().timeIntervalSince1970)
        let headers = [
            "Content-Type": "application/json", "webhook-id": id, "webhook-timestamp": String(timestamp),
            "webhook-signature": WebhookVerifier.sign(id: id, timestamp: timestamp, body: Data(body.utf8), secret: key),
        ]
        return try await request("POST", Self.candidatesPath(account: account), body: body, headers: headers)
    }

    public enum SigningError: Error { case invalidSecret }

    /// The event record, or nil on 404; read through `account`'s path when one is named.
    public func record(_ id: String, account: String? = nil) async throws -> [String: Any]? {
        let reply = try await request("GET", Self.candidatesPath(account: account) + "/\(id)")
        return reply.status == 200 ? reply.json : nil
    }
}

/// A valid candidate payload with fake personal data that tests can search logs for.
public enum Candidates {
    public static let personalValues = ["Zelda", "Quuxington", "zelda.q@example.org", "+1-555-0199", "NID-778899-Q", "UEsDBBQAAAAIAP"]

    public static func json(position: String = "11.11", partnerID: String?, resume: Bool = false) -> String {
        var fields = [
            #""position_uid":"\#(position)""#, #""first_name":"Zelda""#, #""last_name":"Quuxington""#,
            #""email":"zelda.q@example.org""#, #""phone":"+1-555-0199""#, #""national_id":"NID-778899-Q""#,
        ]
        if let partnerID { fields.append(#""partner_candidate_id":"\#(partnerID)""#) }
        if resume { fields.append(#""resume":{"name":"cv.pdf","file":"UEsDBBQAAAAIAPvMQlE=" }"#) }
        return "{" + fields.joined(separator: ",") + "}"
    }
}
