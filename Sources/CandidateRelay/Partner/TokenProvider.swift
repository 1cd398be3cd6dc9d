import Foundation

/// Supplies the partner bearer token. Implementations cache and refresh; `invalidate` is called
/// after a 401 so the next `token()` gets a fresh one.
public protocol TokenProvider: Sendable {
    func token() async throws -> String
    func invalidate(_ token: String) async
    /// The fingerprint of the credentials it mints or fetches with
    /// (`AccountWiring.credentialsFingerprint`), nil when not given: a refusal is charged to
    /// the credentials that were refused, not to those a reload put in force meanwhile.
    var credentials: String? { get }
}

extension TokenProvider {
    public var credentials: String? { nil }
}

/// The token could not be obtained (OAuth endpoint down): a retryable failure, never `dead`.
public struct TokenUnavailable: Error, Sendable, Equatable, CustomStringConvertible {
    public let reason: String
    /// The token endpoint's `Retry-After`, when its answer had one: the account waits at least
    /// that long (capped at `backoff.max_seconds`, as every wait).
    public var retryAfter: Date?
    public init(reason: String, retryAfter: Date? = nil) {
        self.reason = reason
        self.retryAfter = retryAfter
    }
    public var description: String { "partner token unavailable: \(reason)" }
}
