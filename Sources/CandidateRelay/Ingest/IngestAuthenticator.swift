import Crypto
import Foundation

/// Decides whether an inbound request is authentic: Standard Webhooks signature, static bearer
/// token, or explicitly nothing. Replaced as a whole on SIGHUP (secret rotation).
public struct IngestAuthenticator: Sendable {
    let verifier: WebhookVerifier?
    /// One per token the file lists (several while a token is rotated).
    let bearerDigests: [SHA256Digest]
    let allowUnauthenticated: Bool

    public init(configuration: IngestConfiguration) {
        self.init(signingSecrets: configuration.signingSecrets, bearerToken: configuration.bearerToken,
                  allowUnauthenticated: configuration.allowUnauthenticated)
    }

    /// One account's authenticator: only its own secrets and token (CONTRACT section 8).
    public init(signingSecrets: [Secret], bearerToken: Secret?, allowUnauthenticated: Bool) {
        let secrets = signingSecrets.compactMap(WebhookSecret.init)
        verifier = secrets.isEmpty ? nil : WebhookVerifier(secrets: secrets)
        bearerDigests = bearerToken.map { Self.bearerTokens(in: $0.value).map { SHA256.hash(data: Data($0.utf8)) } } ?? []
        self.allowUnauthenticated = allowUnauthenticated
    }

    /// Whether reads (`GET /v1/candidates...`) need the bearer token.
    var requiresBearerForReads: Bool { !bearerDigests.isEmpty }

    /// The tokens a bearer token file (or variable) holds: one per line, blank lines and the
    /// spaces around a token left out. Several at once let a token be rotated without a 401:
    /// the new one added, the senders moved to it, the old one removed, a reload after each
    /// step, as for signing secrets (found from outside: a file of two tokens was refused, so a
    /// rotation refused every sender for as long as it took to move them). Only `\n` ends a
    /// line (and a `\r` before it): any other control character or line separator stays in its
    /// token, which no header can carry, and the config refuses it.
    public static func bearerTokens(in text: String) -> [String] {
        // By scalars: "\r\n" is one `Character`, which a split on "\n" would not cut.
        text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: true).map { line in
            var token = String.UnicodeScalarView(line)
            if token.last == "\r" { token.removeLast() }
            return String(token).trimmingCharacters(in: .whitespaces)
        }.filter { !$0.isEmpty }
    }

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
        refusal(headers, body: body, now: now) == nil
    }

    /// Why no configured method accepts the request; nil when one does.
    func refusal(_ headers: Headers, body: some DataProtocol, now: Date) -> AuthRefusal? {
        judge(headers) { verifier in
            do throws(WebhookVerifier.Failure) {
                try verifier.verify(id: headers.webhookID, timestamp: headers.webhookTimestamp,
                                    signatureHeader: headers.webhookSignature, body: body, now: now)
                return nil
            } catch { return error }
        }
    }

    /// False when no body can make the request authentic: decided from its headers, before its
    /// body is read (`WebhookVerifier.precheck`; the bearer token is checked whole).
    func mayBeAuthentic(_ headers: Headers, now: Date) -> Bool {
        headRefusal(headers, now: now) == nil
    }

    /// Why no body can make the request authentic, from its headers alone; nil when one may.
    func headRefusal(_ headers: Headers, now: Date) -> AuthRefusal? {
        judge(headers) { verifier in
            do throws(WebhookVerifier.Failure) {
                _ = try verifier.precheck(id: headers.webhookID, timestamp: headers.webhookTimestamp,
                                          signatureHeader: headers.webhookSignature, now: now)
                return nil
            } catch { return error }
        }
    }

    /// The methods in order, the signature judged by `signature` (the whole check, or what the
    /// headers alone decide: nil when it passes). The refusal names the method the request
    /// tried: the signature's failure when it sent one, else the token's.
    /// `allowUnauthenticated` opens only an account with neither a secret nor a token: one that
    /// has either is authenticated by it alone (CONTRACT section 8). Found from outside: the key,
    /// the only way to leave one account open, also let every signed account take a webhook
    /// sent without a signature, while `check-config` showed their secrets.
    ///
    /// The refusal depends on what the request sent, not on what its account accepts (found from
    /// outside: a bearer token sent to an account with none was told "no bearer token", and the
    /// reasons told an anonymous client which methods each account has): a signature is checked
    /// against no secret when the account has none, and fails as a wrong one does.
    private func judge(_ headers: Headers, signature: (WebhookVerifier) -> WebhookVerifier.Failure?) -> AuthRefusal? {
        if verifier == nil && bearerDigests.isEmpty { return allowUnauthenticated ? nil : .credentialsMissing }
        var signatureRefusal: AuthRefusal?
        if headers.webhookSignature != nil {
            guard let failure = signature(verifier ?? Self.noSecret) else { return nil }
            signatureRefusal = AuthRefusal(failure)
        }
        if bearerMatches(headers.authorization) { return nil }
        if let signatureRefusal { return signatureRefusal }
        return headers.authorization != nil ? .tokenMismatch : .credentialsMissing
    }

    /// An account without signing secrets: its checks of the headers and timestamp are the
    /// spec's, and no signature matches.
    private static let noSecret = WebhookVerifier(secrets: [])

    /// Constant-time comparison of digests, so the token's length and prefix leak nothing; every
    /// token is compared, so neither does which one matched.
    func bearerMatches(_ authorization: String?) -> Bool {
        guard !bearerDigests.isEmpty, let authorization, authorization.lowercased().hasPrefix("bearer ") else { return false }
        let presented = SHA256.hash(data: Data(authorization.dropFirst(7).trimmingCharacters(in: .whitespaces).utf8))
        var matched = false
        for digest in bearerDigests {
            var difference: UInt8 = 0
            for (a, b) in zip(presented, digest) { difference |= a ^ b }
            matched = matched || difference == 0
        }
        return matched
    }
}

/// Why a webhook was refused with 401, said to its sender and in the operator's log (found from
/// outside: a sender's clock six minutes off, or a timestamp in milliseconds, got the same
/// answer as a wrong secret, and the log said no more). Nothing here is secret: the tolerance
/// and the headers are the Standard Webhooks spec's, and no secret or token is compared aloud.
public enum AuthRefusal: String, Sendable {
    /// Neither a signature (`webhook-signature`) nor a bearer token.
    case credentialsMissing = "credentials_missing"
    /// A signature without its `webhook-id` or `webhook-timestamp`.
    case signatureHeadersIncomplete = "signature_headers_incomplete"
    case timestampInvalid = "timestamp_invalid"
    case timestampOutOfTolerance = "timestamp_out_of_tolerance"
    case signatureMismatch = "signature_mismatch"
    case tokenMismatch = "token_mismatch"

    init(_ failure: WebhookVerifier.Failure) {
        switch failure {
        case .missingHeaders: self = .signatureHeadersIncomplete
        case .invalidTimestamp: self = .timestampInvalid
        case .timestampOutOfTolerance: self = .timestampOutOfTolerance
        case .noMatchingSignature: self = .signatureMismatch
        }
    }

    /// The header it concerns and the problem, as the answer's `details` say it.
    var detail: [String: String] {
        switch self {
        case .credentialsMissing: ["field": "webhook-signature, authorization", "problem": "missing"]
        case .signatureHeadersIncomplete: ["field": "webhook-id, webhook-timestamp", "problem": "missing"]
        case .timestampInvalid: ["field": "webhook-timestamp", "problem": "invalid"]
        case .timestampOutOfTolerance: ["field": "webhook-timestamp", "problem": "out_of_tolerance"]
        case .signatureMismatch: ["field": "webhook-signature", "problem": "no_match"]
        case .tokenMismatch: ["field": "authorization", "problem": "no_match"]
        }
    }

    var message: String {
        switch self {
        case .credentialsMissing: "no webhook signature (webhook-id, webhook-timestamp, webhook-signature) and no bearer token"
        case .signatureHeadersIncomplete: "webhook-signature needs webhook-id and webhook-timestamp"
        case .timestampInvalid: "webhook-timestamp must be whole seconds since 1970 (Unix time)"
        case .timestampOutOfTolerance:
            "webhook-timestamp is more than 300 s from the relay's clock: check the sender's clock, and that the timestamp is in seconds"
        case .signatureMismatch: "no webhook signature matches (the signing secret, or the bytes signed: id.timestamp.body)"
        case .tokenMismatch: "the bearer token does not match"
        }
    }
}
