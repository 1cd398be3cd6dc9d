import Crypto
import Foundation

/// Verifies the partner's self-minted bearer: a compact JWT, HS256, with `iss` = api-key and an
/// `exp` no more than ten minutes ahead. Pure, so each rule can be tested without a server.
///
/// Written by hand (no JWT library) because the simulator must check exactly the partner's
/// rules, including rejecting tokens whose lifetime is longer than the partner allows.
struct HS256TokenVerifier: Sendable {
    /// Why a token was refused; the message is safe to send back and to log.
    enum Failure: Error, Equatable, CustomStringConvertible {
        case malformed
        case unsupportedAlgorithm(String?)
        case badSignature
        case wrongIssuer
        case missingExpiry
        case expired
        case lifetimeTooLong

        var description: String {
            switch self {
            case .malformed: "malformed JWT"
            case .unsupportedAlgorithm(let alg): "unsupported JWT alg \(alg ?? "none"); HS256 required"
            case .badSignature: "invalid JWT signature"
            case .wrongIssuer: "JWT iss is not a known api-key"
            case .missingExpiry: "JWT exp claim missing or not a number"
            case .expired: "JWT expired"
            case .lifetimeTooLong: "JWT exp is more than 600 seconds ahead"
            }
        }
    }

    private struct Header: Decodable { var alg: String? }
    private struct Claims: Decodable {
        var iss: String?
        var exp: Double?
    }

    /// The partner caps token lifetime at ten minutes.
    static let maximumLifetime: TimeInterval = 600

    let apiKeys: Set<String>
    let key: SymmetricKey
    /// Tolerated clock difference, so a token minted at exactly now+600 on a slightly faster
    /// clock is not refused.
    let skew: TimeInterval

    init(apiKey: String, secret: String, skew: TimeInterval = 5) {
        self.init(apiKeys: [apiKey], secret: secret, skew: skew)
    }

    /// Several customers' api-keys, one partner secret.
    init(apiKeys: [String], secret: String, skew: TimeInterval = 5) {
        self.apiKeys = Set(apiKeys)
        self.key = SymmetricKey(data: Data(secret.utf8))
        self.skew = skew
    }

    /// Checks structure, algorithm, signature (in constant time), issuer and expiry, in that
    /// order, and returns the issuer (the rate-limit key) when all hold.
    func verify(_ token: String, now: Date) -> Result<String, Failure> {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3,
            let headerData = Base64URL.decode(parts[0]),
            let claimsData = Base64URL.decode(parts[1]),
            let signature = Base64URL.decode(parts[2])
        else { return .failure(.malformed) }
        guard let header = try? JSONDecoder().decode(Header.self, from: headerData) else {
            return .failure(.malformed)
        }
        guard header.alg == "HS256" else { return .failure(.unsupportedAlgorithm(header.alg)) }
        let signingInput = Data("\(parts[0]).\(parts[1])".utf8)
        guard HMAC<SHA256>.isValidAuthenticationCode(signature, authenticating: signingInput, using: key) else {
            return .failure(.badSignature)
        }
        // Claims are only decoded once the signature holds: nothing unauthenticated is trusted.
        guard let claims = try? JSONDecoder().decode(Claims.self, from: claimsData) else {
            return .failure(.malformed)
        }
        guard let issuer = claims.iss, apiKeys.contains(issuer) else { return .failure(.wrongIssuer) }
        guard let exp = claims.exp else { return .failure(.missingExpiry) }
        let nowSeconds = now.timeIntervalSince1970
        guard exp > nowSeconds else { return .failure(.expired) }
        guard exp <= nowSeconds + Self.maximumLifetime + skew else { return .failure(.lifetimeTooLong) }
        return .success(issuer)
    }
}

/// Unpadded base64url (RFC 4648 section 5), as used by JWT.
enum Base64URL {
    /// Decodes with or without padding; nil on any character outside the alphabet.
    static func decode<S: StringProtocol>(_ text: S) -> Data? {
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        let remainder = base64.count % 4
        if remainder == 1 { return nil }
        if remainder > 0 { base64 += String(repeating: "=", count: 4 - remainder) }
        return Data(base64Encoded: base64)
    }

    /// Encodes without padding.
    static func encode<D: DataProtocol>(_ bytes: D) -> String {
        Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}
