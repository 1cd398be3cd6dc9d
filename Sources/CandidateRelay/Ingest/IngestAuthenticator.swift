import Crypto
import Foundation

/// Decides whether an inbound request is authentic: Standard Webhooks signature, static bearer
/// token, or explicitly nothing. Replaced as a whole on SIGHUP (secret rotation).
public struct IngestAuthenticator: Sendable {
    let verifier: WebhookVerifier?
    let bearerDigest: SHA256Digest?
    let allowUnauthenticated: Bool

    public init(configuration: IngestConfiguration) {
        self.init(signingSecrets: configuration.signingSecrets, bearerToken: configuration.bearerToken,
                  allowUnauthenticated: configuration.allowUnauthenticated)
    }

    /// One account's authenticator: only its own secrets and token (CONTRACT section 8).
    public init(signingSecrets: [Secret], bearerToken: Secret?, allowUnauthenticated: Bool) {
        let secrets = signingSecrets.compactMap(WebhookSecret.init)
        verifier = secrets.isEmpty ? nil : WebhookVerifier(secrets: secrets)
        bearerDigest = bearerToken.map { SHA256.hash(data: Data($0.value.utf8)) }
        self.allowUnauthenticated = allowUnauthenticated
    }

    /// Whether reads (`GET /v1/candidates...`) need the bearer token.
    var requiresBearerForReads: Bool { bearerDigest != nil }

    /// Inbound headers the check needs.
    public struct Headers: Sendable {
        public var webhookID: String?
        public var webhookTimestamp: String?
        public var webhookSignature: String?
        public var authorization: String?
        public init(webhookID: String? = nil, webhookTimestamp: String? = nil, webhookSignature: String? = nil, authorization: String? = nil) {
            self.webhookID = webhookID
            self.webhookTimestamp = webhookTimestamp
            self.webhookSignature = webhookSignature
            self.authorization = authorization
        }
    }

    /// True when any configured method accepts the request.
    public func isAuthentic(_ headers: Headers, body: some DataProtocol, now: Date) -> Bool {
        accepts(headers) { verifier in
            (try? verifier.verify(id: headers.webhookID, timestamp: headers.webhookTimestamp,
                                  signatureHeader: headers.webhookSignature, body: body, now: now)) != nil
        }
    }

    /// False when no body can make the request authentic: decided from its headers, before its
    /// body is read (`WebhookVerifier.precheck`; the bearer token is checked whole).
    func mayBeAuthentic(_ headers: Headers, now: Date) -> Bool {
        accepts(headers) { verifier in
            (try? verifier.precheck(id: headers.webhookID, timestamp: headers.webhookTimestamp,
                                    signatureHeader: headers.webhookSignature, now: now)) != nil
        }
    }

    /// The methods in order, the signature judged by `signature` (the whole check, or what the
    /// headers alone decide).
    /// `allowUnauthenticated` opens only an account with neither a secret nor a token: one that
    /// has either is authenticated by it alone (CONTRACT section 8). Found from outside: the key,
    /// the only way to leave one account open, also let every signed account take a webhook
    /// sent without a signature, while `check-config` showed their secrets.
    private func accepts(_ headers: Headers, signature: (WebhookVerifier) -> Bool) -> Bool {
        if verifier == nil && bearerDigest == nil { return allowUnauthenticated }
        if let verifier, headers.webhookSignature != nil, signature(verifier) { return true }
        return bearerMatches(headers.authorization)
    }

    /// Constant-time comparison of digests, so the token's length and prefix leak nothing.
    func bearerMatches(_ authorization: String?) -> Bool {
        guard let bearerDigest, let authorization, authorization.lowercased().hasPrefix("bearer ") else { return false }
        let presented = SHA256.hash(data: Data(authorization.dropFirst(7).trimmingCharacters(in: .whitespaces).utf8))
        var difference: UInt8 = 0
        for (a, b) in zip(presented, bearerDigest) { difference |= a ^ b }
        return difference == 0
    }
}
