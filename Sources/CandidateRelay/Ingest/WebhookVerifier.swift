import Crypto
import Foundation

/// A Standard Webhooks signing secret: `whsec_` followed by the base64 of the HMAC key.
public struct WebhookSecret: Sendable {
    let key: SymmetricKey

    public init?(_ secret: Secret) {
        let text = secret.value.hasPrefix("whsec_") ? String(secret.value.dropFirst(6)) : secret.value
        guard let bytes = Data(base64Encoded: text), !bytes.isEmpty else { return nil }
        key = SymmetricKey(data: bytes)
    }
}

/// Verifies Standard Webhooks signatures (https://www.standardwebhooks.com):
/// `v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>`, several space-separated signatures per
/// header, any configured secret may match (rotation), ±`tolerance` seconds on the timestamp.
/// Pure: the current time is an argument.
public struct WebhookVerifier: Sendable {
    public enum Failure: Error, Equatable, Sendable {
        case missingHeaders, invalidTimestamp, timestampOutOfTolerance, noMatchingSignature
    }

    let secrets: [WebhookSecret]
    let tolerance: TimeInterval

    public init(secrets: [WebhookSecret], tolerance: TimeInterval = 300) {
        self.secrets = secrets
        self.tolerance = tolerance
    }

    public func verify(id: String?, timestamp: String?, signatureHeader: String?, body: some DataProtocol, now: Date) throws(Failure) {
        let candidates = try precheck(id: id, timestamp: timestamp, signatureHeader: signatureHeader, now: now)
        let prefix = Data("\(id ?? "").\(timestamp ?? "").".utf8)
        // One HMAC per configured secret, however many signatures the header lists: a header of
        // thousands of `v1,` entries over a 25 MB body must not cost thousands of passes over
        // the body. Every pair is compared (no early exit), each in constant time.
        var matched = false
        for secret in secrets {
            // Streamed: the signed text is never assembled (no copy of a large body).
            var hmac = HMAC<SHA256>(key: secret.key)
            hmac.update(data: prefix)
            hmac.update(data: body)
            let expected = Data(hmac.finalize())
            for signature in candidates where Self.constantTimeEqual(signature, expected) {
                matched = true
            }
        }
        if !matched { throw .noMatchingSignature }
    }

    /// What the headers alone decide, before the body is read: the id, a timestamp within the
    /// tolerance, and at least one `v1,` signature of an HMAC-SHA256's length. Returns those
    /// signatures. A request that fails this is refused (401) before its body: an outsider's
    /// bodies were held in memory whole (25 MB each) only to fail the signature at their end.
    func precheck(id: String?, timestamp: String?, signatureHeader: String?, now: Date) throws(Failure) -> [Data] {
        guard let id, !id.isEmpty, let timestamp, let signatureHeader else { throw .missingHeaders }
        guard let seconds = Int64(timestamp) else { throw .invalidTimestamp }
        // In whole seconds, as the sender's clock writes them: compared with a fractional `now`,
        // a timestamp `tolerance` seconds old failed while one as far ahead passed.
        let nowSeconds = Int64(now.timeIntervalSince1970.rounded(.down))
        let (skew, overflow) = nowSeconds.subtractingReportingOverflow(seconds)
        guard !overflow, Double(skew.magnitude) <= tolerance else { throw .timestampOutOfTolerance }
        let candidates = signatureHeader.split(separator: " ").compactMap { entry -> Data? in
            let parts = entry.split(separator: ",", maxSplits: 1)
            guard parts.count == 2, parts[0] == "v1", let signature = Data(base64Encoded: String(parts[1])),
                  signature.count == SHA256.byteCount else { return nil }
            return signature
        }
        if candidates.isEmpty { throw .noMatchingSignature }
        return candidates
    }

    /// Equal length and bytes, in time that depends on the length only.
    static func constantTimeEqual(_ a: Data, _ b: Data) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for (x, y) in zip(a, b) { difference |= x ^ y }
        return difference == 0
    }

    /// Signs like a Standard Webhooks sender does; used by tests, the demo's curl line and tools.
    public static func sign(id: String, timestamp: Int64, body: some DataProtocol, secret: WebhookSecret) -> String {
        var signed = Data("\(id).\(timestamp).".utf8)
        signed.append(contentsOf: body)
        let mac = HMAC<SHA256>.authenticationCode(for: signed, using: secret.key)
        return "v1," + Data(mac).base64EncodedString()
    }
}
