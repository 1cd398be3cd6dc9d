import CandidateRelayTesting
import Crypto
import Foundation
import Logging
import Synchronization
import Testing
@testable import CandidateRelay

@Suite struct TokenProviderTests {
    static let logger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

    /// An independent HS256 decoder: splits, base64url-decodes, and checks the MAC with
    /// swift-crypto's constant-time validation — not the minting code.
    static func decode(_ jwt: String, secret: String) -> (header: [String: Any], claims: [String: Any])? {
        let parts = jwt.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 3 else { return nil }
        func bytes(_ text: String) -> Data? {
            var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
            while base64.count % 4 != 0 { base64 += "=" }
            return Data(base64Encoded: base64)
        }
        guard let signature = bytes(parts[2]),
              HMAC<SHA256>.isValidAuthenticationCode(signature, authenticating: Data((parts[0] + "." + parts[1]).utf8),
                                                     using: SymmetricKey(data: Data(secret.utf8))),
              let header = bytes(parts[0]).flatMap({ try? JSONSerialization.jsonObject(with: $0) as? [String: Any] }),
              let claims = bytes(parts[1]).flatMap({ try? JSONSerialization.jsonObject(with: $0) as? [String: Any] })
        else { return nil }
        return (header, claims)
    }

    @Test func comeetTokenHasTheContractClaimsAndSignature() async throws {
        let now = Date(timeIntervalSince1970: 1_900_000_000)
        let provider = ComeetTokenProvider(apiKey: Secret("api-key-1", source: "t"), secret: Secret("shh", source: "t"),
                                           ttlSeconds: 600, logger: Self.logger, now: { now })
        let token = try await provider.token()
        let decoded = try #require(Self.decode(token, secret: "shh"))
        #expect(decoded.header["alg"] as? String == "HS256")
        #expect(decoded.claims["iss"] as? String == "api-key-1")
        // token_ttl_seconds 600 is kept 30 s below the partner's limit, for clock skew.
        #expect((decoded.claims["exp"] as? NSNumber)?.int64Value == 1_900_000_570)
        #expect(Self.decode(token, secret: "wrong") == nil)
    }

    @Test func comeetTokenIsReusedUntilSixtySecondsBeforeExpiry() async throws {
        let clock = ManualClock(Date(timeIntervalSince1970: 1_900_000_000))
        let provider = ComeetTokenProvider(apiKey: Secret("k", source: "t"), secret: Secret("s", source: "t"),
                                           ttlSeconds: 600, logger: Self.logger, now: { clock.now })
        let first = try await provider.token()
        clock.advance(509) // 61 s left: reused
        #expect(try await provider.token() == first)
        clock.advance(5)   // 56 s left, under the 57 s margin (a tenth of 570 s): fresh
        let second = try await provider.token()
        #expect(second != first)
        await provider.invalidate(second)
        clock.advance(1)
        #expect(try await provider.token() != second)
    }

    @Test func oauthRefreshIsSingleFlight() async throws {
        let calls = Atomic<Int>(0)
        let config = OAuth2Configuration(tokenURL: "http://127.0.0.1:1/token", clientID: "c", clientSecret: Secret("s", source: "t"),
                                          scope: nil, clientAuth: .basic)
        let provider = OAuth2TokenProvider(configuration: config, fetch: { _ in
            let n = calls.add(1, ordering: .relaxed).newValue
            try await Task.sleep(for: .milliseconds(100))
            return ("token-\(n)", 3600)
        }, logger: Self.logger)
        let tokens = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<16 { group.addTask { try await provider.token() } }
            return try await group.reduce(into: [String]()) { $0.append($1) }
        }
        #expect(calls.load(ordering: .relaxed) == 1)
        #expect(Set(tokens) == ["token-1"])
        // A 401 invalidates it: the next call fetches once more.
        await provider.invalidate("token-1")
        #expect(try await provider.token() == "token-2")
        #expect(calls.load(ordering: .relaxed) == 2)
    }

    @Test func oauthRefreshesWhenLittleIsLeft() async throws {
        let clock = ManualClock(Date(timeIntervalSince1970: 1_900_000_000))
        let calls = Atomic<Int>(0)
        let config = OAuth2Configuration(tokenURL: "http://x/token", clientID: "c", clientSecret: Secret("s", source: "t"), scope: nil, clientAuth: .body)
        let provider = OAuth2TokenProvider(configuration: config, fetch: { _ in
            ("t\(calls.add(1, ordering: .relaxed).newValue)", 300)
        }, logger: Self.logger, now: { clock.now })
        #expect(try await provider.token() == "t1")
        clock.advance(269) // 31 s left; margin is min(60, 300/10) = 30
        #expect(try await provider.token() == "t1")
        clock.advance(2)
        #expect(try await provider.token() == "t2")
    }

    /// `expires_in: 0` (or less) would mint a token per request; 1e300 would keep one for ever.
    @Test func oauthLifetimesOutsideReasonAreBounded() async throws {
        let clock = ManualClock(Date(timeIntervalSince1970: 1_900_000_000))
        let calls = Atomic<Int>(0)
        let lifetime = Atomic<Int>(0)  // 0, then "for ever"
        let config = OAuth2Configuration(tokenURL: "http://x/token", clientID: "c", clientSecret: Secret("s", source: "t"), scope: nil, clientAuth: .body)
        let provider = OAuth2TokenProvider(configuration: config, fetch: { _ in
            ("t\(calls.add(1, ordering: .relaxed).newValue)", lifetime.load(ordering: .relaxed) == 0 ? 0 : 1e300)
        }, logger: Self.logger, now: { clock.now })
        #expect(try await provider.token() == "t1")
        #expect(try await provider.token() == "t1")  // kept 30 s (margin 3 s), not one per call
        clock.advance(27.5)
        #expect(try await provider.token() == "t2")
        lifetime.store(1, ordering: .relaxed)
        clock.advance(30)
        #expect(try await provider.token() == "t3")
        clock.advance(86_400 - 61)
        #expect(try await provider.token() == "t3")
        clock.advance(2)  // a day less 59 s: inside the 60 s margin of the one-day cap
        #expect(try await provider.token() == "t4")
    }

    /// A token with a CR/LF could never be sent: it is refused, not cached, and the next call
    /// asks the endpoint again.
    @Test func oauthTokenThatCannotBeAHeaderIsNotKept() async throws {
        let calls = Atomic<Int>(0)
        let config = OAuth2Configuration(tokenURL: "http://x/token", clientID: "c", clientSecret: Secret("s", source: "t"), scope: nil, clientAuth: .basic)
        let provider = OAuth2TokenProvider(configuration: config, fetch: { _ in
            let n = calls.add(1, ordering: .relaxed).newValue
            return (n == 1 ? "abc\r\nX-Injected: yes" : n == 2 ? "" : "good-token", 3600)
        }, logger: Self.logger)
        await #expect(throws: TokenUnavailable.self) { try await provider.token() }
        await #expect(throws: TokenUnavailable.self) { try await provider.token() }
        #expect(try await provider.token() == "good-token")
        #expect(calls.load(ordering: .relaxed) == 3)
        #expect(!OAuth2TokenProvider.isUsable("a b"))
        #expect(!OAuth2TokenProvider.isUsable(String(repeating: "a", count: 16_385)))
        #expect(OAuth2TokenProvider.isUsable("eyJhbGciOi.J9-_~+/="))
    }

    @Test func oauthEndpointFailureIsTokenUnavailable() async {
        let config = OAuth2Configuration(tokenURL: "http://x/token", clientID: "c", clientSecret: Secret("s", source: "t"), scope: nil, clientAuth: .basic)
        let provider = OAuth2TokenProvider(configuration: config, fetch: { _ in throw TokenUnavailable(reason: "token_endpoint_http_503") },
                                           logger: Self.logger)
        await #expect(throws: TokenUnavailable.self) { try await provider.token() }
    }

    /// Found from outside: every worker waiting on a failed shared fetch logged
    /// `auth.token_failed`, so one failed request counted as many as there were workers.
    @Test func aFailedFetchIsLoggedOnceWhoeverWaitedForIt() async throws {
        let logs = LogCapture()
        let logger = Logger(label: "t") { RelayLogHandler(label: $0, settings: LogSettings(level: .info, format: .json), output: logs.output) }
        let calls = Atomic<Int>(0)
        let config = OAuth2Configuration(tokenURL: "http://x/token", clientID: "c", clientSecret: Secret("s", source: "t"), scope: nil, clientAuth: .basic)
        let provider = OAuth2TokenProvider(configuration: config, fetch: { _ in
            calls.add(1, ordering: .relaxed)
            try await Task.sleep(for: .milliseconds(200))
            throw TokenUnavailable(reason: "token_endpoint_http_400")
        }, logger: logger)
        let failures = await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<8 { group.addTask { (try? await provider.token()) == nil } }
            return await group.reduce(into: 0) { $0 += $1 ? 1 : 0 }
        }
        #expect(failures == 8)
        #expect(calls.load(ordering: .relaxed) == 1)
        #expect(logs.events("auth.token_failed").count == 1)
        #expect(logs.events("auth.token_failed").first?["error"] as? String == "token_endpoint_http_400")
    }

    /// `expires_in` as a number (RFC 6749), or as a string holding one, as some providers send
    /// it (found from outside: `"6"` was read as the default hour, and each refresh then cost a
    /// request refused with 401). Anything else: an hour, bounded later as every lifetime is.
    @Test func expiresInIsANumberOrAStringHoldingOne() {
        #expect(OAuth2TokenProvider.expiresIn(.number(6)) == 6)
        #expect(OAuth2TokenProvider.expiresIn(.string("6")) == 6)
        #expect(OAuth2TokenProvider.expiresIn(.string(" 120 ")) == 120)
        #expect(OAuth2TokenProvider.expiresIn(.string("1.5e2")) == 150)
        for unreadable: JSONValue? in [nil, .null, .string(""), .string("soon"), .string("inf"), .string("nan"), .bool(true), .array([.number(6)])] {
            #expect(OAuth2TokenProvider.expiresIn(unreadable) == 3600, "\(String(describing: unreadable))")
        }
    }

    /// Found from outside: a `mac` token was sent as a Bearer, and refused at the partner.
    @Test func aTokenResponseMustBeOfTypeBearer() throws {
        for accepted in [#"{"access_token":"t1","token_type":"Bearer","expires_in":60}"#,
                         #"{"access_token":"t1","token_type":"bearer","expires_in":60}"#,
                         #"{"access_token":"t1","token_type":null,"expires_in":60}"#,
                         #"{"access_token":"t1","expires_in":60}"#] {
            let (token, expiresIn) = try OAuth2TokenProvider.tokenResponse(Data(accepted.utf8))
            #expect(token == "t1" && expiresIn == 60, "\(accepted)")
        }
        for refused in [#"{"access_token":"t1","token_type":"mac"}"#, #"{"access_token":"t1","token_type":"DPoP"}"#,
                        #"{"access_token":"t1","token_type":""}"#, #"{"access_token":"t1","token_type":1}"#] {
            #expect(throws: TokenUnavailable(reason: "token_response_unsupported_token_type"), "\(refused)") {
                try OAuth2TokenProvider.tokenResponse(Data(refused.utf8))
            }
        }
        #expect(throws: TokenUnavailable(reason: "token_response_without_access_token")) {
            try OAuth2TokenProvider.tokenResponse(Data(#"{"token_type":"Bearer"}"#.utf8))
        }
    }

    @Test func formEncodingFollowsRFC6749() {
        #expect(OAuth2TokenProvider.formEncode("a b&c=d/é") == "a+b%26c%3Dd%2F%C3%A9")
    }
}
