import Foundation

/// A parsed JSON document that keeps JSON's own types apart (a `true` is never a `1`).
///
/// Foundation's `JSONSerialization` folds booleans and numbers into `NSNumber` on Linux, which
/// makes "must be a string" checks unreliable. Parsed by `StrictJSONParser`; `Codable` only to
/// encode a re-written body.
public enum JSONValue: Sendable, Equatable, Codable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .number(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    /// Parses a JSON document strictly (`StrictJSONParser`); throws on anything but plain UTF-8
    /// JSON without repeated keys. `allowBOM` for the partner's answers only.
    public static func parse(_ data: Data, allowBOM: Bool = false) throws -> JSONValue {
        try StrictJSONParser.parse(data, allowBOM: allowBOM)
    }

    /// Compact JSON text, object keys sorted (written directly: no encoder on the delivery path).
    public var jsonText: String {
        switch self {
        case .null: return "null"
        case .bool(let value): return value ? "true" : "false"
        case .number(let value):
            return value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
        case .string(let value): return ContractJSON.quoted(value)
        case .array(let elements): return "[" + elements.map(\.jsonText).joined(separator: ",") + "]"
        case .object(let members):
            return "{" + members.keys.sorted().map { ContractJSON.quoted($0) + ":" + members[$0]!.jsonText }.joined(separator: ",") + "}"
        }
    }

    public subscript(key: String) -> JSONValue? {
        if case .object(let members) = self { return members[key] }
        return nil
    }

    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    /// A JSON string or number rendered as a string (the partner sends `candidate_uid` as either).
    public var identifierString: String? {
        switch self {
        case .string(let value): return value
        case .number(let value):
            if value.rounded() == value, abs(value) < 1e15 { return String(Int64(value)) }
            return String(value)
        default: return nil
        }
    }
}
