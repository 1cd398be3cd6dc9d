import Foundation

/// A parsed JSON document kept as the positions of its values in the body: one flat array of
/// nodes, no tree of Swift values. The ingest path checks a candidate through it and forwards
/// the body's own bytes, so it needs no `String` per value and no dictionary per object (the
/// tree's allocations, hashing and freeing were ~1.5 % of ingest's CPU, and a 20 MB body's
/// strings were copied into it: 2× the body's size while received, now 1.1×). `value()`
/// builds the `JSONValue` tree where one is wanted (partner answers, tests).
///
/// Nodes are in document order. A container's members follow it (an object's as key, value,
/// key, value...), and `next` is the node after its whole subtree.
public struct JSONDocument: Sendable {
    public enum Kind: UInt8, Sendable {
        case null, bool, number, string, array, object
    }

    /// 24 bytes: offsets and counts are 32-bit (a document is at most 2 GiB; `parseDocument`
    /// refuses a larger one). A partner's answer of 1 MB of `[0,0,...` is 500,000 nodes: 12 MB
    /// for the moment it is read, as its tree takes.
    struct Node: Sendable {
        var kind: Kind
        /// A string without escapes: `start..<end` is its text as it is.
        var plain: Bool
        /// A plain string of ASCII bytes only.
        var ascii: Bool
        /// A `true`.
        var isTrue: Bool
        private var start32: Int32
        private var end32: Int32
        private var count32: Int32 = 0
        private var next32: Int32
        private var decodedIndex32: Int32

        init(kind: Kind, plain: Bool = true, ascii: Bool = true, isTrue: Bool = false, start: Int, end: Int, next: Int = 0,
             decodedIndex: Int = -1) {
            self.kind = kind
            self.plain = plain
            self.ascii = ascii
            self.isTrue = isTrue
            start32 = Int32(start)
            end32 = Int32(end)
            next32 = Int32(next)
            decodedIndex32 = Int32(decodedIndex)
        }

        /// Strings: the text between the quotes. Other values: their bytes.
        var start: Int { Int(start32) }
        var end: Int {
            get { Int(end32) }
            set { end32 = Int32(newValue) }
        }
        /// Arrays: elements; objects: members.
        var count: Int {
            get { Int(count32) }
            set { count32 = Int32(newValue) }
        }
        /// The node after this value and everything in it.
        var next: Int {
            get { Int(next32) }
            set { next32 = Int32(newValue) }
        }
        /// A string with escapes: its decoded text in `decoded`.
        var decodedIndex: Int { Int(decodedIndex32) }
    }

    /// The largest document: node offsets are 32-bit.
    static let maxBytes = Int(Int32.max)

    let bytes: Data
    var nodes: [Node]
    /// The strings with escapes, decoded (a body seldom has many).
    var decoded: [String]

    /// The document's own value.
    public static let root = 0

    /// Runs `body` with the document's reader: one `Data.withUnsafeBytes` for all of it (one
    /// per value read cost more than the reading).
    func withReader<R>(_ body: (Reader) throws -> R) rethrows -> R {
        try bytes.withUnsafeBytes { try body(Reader(bytes: $0, nodes: nodes, decoded: decoded)) }
    }

    /// The text of the top-level object's member `name`, when it is a string.
    func rootString(_ name: StaticString) -> String? {
        withReader { $0.stringValue($0.member(JSONDocument.root, name)) }
    }

    /// The tree of the document's value (`Reader.value`).
    public func value(bigIntegersAsText: Bool = false) -> JSONValue {
        withReader { $0.value(JSONDocument.root, bigIntegersAsText: bigIntegersAsText) }
    }

    /// The document's values, read where they are in the body. Valid only inside `withReader`
    /// (it holds the body's pointer): internal, so that it cannot be kept outside the module.
    struct Reader {
        let bytes: UnsafeRawBufferPointer
        let nodes: [Node]
        let decoded: [String]

        func kind(_ node: Int) -> Kind { nodes[node].kind }

        /// An array's elements.
        func elements(_ node: Int) -> [Int] {
            var result: [Int] = []
            result.reserveCapacity(nodes[node].count)
            var child = node + 1
            for _ in 0..<nodes[node].count {
                result.append(child)
                child = nodes[child].next
            }
            return result
        }

        /// An object's members: the key's node and the value's.
        func members(_ node: Int) -> [(key: Int, value: Int)] {
            var result: [(key: Int, value: Int)] = []
            result.reserveCapacity(nodes[node].count)
            var child = node + 1
            for _ in 0..<nodes[node].count {
                result.append((child, child + 1))
                child = nodes[child + 1].next
            }
            return result
        }

        /// The value of `object`'s member `name` (nil when `object` is no object or has none).
        /// Names compare as Swift strings do, as a dictionary's keys did: a key written with
        /// escapes, or one canonically equivalent, is the same name.
        func member(_ object: Int, _ name: StaticString) -> Int? {
            guard nodes[object].kind == .object else { return nil }
            var child = object + 1
            for _ in 0..<nodes[object].count {
                if nodes[child].isNamed(name, in: bytes, decoded: decoded) { return child + 1 }
                child = nodes[child + 1].next
            }
            return nil
        }

        /// A string node's text.
        func string(_ node: Int) -> String {
            nodes[node].text(in: bytes, decoded: decoded)
        }

        /// The text of `node` when it is a string.
        func stringValue(_ node: Int?) -> String? {
            guard let node, nodes[node].kind == .string else { return nil }
            return string(node)
        }

        /// Runs `body` over a string node's UTF-8 bytes (its text as it is when it has no escape).
        func withUTF8<R>(_ node: Int, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
            let value = nodes[node]
            if value.plain { return try body(UnsafeRawBufferPointer(rebasing: bytes[value.start..<value.end])) }
            var text = decoded[value.decodedIndex]
            return try text.withUTF8 { try body(UnsafeRawBufferPointer($0)) }
        }

        /// A string node's length in UTF-8 bytes.
        func utf8Count(_ node: Int) -> Int {
            let value = nodes[node]
            return value.plain ? value.end - value.start : decoded[value.decodedIndex].utf8.count
        }

        /// A string node of ASCII bytes only (escaped ones are decoded and looked at).
        func isASCII(_ node: Int) -> Bool {
            let value = nodes[node]
            return value.plain ? value.ascii : decoded[value.decodedIndex].utf8.allSatisfy { $0 < 0x80 }
        }

        /// The tree of `node`'s value. `bigIntegersAsText`: integers a Double cannot hold exactly
        /// (2^53 and beyond) become their text (a partner's 64-bit id is otherwise rounded).
        func value(_ node: Int, bigIntegersAsText: Bool = false) -> JSONValue {
            let value = nodes[node]
            switch value.kind {
            case .null: return .null
            case .bool: return .bool(value.isTrue)
            case .number:
                let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[value.start..<value.end]), as: UTF8.self)
                let number = Double(text) ?? 0  // the parser let only finite numbers through
                if bigIntegersAsText, abs(number) >= JSONValue.largestExactInteger,
                   !text.utf8.contains(where: { $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "e") || $0 == UInt8(ascii: "E") }) {
                    return .string(text)
                }
                return .number(number)
            case .string: return .string(string(node))
            case .array: return .array(elements(node).map { self.value($0, bigIntegersAsText: bigIntegersAsText) })
            case .object:
                var members: [String: JSONValue] = [:]
                members.reserveCapacity(value.count)
                for (key, member) in self.members(node) {
                    members[string(key)] = self.value(member, bigIntegersAsText: bigIntegersAsText)
                }
                return .object(members)
            }
        }
    }
}

extension JSONDocument.Node {
    /// A string node's text (`decoded`: the document's decoded strings with escapes).
    func text(in bytes: UnsafeRawBufferPointer, decoded: [String]) -> String {
        plain ? String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<end]), as: UTF8.self) : decoded[decodedIndex]
    }

    /// A string node whose text is `name` as Swift compares strings (canonical equivalence, as
    /// a dictionary's keys compared): a plain ASCII one byte for byte, any other as a `String`.
    /// A text longer than three bytes per character of an ASCII name is never equal to it (each
    /// of its characters is one scalar, at most U+212A KELVIN SIGN's three bytes for "K"), and
    /// is not made into a `String` to be compared: a key of megabytes costs nothing per look-up.
    func isNamed(_ name: StaticString, in bytes: UnsafeRawBufferPointer, decoded: [String]) -> Bool {
        let count = name.utf8CodeUnitCount
        if plain && ascii {
            return end - start == count && (count == 0 || memcmp(bytes.baseAddress! + start, name.utf8Start, count) == 0)
        }
        let length = plain ? end - start : decoded[decodedIndex].utf8.count
        if name.isASCII, length > 3 * count { return false }
        return text(in: bytes, decoded: decoded) == name.description
    }
}
