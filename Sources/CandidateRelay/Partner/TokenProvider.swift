import Foundation

/// Supplies the partner bearer token. Implementations cache and refresh; `invalidate` is called
/// after a 401 so the next `token()` gets a fresh one.
public protocol TokenProvider: Sendable {
    func token() async throws -> String
    func invalidate(_ token: String) async
}

/// The token could not be obtained (OAuth endpoint down): a retryable failure, never `dead`.
public struct TokenUnavailable: Error, Sendable, CustomStringConvertible {
    public let reason: String
    public var description: String { "partner token unavailable: \(reason)" }
}
