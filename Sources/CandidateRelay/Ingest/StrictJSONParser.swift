import Foundation

/// Why a body is not the plain JSON the relay forwards byte for byte.
public enum StrictJSONError: Error, Sendable, Equatable {
    case byteOrderMark
    case invalidUTF8(offset: Int)
    case unexpected(offset: Int)
    case duplicateKey(offset: Int)
    case tooDeep(limit: Int)
    case numberOutOfRange(offset: Int)
    case loneSurrogate(offset: Int)
    case trailingData(offset: Int)
    /// More values (objects, arrays, strings, numbers, literals) than a document may hold;
    /// `inObject`: the document is an object (false: it is no object at all).
    case tooManyValues(limit: Int, inObject: Bool)
}

/// A parsed ingest document, and what the relay needs to know of its bytes.
public struct ParsedDocument: Sendable {
    public var document: JSONDocument
    /// False when no string holds a control character (the validator's scan is skipped).
    public var mayHaveControlCharacters: Bool
    /// Where the value of the top-level `partner_candidate_id` member sits in the body, so that
    /// a `null` one can be replaced there without re-encoding the rest.
    public var partnerCandidateIDRange: Range<Int>?
}

/// RFC 8259 JSON, strictly: UTF-8 only (no BOM, no UTF-16/32, no overlong forms, no encoded
/// surrogates), no repeated object key, no raw control character inside a string, bounded depth.
///
/// The relay validates a body and then forwards its exact bytes, so the parser must see what
/// every other parser sees: with a repeated key one decoder keeps the first value and another
/// the last, and a BOM or UTF-16 body is read by some partners and refused by others. Anything
/// ambiguous is refused here. Foundation's decoder accepts all three, hence this parser.
public struct StrictJSONParser {
    /// Candidate documents nest three levels; 64 leaves room and keeps recursion shallow.
    public static let maxDepth = 64

    private let bytes: UnsafeRawBufferPointer
    private var index = 0
    private var scratch: [UInt8] = []
    private var nodes: [JSONDocument.Node] = []
    private var decoded: [String] = []
    /// Set when a string holds U+0000–U+001F or U+007F (raw DEL, or an escape), so that the
    /// validator's scan for them can be skipped for the common body that has none.
    private var sawControlCharacter = false
    /// Values left before `tooManyValues` (nil: no limit).
    private var valuesLeft: Int?
    private let valueLimit: Int?
    private var partnerCandidateIDRange: Range<Int>?
    /// Whether the document's top-level value is an object (for `tooManyValues`).
    private var documentIsObject = false

    private init(bytes: UnsafeRawBufferPointer, maxValues: Int? = nil) {
        self.bytes = bytes
        self.valuesLeft = maxValues
        self.valueLimit = maxValues
        // A candidate is a few dozen nodes (keys count too): grown once, not five times.
        nodes.reserveCapacity(min(64, bytes.count / 2 + 1))
    }

    /// The most values an ingest document may hold. A candidate has a few dozen (a few hundred
    /// with many custom fields or links); a body of 25 MB of `[1,1,1,...` is twelve million,
    /// each a node (a tree node, when this limit came) and then a 422 detail: about 1 GB of
    /// memory and seconds of an event loop for one small request (found from outside), where
    /// the limit answers at once.
    public static let maxDocumentValues = 10_000

    /// Parses one JSON document. `allowBOM` skips a leading UTF-8 BOM (for partner answers;
    /// never for ingest, where the forwarded bytes must be exactly what was validated).
    public static func parse(_ data: Data, allowBOM: Bool = false) throws(StrictJSONError) -> JSONValue {
        try parseDocument(data, allowBOM: allowBOM).document.value()
    }

    /// A partner's answer: a BOM allowed, and integers beyond a Double's exact range kept as
    /// their text (`.string`), so that an identifier is never rounded.
    public static func parseAnswer(_ data: Data) throws(StrictJSONError) -> JSONValue {
        try parseDocument(data, allowBOM: true).document.value(bigIntegersAsText: true)
    }

    /// `parse`, whether any string may hold a control character (false: none does), and where
    /// the top-level `partner_candidate_id`'s value is. `maxValues`: refuse a document of more
    /// values (`tooManyValues`).
    public static func parseDocument(_ data: Data, allowBOM: Bool = false, maxValues: Int? = nil) throws(StrictJSONError) -> ParsedDocument {
        // Never for the relay's own inputs (bodies are at most 1 GB, answers 1 MB): nodes hold
        // 32-bit offsets.
        guard data.count <= JSONDocument.maxBytes else { throw .unexpected(offset: JSONDocument.maxBytes) }
        let result: Result<ParsedDocument, StrictJSONError> = data.withUnsafeBytes { raw in
            var parser = StrictJSONParser(bytes: raw, maxValues: maxValues)
            do throws(StrictJSONError) {
                try parser.document(allowBOM: allowBOM)
                let document = JSONDocument(bytes: data, nodes: parser.nodes, decoded: parser.decoded)
                return .success(ParsedDocument(document: document, mayHaveControlCharacters: parser.sawControlCharacter,
                                               partnerCandidateIDRange: parser.partnerCandidateIDRange))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    private mutating func document(allowBOM: Bool) throws(StrictJSONError) {
        if bytes.count >= 3, bytes[0] == 0xEF, bytes[1] == 0xBB, bytes[2] == 0xBF {
            guard allowBOM else { throw .byteOrderMark }
            index = 3
        }
        skipWhitespace()
        documentIsObject = peek() == UInt8(ascii: "{")
        try value(depth: 0)
        skipWhitespace()
        guard index == bytes.count else { throw .trailingData(offset: index) }
    }

    private mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0A, 0x0D: index += 1
            default: return
            }
        }
    }

    private func peek() -> UInt8? { index < bytes.count ? bytes[index] : nil }

    /// Parses one value into `nodes` (its node, then those of its contents).
    private mutating func value(depth: Int) throws(StrictJSONError) {
        guard let byte = peek() else { throw .unexpected(offset: index) }
        if let left = valuesLeft {
            guard left > 0 else { throw .tooManyValues(limit: valueLimit ?? 0, inObject: documentIsObject) }
            valuesLeft = left - 1
        }
        let start = index
        switch byte {
        case UInt8(ascii: "{"): try object(depth: depth + 1)
        case UInt8(ascii: "["): try array(depth: depth + 1)
        case UInt8(ascii: "\""): try string()
        case UInt8(ascii: "t"): try literal("true"); append(.bool, from: start, isTrue: true)
        case UInt8(ascii: "f"): try literal("false"); append(.bool, from: start)
        case UInt8(ascii: "n"): try literal("null"); append(.null, from: start)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            try number()
            append(.number, from: start)
        default: throw .unexpected(offset: index)
        }
    }

    /// A scalar's node, from `start` to the current index.
    private mutating func append(_ kind: JSONDocument.Kind, from start: Int, isTrue: Bool = false) {
        nodes.append(JSONDocument.Node(kind: kind, isTrue: isTrue, start: start, end: index, next: nodes.count + 1))
    }

    private mutating func literal(_ word: StaticString) throws(StrictJSONError) {
        let count = word.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw .unexpected(offset: index) }
        for offset in 0..<count where bytes[index + offset] != word.utf8Start[offset] {
            throw .unexpected(offset: index + offset)
        }
        index += count
    }

    /// A container's node, before its contents; `close` fills in its count and end.
    private mutating func open(_ kind: JSONDocument.Kind) -> Int {
        nodes.append(JSONDocument.Node(kind: kind, start: index, end: index))
        return nodes.count - 1
    }

    private mutating func close(_ node: Int, count: Int) {
        nodes[node].end = index
        nodes[node].count = count
        nodes[node].next = nodes.count
    }

    private mutating func object(depth: Int) throws(StrictJSONError) {
        guard depth <= Self.maxDepth else { throw .tooDeep(limit: Self.maxDepth) }
        let node = open(.object)
        index += 1
        var keys = ObjectKeys(object: node)
        skipWhitespace()
        if peek() == UInt8(ascii: "}") { index += 1; close(node, count: 0); return }
        while true {
            guard peek() == UInt8(ascii: "\"") else { throw .unexpected(offset: index) }
            let keyOffset = index
            try string()
            let key = nodes.count - 1
            skipWhitespace()
            guard peek() == UInt8(ascii: ":") else { throw .unexpected(offset: index) }
            index += 1
            skipWhitespace()
            let valueStart = index
            try value(depth: depth)
            if depth == 1, nodes[key].isNamed("partner_candidate_id", in: bytes, decoded: decoded) {
                partnerCandidateIDRange = valueStart..<index
            }
            // After the value, as ever: an error inside it wins over the repeated key.
            // Keys compare as Swift strings (canonical equivalence), the strictest reading: two
            // spellings of one name are a duplicate for some consumer.
            guard keys.insert(key, of: self) else { throw .duplicateKey(offset: keyOffset) }
            skipWhitespace()
            switch peek() {
            case UInt8(ascii: ",")?: index += 1; skipWhitespace()
            case UInt8(ascii: "}")?: index += 1; close(node, count: keys.count); return
            default: throw .unexpected(offset: index)
            }
        }
    }

    /// An object's keys so far, to find a repeated one: the earlier keys are the object's
    /// members already in `nodes` (from the object's node, each member's value's `next`). Plain
    /// ASCII keys (the usual object) are compared byte for byte, which for ASCII is what Swift's
    /// string equality is; once a key holds an escape or a non-ASCII byte, or the object is
    /// large, every key is compared as a Swift string (a set), as a dictionary of them did.
    private struct ObjectKeys {
        let object: Int
        private(set) var count = 0
        private var strings: Set<String>?
        static let linearLimit = 32

        init(object: Int) {
            self.object = object
        }

        mutating func insert(_ key: Int, of parser: StrictJSONParser) -> Bool {
            defer { count += 1 }
            let node = parser.nodes[key]
            func text(_ key: Int) -> String { parser.nodes[key].text(in: parser.bytes, decoded: parser.decoded) }
            if strings == nil {
                var earlier = object + 1
                var earlierTexts: [String] = []
                let linear = node.plain && node.ascii && count < Self.linearLimit
                for _ in 0..<count {
                    let other = parser.nodes[earlier]
                    if linear {
                        let length = node.end - node.start
                        if other.end - other.start == length,
                           length == 0 || memcmp(parser.bytes.baseAddress! + node.start, parser.bytes.baseAddress! + other.start, length) == 0 {
                            return false
                        }
                    } else {
                        earlierTexts.append(text(earlier))
                    }
                    earlier = parser.nodes[earlier + 1].next
                }
                if linear { return true }
                strings = Set(earlierTexts)
            }
            return strings!.insert(text(key)).inserted
        }
    }

    private mutating func array(depth: Int) throws(StrictJSONError) {
        guard depth <= Self.maxDepth else { throw .tooDeep(limit: Self.maxDepth) }
        let node = open(.array)
        index += 1
        var count = 0
        skipWhitespace()
        if peek() == UInt8(ascii: "]") { index += 1; close(node, count: 0); return }
        while true {
            try value(depth: depth)
            count += 1
            skipWhitespace()
            switch peek() {
            case UInt8(ascii: ",")?: index += 1; skipWhitespace()
            case UInt8(ascii: "]")?: index += 1; close(node, count: count); return
            default: throw .unexpected(offset: index)
            }
        }
    }

    /// A string's node: raw bytes must be valid UTF-8 without control characters; escapes are
    /// decoded (into `decoded`), `\u` surrogates only as a high-low pair.
    private mutating func string() throws(StrictJSONError) {
        let start = index
        index += 1
        let contentStart = index
        var escaped = false
        var ascii = true
        // Fast path: find the closing quote; most strings have no escape. Eight bytes at a time
        // while none of them needs a look (a candidate's note is most of its body), then those
        // eight one by one. Bytes of 0x80 and above are skipped too: they are never a quote or
        // a backslash in UTF-8, and a non-ASCII string is validated whole below.
        scan: while index < bytes.count {
            if index + 8 <= bytes.count {
                switch Self.classify(bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self)) {
                case .ascii:
                    index += 8
                    continue
                case .nonASCII:
                    ascii = false
                    index += 8
                    continue
                case .special:
                    break
                }
            }
            let end = min(index + 8, bytes.count)
            while index < end {
                let byte = bytes[index]
                if byte == UInt8(ascii: "\"") { break scan }
                if byte == UInt8(ascii: "\\") { escaped = true; break scan }
                if byte < 0x20 { throw .unexpected(offset: index) }
                if byte >= 0x7F {
                    if byte == 0x7F { sawControlCharacter = true } else { ascii = false }
                }
                index += 1
            }
        }
        guard index < bytes.count else { throw .unexpected(offset: start) }
        if !escaped {
            // ASCII is valid UTF-8 as it is; other text is validated here, once (its node then
            // reads as a String by `decoding`).
            if !ascii {
                let slice = UnsafeRawBufferPointer(rebasing: bytes[contentStart..<index])
                guard String(validating: slice, as: UTF8.self) != nil else { throw .invalidUTF8(offset: contentStart) }
            }
            nodes.append(JSONDocument.Node(kind: .string, ascii: ascii, start: contentStart, end: index, next: nodes.count + 1))
            index += 1
            return
        }
        scratch.removeAll(keepingCapacity: true)
        scratch.append(contentsOf: bytes[contentStart..<index])
        while true {
            guard index < bytes.count else { throw .unexpected(offset: start) }
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "\""):
                guard let text = String(validating: scratch, as: UTF8.self) else { throw .invalidUTF8(offset: contentStart) }
                nodes.append(JSONDocument.Node(kind: .string, plain: false, ascii: false, start: contentStart, end: index,
                                               next: nodes.count + 1, decodedIndex: decoded.count))
                decoded.append(text)
                index += 1
                return
            case UInt8(ascii: "\\"):
                try escape()
            case 0..<0x20:
                throw .unexpected(offset: index)
            default:
                if byte == 0x7F { sawControlCharacter = true }
                scratch.append(byte)
                index += 1
            }
        }
    }

    /// What eight bytes of a string hold, for the scan of its contents.
    enum StringWord: Equatable {
        /// Plain ASCII: nothing to look at.
        case ascii
        /// Bytes of 0x80 and above among plain ASCII: nothing to look at but UTF-8 validation.
        case nonASCII
        /// A quote, a backslash, a control character (< 0x20) or DEL (0x7F): one by one.
        case special
    }

    /// Each test is the classic "has a zero byte" or "has a byte less than n" word trick, exact
    /// as a yes or no (a borrow can only mark a byte after one that is truly marked).
    static func classify(_ word: UInt64) -> StringWord {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let highs = ones &* 0x80
        let quotes = word ^ (ones &* 0x22)
        let backslashes = word ^ (ones &* 0x5C)
        let deletes = word ^ (ones &* 0x7F)
        let special = (quotes &- ones) & ~quotes
            | (backslashes &- ones) & ~backslashes
            | (deletes &- ones) & ~deletes
            | (word &- ones &* 0x20) & ~word
        if special & highs != 0 { return .special }
        return word & highs == 0 ? .ascii : .nonASCII
    }

    private mutating func escape() throws(StrictJSONError) {
        let offset = index
        guard index + 1 < bytes.count else { throw .unexpected(offset: offset) }
        let code = bytes[index + 1]
        index += 2
        switch code {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): scratch.append(code)
        case UInt8(ascii: "b"): scratch.append(0x08); sawControlCharacter = true
        case UInt8(ascii: "f"): scratch.append(0x0C); sawControlCharacter = true
        case UInt8(ascii: "n"): scratch.append(0x0A); sawControlCharacter = true
        case UInt8(ascii: "r"): scratch.append(0x0D); sawControlCharacter = true
        case UInt8(ascii: "t"): scratch.append(0x09); sawControlCharacter = true
        case UInt8(ascii: "u"):
            var scalar = try hex4()
            if (0xD800...0xDBFF).contains(scalar) {
                guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") else {
                    throw .loneSurrogate(offset: offset)
                }
                index += 2
                let low = try hex4()
                guard (0xDC00...0xDFFF).contains(low) else { throw .loneSurrogate(offset: offset) }
                scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
            } else if (0xDC00...0xDFFF).contains(scalar) {
                throw .loneSurrogate(offset: offset)
            }
            guard let unicode = Unicode.Scalar(scalar) else { throw .loneSurrogate(offset: offset) }
            if scalar < 0x20 || scalar == 0x7F { sawControlCharacter = true }
            scratch.append(contentsOf: UTF8.encode(unicode)!)
        default:
            throw .unexpected(offset: offset)
        }
    }

    private mutating func hex4() throws(StrictJSONError) -> UInt32 {
        guard index + 4 <= bytes.count else { throw .unexpected(offset: index) }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw .unexpected(offset: index)
            }
            value = value << 4 | UInt32(digit)
            index += 1
        }
        return value
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, finite as a Double.
    private mutating func number() throws(StrictJSONError) {
        let start = index
        if peek() == UInt8(ascii: "-") { index += 1 }
        guard let first = peek(), isDigit(first) else { throw .unexpected(offset: index) }
        index += 1
        if first != UInt8(ascii: "0") { skipDigits() }
        if peek() == UInt8(ascii: ".") {
            index += 1
            guard let digit = peek(), isDigit(digit) else { throw .unexpected(offset: index) }
            skipDigits()
        }
        if peek() == UInt8(ascii: "e") || peek() == UInt8(ascii: "E") {
            index += 1
            if peek() == UInt8(ascii: "+") || peek() == UInt8(ascii: "-") { index += 1 }
            guard let digit = peek(), isDigit(digit) else { throw .unexpected(offset: index) }
            skipDigits()
        }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
        guard let value = Double(text), value.isFinite else { throw .numberOutOfRange(offset: start) }
    }

    private func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

    private mutating func skipDigits() {
        while let byte = peek(), isDigit(byte) { index += 1 }
    }
}
