import Foundation

/// Decides whether a `POST /candidates` bearer is acceptable and which rate-limit bucket it
/// draws from: a self-minted partner JWT (`key:<api-key>`) or an access token issued by the
/// simulator's OAuth endpoint (`oauth:<client-id>`).
struct BearerAuthenticator: Sendable {
    let verifier: HS256TokenVerifier
    let store: SimulatorStore

    /// The decision for one bearer.
    enum Outcome: Equatable {
        /// Accepted; `bucket` is the rate-limit key.
        case accepted(bucket: String)
        /// Refused with 401 `unauthorized` and this message.
        case refused(String)
    }

    /// Decides on one `Authorization` header. Fault checks come before verification so
    /// "token expired early" hits even a perfectly valid token.
    func authenticate(authorization: String?, faults: SimulatorFaults, now: Date) -> Outcome {
        guard let authorization else { return .refused("Missing Authorization header") }
        let prefix = "bearer "
        guard authorization.count > prefix.count, authorization.lowercased().hasPrefix(prefix) else {
            return .refused("Authorization must be a Bearer token")
        }
        let token = authorization.dropFirst(prefix.count).trimmingCharacters(in: .whitespaces)
        guard !token.isEmpty else { return .refused("Empty bearer token") }
        if faults.rejectAllTokens {
            return .refused("Token rejected (simulated fault)")
        }
        let age = store.ageOfToken(token, now: now)
        if let maxAge = faults.tokenMaxAgeSeconds, age > maxAge {
            return .refused("Token expired (simulated early expiry)")
        }
        // Partner JWTs always have three dot-separated parts; issued access tokens have none.
        if token.contains(".") {
            switch verifier.verify(token, now: now) {
            case .success(let issuer): return .accepted(bucket: "key:\(issuer)")
            case .failure(let failure): return .refused(failure.description)
            }
        }
        guard let client = store.clientForAccessToken(token, now: now) else {
            return .refused("Unknown or expired access token")
        }
        return .accepted(bucket: "oauth:\(client)")
    }
}
