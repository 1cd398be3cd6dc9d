import Foundation

/// A JSON value as a tree that keeps JSON's own types apart (a `true` is never a `1`).
///
/// Foundation's `JSONSerialization` folds booleans and numbers into `NSNumber` on Linux, which
/// makes "must be a string" checks unreliable. Built from `StrictJSONParser`'s `JSONDocument`
/// (`JSONValue.parse`, `parseAnswer`) for partner answers and tokens; ingest checks the
/// document itself and needs no tree. `Codable` only to encode a re-written body.
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
        var text = ""
        write(into: &text)
        return text
    }

    /// Appends the compact JSON text (object keys sorted) to `text`: one buffer for the whole
    /// document, not a String per value (the partner's Candidate summary is built per delivery).
    public func write(into text: inout String) {
        switch self {
        case .null: text += "null"
        case .bool(let value): text += value ? "true" : "false"
        case .number(let value):
            text += value == value.rounded() && abs(value) <= Self.largestExactInteger ? String(Int64(value)) : String(value)
        case .string(let value): ContractJSON.appendQuoted(value, to: &text)
        case .array(let elements):
            text += "["
            for (index, element) in elements.enumerated() {
                if index > 0 { text += "," }
                element.write(into: &text)
            }
            text += "]"
        case .object(let members):
            text += "{"
            for (index, key) in members.keys.sorted().enumerated() {
                if index > 0 { text += "," }
                ContractJSON.appendQuoted(key, to: &text)
                text += ":"
                members[key]!.write(into: &text)
            }
            text += "}"
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
            if value.rounded() == value, abs(value) <= Self.largestExactInteger { return String(Int64(value)) }
            return String(value)
        default: return nil
        }
    }

    /// 2^53: every integer up to it is a Double exactly, written without a fraction (up to
    /// 1e15 only, it was `1.234567890123456e+15` for a 16-digit id). Beyond it, partner answers
    /// keep the literal (`StrictJSONParser.parseAnswer`).
    static let largestExactInteger = 9_007_199_254_740_992.0
}
