import Foundation

/// A secret value (API key, signing secret, token). Its descriptions are always redacted, so a
/// secret can never reach a log line, an error message or `check-config` output by accident.
public struct Secret: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
    /// The secret itself; read it only where it is used (signing, an Authorization header).
    public let value: String
    /// Where it came from, for operators ("file /run/credentials/x/comeet-secret", "env X").
    public let source: String

    public init(_ value: String, source: String) {
        self.value = value
        self.source = source
    }

    public var description: String { "<redacted from \(source)>" }
    public var debugDescription: String { description }
}
