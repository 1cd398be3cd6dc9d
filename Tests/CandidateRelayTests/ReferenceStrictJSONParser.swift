import Foundation

@testable import CandidateRelay

// The parser as it was before it built `JSONDocument`s: it built a `JSONValue` tree, with a
// dictionary per object. Kept here, unchanged but for its names, as the reference the parser
// must agree with on every body: the same tree or the same error (offsets included), the same
// control-character flag and `partner_candidate_id` range (`StrictJSONParserTests`'
// `parsesAsTheTreeParserDid`). Its error type and its 8-byte word test (`classify`) are the
// relay's own. Its other lexical parts (escapes, numbers, literals) are the same text as the
// parser's: the comparison checks how values, keys and errors are put together, which is what
// changed.

/// A parsed ingest document, and what the relay needs to know of its bytes.
struct ReferenceParsedDocument: Sendable {
    var value: JSONValue
    /// False when no string holds a control character (the validator's scan is skipped).
    var mayHaveControlCharacters: Bool
    /// Where the value of the top-level `partner_candidate_id` member sits in the body, so that
    /// a `null` one can be replaced there without re-encoding the rest.
    var partnerCandidateIDRange: Range<Int>?
}

/// RFC 8259 JSON, strictly: UTF-8 only (no BOM, no UTF-16/32, no overlong forms, no encoded
/// surrogates), no repeated object key, no raw control character inside a string, bounded depth.
///
/// The relay validates a body and then forwards its exact bytes, so the parser must see what
/// every other parser sees: with a repeated key one decoder keeps the first value and another
/// the last, and a BOM or UTF-16 body is read by some partners and refused by others. Anything
/// ambiguous is refused here. Foundation's decoder accepts all three, hence this parser.
struct ReferenceStrictJSONParser {
    /// Candidate documents nest three levels; 64 leaves room and keeps recursion shallow.
    static let maxDepth = 64

    private let bytes: UnsafeRawBufferPointer
    private var index = 0
    private var scratch: [UInt8] = []
    /// Set when a string holds U+0000–U+001F or U+007F (raw DEL, or an escape), so that the
    /// validator's scan for them can be skipped for the common body that has none.
    private var sawControlCharacter = false
    /// Integers a Double cannot hold exactly (2^53 and beyond) become their text: a partner's
    /// 64-bit id, 9007199254740993, is otherwise read as ...992 (partner answers only).
    private let bigIntegersAsText: Bool
    /// Values left before `tooManyValues` (nil: no limit).
    private var valuesLeft: Int?
    private let valueLimit: Int?
    private var partnerCandidateIDRange: Range<Int>?
    /// Whether the document's top-level value is an object (for `tooManyValues`).
    private var documentIsObject = false

    private init(bytes: UnsafeRawBufferPointer, bigIntegersAsText: Bool = false, maxValues: Int? = nil) {
        self.bytes = bytes
        self.bigIntegersAsText = bigIntegersAsText
        self.valuesLeft = maxValues
        self.valueLimit = maxValues
    }

    /// The most values an ingest document may hold. A candidate has a few dozen (a few hundred
    /// with many custom fields or links); a body of 25 MB of `[1,1,1,...` is twelve million,
    /// each a tree node and then a 422 detail: about 1 GB of memory and seconds of an event
    /// loop for one small request (found from outside), where the limit answers at once.
    static let maxDocumentValues = 10_000

    /// Parses one JSON document. `allowBOM` skips a leading UTF-8 BOM (for partner answers;
    /// never for ingest, where the forwarded bytes must be exactly what was validated).
    static func parse(_ data: Data, allowBOM: Bool = false) throws(StrictJSONError) -> JSONValue {
        try parseDocument(data, allowBOM: allowBOM).value
    }

    /// A partner's answer: a BOM allowed, and integers beyond a Double's exact range kept as
    /// their text (`.string`), so that an identifier is never rounded.
    static func parseAnswer(_ data: Data) throws(StrictJSONError) -> JSONValue {
        let result: Result<JSONValue, StrictJSONError> = data.withUnsafeBytes { raw in
            var parser = ReferenceStrictJSONParser(bytes: raw, bigIntegersAsText: true)
            do throws(StrictJSONError) { return .success(try parser.document(allowBOM: true)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// `parse`, whether any string may hold a control character (false: none does), and where
    /// the top-level `partner_candidate_id`'s value is. `maxValues`: refuse a document of more
    /// values (`tooManyValues`).
    static func parseDocument(_ data: Data, allowBOM: Bool = false, maxValues: Int? = nil) throws(StrictJSONError) -> ReferenceParsedDocument {
        let result: Result<ReferenceParsedDocument, StrictJSONError> = data.withUnsafeBytes { raw in
            var parser = ReferenceStrictJSONParser(bytes: raw, maxValues: maxValues)
            do throws(StrictJSONError) {
                let value = try parser.document(allowBOM: allowBOM)
                return .success(ReferenceParsedDocument(value: value, mayHaveControlCharacters: parser.sawControlCharacter,
                                               partnerCandidateIDRange: parser.partnerCandidateIDRange))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    private mutating func document(allowBOM: Bool) throws(StrictJSONError) -> JSONValue {
        if bytes.count >= 3, bytes[0] == 0xEF, bytes[1] == 0xBB, bytes[2] == 0xBF {
            guard allowBOM else { throw .byteOrderMark }
            index = 3
        }
        skipWhitespace()
        documentIsObject = peek() == UInt8(ascii: "{")
        let value = try self.value(depth: 0)
        skipWhitespace()
        guard index == bytes.count else { throw .trailingData(offset: index) }
        return value
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

    private mutating func value(depth: Int) throws(StrictJSONError) -> JSONValue {
        guard let byte = peek() else { throw .unexpected(offset: index) }
        if let left = valuesLeft {
            guard left > 0 else { throw .tooManyValues(limit: valueLimit ?? 0, inObject: documentIsObject) }
            valuesLeft = left - 1
        }
        switch byte {
        case UInt8(ascii: "{"): return try object(depth: depth + 1)
        case UInt8(ascii: "["): return try array(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            let start = index
            let value = try number()
            if bigIntegersAsText, abs(value) >= 9_007_199_254_740_992,
               !bytes[start..<index].contains(where: { $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "e") || $0 == UInt8(ascii: "E") }) {
                return .string(String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self))
            }
            return .number(value)
        default: throw .unexpected(offset: index)
        }
    }

    private mutating func literal(_ word: StaticString) throws(StrictJSONError) {
        let count = word.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw .unexpected(offset: index) }
        for offset in 0..<count where bytes[index + offset] != word.utf8Start[offset] {
            throw .unexpected(offset: index + offset)
        }
        index += count
    }

    private mutating func object(depth: Int) throws(StrictJSONError) -> JSONValue {
        guard depth <= Self.maxDepth else { throw .tooDeep(limit: Self.maxDepth) }
        index += 1
        var members: [String: JSONValue] = [:]
        skipWhitespace()
        if peek() == UInt8(ascii: "}") { index += 1; return .object(members) }
        members.reserveCapacity(8)  // a candidate's object grows without rehashing three times
        while true {
            guard peek() == UInt8(ascii: "\"") else { throw .unexpected(offset: index) }
            let keyOffset = index
            let key = try string()
            skipWhitespace()
            guard peek() == UInt8(ascii: ":") else { throw .unexpected(offset: index) }
            index += 1
            skipWhitespace()
            let valueStart = index
            let member = try value(depth: depth)
            if depth == 1, key == "partner_candidate_id" { partnerCandidateIDRange = valueStart..<index }
            // Keys compare as Swift strings (canonical equivalence), the strictest reading: two
            // spellings of one name are a duplicate for some consumer.
            guard members.updateValue(member, forKey: key) == nil else { throw .duplicateKey(offset: keyOffset) }
            skipWhitespace()
            switch peek() {
            case UInt8(ascii: ",")?: index += 1; skipWhitespace()
            case UInt8(ascii: "}")?: index += 1; return .object(members)
            default: throw .unexpected(offset: index)
            }
        }
    }

    private mutating func array(depth: Int) throws(StrictJSONError) -> JSONValue {
        guard depth <= Self.maxDepth else { throw .tooDeep(limit: Self.maxDepth) }
        index += 1
        var elements: [JSONValue] = []
        skipWhitespace()
        if peek() == UInt8(ascii: "]") { index += 1; return .array(elements) }
        while true {
            elements.append(try value(depth: depth))
            skipWhitespace()
            switch peek() {
            case UInt8(ascii: ",")?: index += 1; skipWhitespace()
            case UInt8(ascii: "]")?: index += 1; return .array(elements)
            default: throw .unexpected(offset: index)
            }
        }
    }

    /// A string: raw bytes must be valid UTF-8 without control characters; escapes are decoded,
    /// `\u` surrogates only as a high-low pair.
    private mutating func string() throws(StrictJSONError) -> String {
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
                switch StrictJSONParser.classify(bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self)) {
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
            let slice = UnsafeRawBufferPointer(rebasing: bytes[contentStart..<index])
            index += 1
            // ASCII is valid UTF-8 as it is: `decoding` then copies it, where `validating` (an
            // unspecialised generic) looked up type metadata for every string (perf: ~2 % of
            // ingest's CPU).
            if ascii { return String(decoding: slice, as: UTF8.self) }
            guard let text = String(validating: slice, as: UTF8.self) else { throw .invalidUTF8(offset: contentStart) }
            return text
        }
        scratch.removeAll(keepingCapacity: true)
        scratch.append(contentsOf: bytes[contentStart..<index])
        while true {
            guard index < bytes.count else { throw .unexpected(offset: start) }
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "\""):
                index += 1
                guard let text = String(validating: scratch, as: UTF8.self) else { throw .invalidUTF8(offset: contentStart) }
                return text
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
    private mutating func number() throws(StrictJSONError) -> Double {
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
        return value
    }

    private func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }

    private mutating func skipDigits() {
        while let byte = peek(), isDigit(byte) { index += 1 }
    }
}
