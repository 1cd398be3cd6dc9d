import Crypto
import Foundation
import Hummingbird

/// `POST /oauth/token`: an RFC 6749 client-credentials token endpoint (section 4.4), for
/// relays configured with OAuth instead of self-minted JWTs. Client authentication is HTTP
/// Basic (section 2.3.1) or `client_id`/`client_secret` in the form body.
struct OAuthTokenEndpoint: Sendable {
    let configuration: PartnerSimulatorConfiguration
    let store: SimulatorStore

    /// Issues a token or answers the RFC 6749 section 5.2 error; every hit is counted.
    func handle(_ request: Request) async throws -> Response {
        store.countTokenRequest(acceptEncoding: request.headers[.acceptEncoding])
        if store.faults.tokenLatencyMs > 0 {
            await store.stall(milliseconds: store.faults.tokenLatencyMs) { $0.tokenLatencyMs > 0 }
        }
        if store.faults.tokenEndpointDown {
            var headers: HTTPFields = [:]
            if let retryAfter = store.faults.retryAfter { headers[.retryAfter] = retryAfter }
            return SimulatorResponse.json(status: 503, object: ["error": "temporarily_unavailable"], headers: headers)
        }
        var request = request
        guard let buffer = try? await request.collectBody(upTo: 64 * 1024) else {
            return SimulatorResponse.json(status: 400, object: ["error": "invalid_request"])
        }
        let form = FormURLEncoded.parse(String(decoding: buffer.readableBytesView, as: UTF8.self))
        let basic = request.headers[.authorization].flatMap(Self.basicCredentials)
        let clientID = basic?.id ?? form["client_id"]
        let clientSecret = basic?.secret ?? form["client_secret"]
        guard let clientID, let clientSecret,
            Self.constantTimeEquals(clientID, configuration.oauthClientID),
            Self.constantTimeEquals(clientSecret, configuration.oauthClientSecret)
        else {
            // Section 5.2: a client that tried Basic gets a challenge back.
            let headers: HTTPFields = basic == nil ? [:] : [.wwwAuthenticate: "Basic realm=\"partner-sim\""]
            return SimulatorResponse.json(status: 401, object: ["error": "invalid_client"], headers: headers)
        }
        guard let grantType = form["grant_type"] else {
            return SimulatorResponse.json(status: 400, object: ["error": "invalid_request"])
        }
        guard grantType == "client_credentials" else {
            return SimulatorResponse.json(status: 400, object: ["error": "unsupported_grant_type"])
        }
        let ttl = configuration.oauthTokenTTLSeconds
        let token = store.issueToken(clientID: clientID, ttl: TimeInterval(ttl), now: Date())
        var answer: [String: Any] = ["access_token": token, "token_type": "Bearer", "expires_in": ttl]
        if let scope = form["scope"] { answer["scope"] = scope }
        // Section 5.1: token answers must not be cached.
        return SimulatorResponse.json(
            status: 200, object: answer, headers: [.cacheControl: "no-store", HTTPFields.Element.Name("Pragma")!: "no-cache"])
    }

    /// Decodes `Authorization: Basic base64(id:secret)`, where id and secret are themselves
    /// form-urlencoded (RFC 6749 section 2.3.1).
    static func basicCredentials(_ header: String) -> (id: String, secret: String)? {
        let prefix = "basic "
        guard header.lowercased().hasPrefix(prefix),
            let data = Data(base64Encoded: String(header.dropFirst(prefix.count)).trimmingCharacters(in: .whitespaces)),
            let text = String(data: data, encoding: .utf8),
            let colon = text.firstIndex(of: ":")
        else { return nil }
        return (
            FormURLEncoded.decode(String(text[..<colon])),
            FormURLEncoded.decode(String(text[text.index(after: colon)...]))
        )
    }

    /// Compares secrets without leaking where they differ: digest equality in swift-crypto
    /// is constant-time, and hashing first hides the length.
    static func constantTimeEquals(_ lhs: String, _ rhs: String) -> Bool {
        SHA256.hash(data: Data(lhs.utf8)) == SHA256.hash(data: Data(rhs.utf8))
    }
}

/// `application/x-www-form-urlencoded` decoding, as RFC 6749 bodies use.
enum FormURLEncoded {
    /// Parses `a=b&c=d`; later duplicates win (RFC 6749 forbids repeats anyway).
    static func parse(_ body: String) -> [String: String] {
        var fields: [String: String] = [:]
        for pair in body.split(separator: "&") where !pair.isEmpty {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            fields[decode(String(parts[0]))] = parts.count > 1 ? decode(String(parts[1])) : ""
        }
        return fields
    }

    /// `+` is a space in forms; the rest is percent-decoding.
    static func decode(_ text: String) -> String {
        let spaced = text.replacingOccurrences(of: "+", with: " ")
        return spaced.removingPercentEncoding ?? spaced
    }
}
