import Foundation
import Testing
@testable import CandidateRelay

/// Standard Webhooks verification against the specification's published test vector.
@Suite struct WebhookVerifierTests {
    static let secret = WebhookSecret(Secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", source: "test"))!
    static let id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    static let timestamp = "1614265330"
    static let body = Data(#"{"test": 2432232314}"#.utf8)
    static let signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    static let signedAt = Date(timeIntervalSince1970: 1_614_265_330)

    @Test func signingReproducesThePublishedVector() {
        #expect(WebhookVerifier.sign(id: Self.id, timestamp: 1_614_265_330, body: Self.body, secret: Self.secret) == Self.signature)
    }

    @Test func acceptsThePublishedVector() throws {
        let verifier = WebhookVerifier(secrets: [Self.secret])
        try verifier.verify(id: Self.id, timestamp: Self.timestamp, signatureHeader: Self.signature, body: Self.body, now: Self.signedAt)
    }

    @Test func acceptsWhenAnyOfSeveralSignaturesMatches() throws {
        let verifier = WebhookVerifier(secrets: [Self.secret])
        try verifier.verify(id: Self.id, timestamp: Self.timestamp, signatureHeader: "v1,bm9wZQ== v2,abc " + Self.signature,
                            body: Self.body, now: Self.signedAt)
    }

    @Test func theHeadersAloneRefuseWhatNoBodyCanMakeAuthentic() throws {
        let verifier = WebhookVerifier(secrets: [Self.secret])
        // The published vector's headers pass the precheck (only the body can fail it now).
        #expect(try verifier.precheck(id: Self.id, timestamp: Self.timestamp, signatureHeader: Self.signature, now: Self.signedAt).count == 1)
        #expect(throws: WebhookVerifier.Failure.timestampOutOfTolerance) {
            try verifier.precheck(id: Self.id, timestamp: Self.timestamp, signatureHeader: Self.signature, now: Self.signedAt.addingTimeInterval(301))
        }
        #expect(throws: WebhookVerifier.Failure.noMatchingSignature) {
            try verifier.precheck(id: Self.id, timestamp: Self.timestamp, signatureHeader: "v1,bm9wZQ== v2,abc", now: Self.signedAt)
        }
        #expect(throws: WebhookVerifier.Failure.missingHeaders) {
            try verifier.precheck(id: "", timestamp: Self.timestamp, signatureHeader: Self.signature, now: Self.signedAt)
        }
        let bearer = IngestAuthenticator(signingSecrets: [], bearerToken: Secret("t0ken", source: "test"), allowUnauthenticated: false)
        #expect(bearer.mayBeAuthentic(.init(authorization: "Bearer t0ken"), now: Self.signedAt))
        #expect(!bearer.mayBeAuthentic(.init(authorization: "Bearer nope"), now: Self.signedAt))
        #expect(!bearer.mayBeAuthentic(.init(), now: Self.signedAt))
        let open = IngestAuthenticator(signingSecrets: [], bearerToken: nil, allowUnauthenticated: true)
        #expect(open.mayBeAuthentic(.init(), now: Self.signedAt))
    }

    /// Found from outside: a file of two bearer tokens was refused, so rotating the token refused
    /// every sender until each had moved to the new one. Now each line is a token (blank lines
    /// and the spaces around one left out, Windows line ends too), for reads as for webhooks.
    @Test func everyTokenOfTheFileIsAccepted() {
        let rotating = IngestAuthenticator(signingSecrets: [], bearerToken: Secret("old-t0ken\r\n\n  new-t0ken \n", source: "test"),
                                           allowUnauthenticated: false)
        #expect(rotating.isAuthentic(.init(authorization: "Bearer old-t0ken"), body: Data(), now: Self.signedAt))
        #expect(rotating.isAuthentic(.init(authorization: "Bearer new-t0ken"), body: Data(), now: Self.signedAt))
        #expect(rotating.bearerMatches("Bearer new-t0ken"))  // the read API's check
        for wrong in ["Bearer nope", "Bearer old-t0ken\r\n\n  new-t0ken", "Bearer ", "Bearer old-t0kennew-t0ken"] {
            #expect(!rotating.isAuthentic(.init(authorization: wrong), body: Data(), now: Self.signedAt), "\(wrong.debugDescription)")
        }
        #expect(IngestAuthenticator.bearerTokens(in: "a\u{2028}b\nc\td\n") == ["a\u{2028}b", "c\td"])  // refused by the config
    }

    /// Found from outside: a sender's clock minutes off, or a timestamp in milliseconds, was
    /// refused as a wrong secret was, and nothing told them apart. The refusal names why.
    @Test func aRefusalSaysWhy() {
        let both = IngestAuthenticator(signingSecrets: [Secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", source: "test")],
                                       bearerToken: Secret("t0ken", source: "test"), allowUnauthenticated: false)
        func refusal(_ headers: IngestAuthenticator.Headers, at now: Date = Self.signedAt) -> AuthRefusal? {
            both.refusal(headers, body: Self.body, now: now)
        }
        let signed = IngestAuthenticator.Headers(webhookID: Self.id, webhookTimestamp: Self.timestamp, webhookSignature: Self.signature)
        #expect(refusal(signed) == nil)
        #expect(refusal(.init(authorization: "Bearer t0ken")) == nil)
        #expect(refusal(.init()) == .credentialsMissing)
        #expect(refusal(.init(authorization: "Bearer nope")) == .tokenMismatch)
        #expect(refusal(signed, at: Self.signedAt.addingTimeInterval(360)) == .timestampOutOfTolerance)
        #expect(refusal(.init(webhookID: Self.id, webhookTimestamp: Self.timestamp + "000", webhookSignature: Self.signature))
                == .timestampOutOfTolerance)  // milliseconds
        #expect(refusal(.init(webhookID: Self.id, webhookTimestamp: "soon", webhookSignature: Self.signature)) == .timestampInvalid)
        #expect(refusal(.init(webhookTimestamp: Self.timestamp, webhookSignature: Self.signature)) == .signatureHeadersIncomplete)
        #expect(refusal(.init(webhookID: "other", webhookTimestamp: Self.timestamp, webhookSignature: Self.signature)) == .signatureMismatch)
        // A failed signature with a good token: accepted by the token.
        var withToken = signed
        withToken.webhookID = "other"
        withToken.authorization = "Bearer t0ken"
        #expect(refusal(withToken) == nil)
        // The headers alone already say it, before the body is read.
        #expect(both.headRefusal(.init(webhookID: Self.id, webhookTimestamp: "soon", webhookSignature: Self.signature), now: Self.signedAt)
                == .timestampInvalid)
        let open = IngestAuthenticator(signingSecrets: [], bearerToken: nil, allowUnauthenticated: false)
        #expect(open.refusal(.init(), body: Self.body, now: Self.signedAt) == .credentialsMissing)
        // What was sent decides the reason, not what the account accepts: the reasons tell an
        // anonymous client nothing of an account's methods (found from outside).
        let signatureOnly = IngestAuthenticator(signingSecrets: [Secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", source: "test")],
                                                bearerToken: nil, allowUnauthenticated: false)
        let bearerOnly = IngestAuthenticator(signingSecrets: [], bearerToken: Secret("t0ken", source: "test"), allowUnauthenticated: false)
        for account in [both, signatureOnly, bearerOnly] {
            #expect(account.refusal(.init(authorization: "Bearer nope"), body: Self.body, now: Self.signedAt) == .tokenMismatch)
            #expect(account.refusal(.init(), body: Self.body, now: Self.signedAt) == .credentialsMissing)
            #expect(account.refusal(.init(webhookID: "other", webhookTimestamp: Self.timestamp, webhookSignature: Self.signature),
                                    body: Self.body, now: Self.signedAt) == .signatureMismatch)
            #expect(account.refusal(signed, body: Self.body, now: Self.signedAt.addingTimeInterval(360)) == .timestampOutOfTolerance)
        }
        #expect(bearerOnly.refusal(signed, body: Self.body, now: Self.signedAt) == .signatureMismatch)  // no secret to match
        #expect(signatureOnly.refusal(.init(authorization: "Bearer t0ken"), body: Self.body, now: Self.signedAt) == .tokenMismatch)
    }

    /// Found from outside: `allow_unauthenticated`, the only way to leave one account open, let
    /// every account with a secret take a webhook sent without a signature. It opens only an
    /// account with neither a secret nor a token now.
    @Test func allowUnauthenticatedDoesNotOpenAnAccountWithASecretOrAToken() {
        let signed = IngestAuthenticator(signingSecrets: [Secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", source: "test")],
                                         bearerToken: nil, allowUnauthenticated: true)
        #expect(!signed.mayBeAuthentic(.init(webhookID: Self.id, webhookTimestamp: Self.timestamp), now: Self.signedAt))
        #expect(!signed.isAuthentic(.init(webhookID: Self.id, webhookTimestamp: Self.timestamp), body: Self.body, now: Self.signedAt))
        #expect(signed.isAuthentic(.init(webhookID: Self.id, webhookTimestamp: Self.timestamp, webhookSignature: Self.signature),
                                   body: Self.body, now: Self.signedAt))
        let withToken = IngestAuthenticator(signingSecrets: [], bearerToken: Secret("t0ken", source: "test"), allowUnauthenticated: true)
        #expect(!withToken.isAuthentic(.init(), body: Self.body, now: Self.signedAt))
        #expect(withToken.isAuthentic(.init(authorization: "Bearer t0ken"), body: Self.body, now: Self.signedAt))
        let open = IngestAuthenticator(signingSecrets: [], bearerToken: nil, allowUnauthenticated: true)
        #expect(open.isAuthentic(.init(), body: Self.body, now: Self.signedAt))
    }

    @Test func rejectsTheWrongSecret() {
        let other = WebhookSecret(Secret("whsec_" + Data(repeating: 7, count: 24).base64EncodedString(), source: "test"))!
        let verifier = WebhookVerifier(secrets: [other])
        #expect(throws: WebhookVerifier.Failure.noMatchingSignature) {
            try verifier.verify(id: Self.id, timestamp: Self.timestamp, signatureHeader: Self.signature, body: Self.body, now: Self.signedAt)
        }
    }

    @Test func acceptsARotatedSecretListingOldAndNew() throws {
        let newSecret = WebhookSecret(Secret("whsec_" + Data(repeating: 9, count: 32).base64EncodedString(), source: "test"))!
        let verifier = WebhookVerifier(secrets: [newSecret, Self.secret])
        try verifier.verify(id: Self.id, timestamp: Self.timestamp, signatureHeader: Self.signature, body: Self.body, now: Self.signedAt)
        let signedWithNew = WebhookVerifier.sign(id: "msg_2", timestamp: 1_614_265_330, body: Self.body, secret: newSecret)
        try verifier.verify(id: "msg_2", timestamp: Self.timestamp, signatureHeader: signedWithNew, body: Self.body, now: Self.signedAt)
    }

    @Test(arguments: [-301.0, 301.0, 3600.0])
    func rejectsTimestampsOutsideTolerance(offset: Double) {
        let verifier = WebhookVerifier(secrets: [Self.secret])
        #expect(throws: WebhookVerifier.Failure.timestampOutOfTolerance) {
            try verifier.verify(id: Self.id, timestamp: Self.timestamp, signatureHeader: Self.signature, body: Self.body,
                                now: Self.signedAt.addingTimeInterval(offset))
        }
    }

    /// Whole seconds either way: 300.5 s after the timestamp is its 300th second, as 300 s
    /// before it is (the fraction once refused the first and took the second).
    @Test(arguments: [-300.0, -299.5, 299.0, 300.0, 300.5])
    func acceptsTimestampsInsideTolerance(offset: Double) throws {
        let verifier = WebhookVerifier(secrets: [Self.secret])
        try verifier.verify(id: Self.id, timestamp: Self.timestamp, signatureHeader: Self.signature, body: Self.body,
                            now: Self.signedAt.addingTimeInterval(offset))
    }

    @Test(arguments: ["-9223372036854775808", "9223372036854775807"])
    func rejectsTimestampsAtTheEndsOfTheIntegerRange(timestamp: String) {
        let verifier = WebhookVerifier(secrets: [Self.secret])
        #expect(throws: WebhookVerifier.Failure.timestampOutOfTolerance) {
            try verifier.verify(id: Self.id, timestamp: timestamp, signatureHeader: Self.signature, body: Self.body, now: Self.signedAt)
        }
    }

    @Test func rejectsATamperedBodyOrId() {
        let verifier = WebhookVerifier(secrets: [Self.secret])
        #expect(throws: WebhookVerifier.Failure.noMatchingSignature) {
            try verifier.verify(id: Self.id, timestamp: Self.timestamp, signatureHeader: Self.signature,
                                body: Data(#"{"test": 2432232315}"#.utf8), now: Self.signedAt)
        }
        #expect(throws: WebhookVerifier.Failure.noMatchingSignature) {
            try verifier.verify(id: "msg_other", timestamp: Self.timestamp, signatureHeader: Self.signature, body: Self.body, now: Self.signedAt)
        }
    }

    @Test func rejectsMissingHeaders() {
        let verifier = WebhookVerifier(secrets: [Self.secret])
        #expect(throws: WebhookVerifier.Failure.missingHeaders) {
            try verifier.verify(id: nil, timestamp: Self.timestamp, signatureHeader: Self.signature, body: Self.body, now: Self.signedAt)
        }
    }

    /// A header listing thousands of signatures (one valid among them) is verified with one HMAC
    /// per secret; a header of only wrong ones is refused.
    @Test func manySignaturesInOneHeader() throws {
        let secret = WebhookSecret(Secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", source: "t"))!
        let verifier = WebhookVerifier(secrets: [secret])
        let body = Data(repeating: 0x61, count: 1 << 20)
        let now = Date(timeIntervalSince1970: 1_700_000_000)
        let good = WebhookVerifier.sign(id: "msg_1", timestamp: 1_700_000_000, body: body, secret: secret)
        let junk = Array(repeating: "v1," + Data(repeating: 7, count: 32).base64EncodedString(), count: 2_000)
        try verifier.verify(id: "msg_1", timestamp: "1700000000", signatureHeader: (junk + [good]).joined(separator: " "), body: body, now: now)
        #expect(throws: WebhookVerifier.Failure.noMatchingSignature) {
            try verifier.verify(id: "msg_1", timestamp: "1700000000", signatureHeader: junk.joined(separator: " "), body: body, now: now)
        }
    }
}
