import Foundation
import Testing
@testable import CandidateRelay

/// The body decoder the validator trusts. Table rows for the rules, then a property-based pass:
/// random documents round-trip, and thousands of random mutations of valid bodies never crash
/// the parser or the validator, and whatever the strict parser accepts Foundation's decoder
/// reads the same way (the strict reading is never a different reading).
@Suite struct StrictJSONParserTests {
    @Test(arguments: [
        (#"{"a":1,"b":[true,false,null],"c":{"d":"e"}}"#, true),
        (#"  [1, -0, 0.5, 1e3, -2E-2]  "#, true),
        (#""\u00e9\ud83d\ude00\n\/""#, true),
        (#"{"a":1,}"#, false), (#"[1,]"#, false), (#"01"#, false), (#"1."#, false), (#".5"#, false),
        (#"{'a':1}"#, false), (#"{"a":1}{"#, false), (#""#, false), (#"tru"#, false), (#"NaN"#, false),
        (#""\x""#, false), (#""\u12""#, false), (#""\udc00""#, false), (#""\ud800\u0041""#, false),
        ("\"a\tb\"", false), (#"{"a":1,"a":2}"#, false), (#"1e999"#, false),
    ])
    func rules(text: String, valid: Bool) {
        let parsed = (try? StrictJSONParser.parse(Data(text.utf8))) != nil
        #expect(parsed == valid, "\(text)")
    }

    /// Unescaped strings take two ways: ASCII as it is, anything else through UTF-8 validation.
    @Test func unescapedStringsAsciiAndNot() throws {
        #expect(try StrictJSONParser.parse(Data(#"["plain ascii","Zoë Ólafsdóttir 😀"]"#.utf8))
                == .array([.string("plain ascii"), .string("Zoë Ólafsdóttir 😀")]))
        for bad: [UInt8] in [[0xFF], [0xC3], [0xE2, 0x82], [0xED, 0xA0, 0x80], [0xC0, 0xAF]] {
            for prefix in [#"a"#, #"a\n"#] {  // without an escape, and with one (the other path)
                let body = Data(#"["ok",""#.utf8) + Data(prefix.utf8) + Data(bad) + Data(#"b"]"#.utf8)
                #expect(throws: StrictJSONError.self) { try StrictJSONParser.parse(body) }
            }
        }
    }

    /// The eight-bytes-at-a-time scan sorts a word as a byte-by-byte reading does: "special" when
    /// any byte is a quote, a backslash, below 0x20 or DEL; else "non-ASCII" when any is 0x80 or
    /// above; else "ASCII". Every byte value at every position of an otherwise plain word, and
    /// random words.
    @Test func wordScanAgreesWithBytes() throws {
        func classByBytes(_ word: UInt64) -> StrictJSONParser.StringWord {
            let bytes = (0..<8).map { UInt8(truncatingIfNeeded: word >> (8 * UInt64($0))) }
            if bytes.contains(where: { $0 < 0x20 || $0 == 0x7F || $0 == 0x22 || $0 == 0x5C }) { return .special }
            return bytes.contains(where: { $0 >= 0x80 }) ? .nonASCII : .ascii
        }
        var disagreements: [String] = []
        for filler: UInt8 in [0x20, 0x41, 0x7E, 0x21, 0x5B, 0x5D, 0x23, 0x80, 0xC3, 0xFF] {
            for position in 0..<8 {
                for value in 0...255 {
                    var bytes = [UInt8](repeating: filler, count: 8)
                    bytes[position] = UInt8(value)
                    let word = bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
                    if StrictJSONParser.classify(word) != classByBytes(word) { disagreements.append("byte \(value) at \(position) among \(filler)") }
                }
            }
        }
        for _ in 0..<200_000 {
            let random = UInt64.random(in: 0...UInt64.max)
            // Any bytes; bytes below 0x80; bytes of 0x20-0x5F (quotes, backslashes, plain);
            // plain bytes with 0x80 and above mixed in.
            for word in [random, random & 0x7F7F_7F7F_7F7F_7F7F, (random & 0x3F3F_3F3F_3F3F_3F3F) &+ 0x2020_2020_2020_2020,
                         (random & 0x3F3F_3F3F_3F3F_3F3F) &+ 0x4040_4040_4040_4040 | (random >> 1 & 0x8080_8080_8080_8080)]
            where StrictJSONParser.classify(word) != classByBytes(word) {
                disagreements.append(String(word, radix: 16))
            }
        }
        #expect(disagreements.isEmpty, "\(disagreements.prefix(10))")
        // Strings across the eight-byte steps: a quote, an escape, a control character, DEL and
        // non-ASCII at every offset of a long string are each still found.
        for offset in 0..<24 {
            let plain = String(repeating: "a", count: offset)
            let tail = String(repeating: "b", count: 17)
            #expect(try StrictJSONParser.parse(Data("[\"\(plain)\\n\(tail)\"]".utf8)) == .array([.string(plain + "\n" + tail)]))
            #expect(throws: StrictJSONError.self) { try StrictJSONParser.parse(Data("[\"\(plain)\u{01}\(tail)\"]".utf8)) }
            #expect(try StrictJSONParser.parse(Data("[\"\(plain)é\(tail)\"]".utf8)) == .array([.string(plain + "é" + tail)]))
            // Non-ASCII text skipped eight bytes at a time still ends at its quote, is validated,
            // and still finds what follows it.
            let hebrew = String(repeating: "שלום ", count: offset + 1)
            #expect(try StrictJSONParser.parse(Data("[\"\(hebrew)\",\"\(plain)\"]".utf8)) == .array([.string(hebrew), .string(plain)]))
            #expect(throws: StrictJSONError.self) { try StrictJSONParser.parse(Data("[\"\(hebrew)\u{01}\(tail)\"]".utf8)) }
            #expect(try StrictJSONParser.parseDocument(Data("[\"\(hebrew)\u{7F}\(tail)\"]".utf8)).mayHaveControlCharacters)
            let brokenHebrew = Data("[\"\(hebrew)".utf8) + Data([0xD7]) + Data("\(tail)\"]".utf8)  // a lead byte without its follower
            #expect(throws: StrictJSONError.invalidUTF8(offset: 2)) { try StrictJSONParser.parse(brokenHebrew) }
            #expect(try StrictJSONParser.parseDocument(Data("[\"\(plain)\u{7F}\(tail)\"]".utf8)).mayHaveControlCharacters)
            #expect(try !StrictJSONParser.parseDocument(Data("[\"\(plain)\(tail)\"]".utf8)).mayHaveControlCharacters)
            #expect(try StrictJSONParser.parse(Data("[\"\(plain)\",\"\(tail)\"]".utf8)) == .array([.string(plain), .string(tail)]))
            let invalid = Data("[\"\(plain)".utf8) + Data([0xFF]) + Data("\(tail)\"]".utf8)
            #expect(throws: StrictJSONError.invalidUTF8(offset: 2)) { try StrictJSONParser.parse(invalid) }
        }
    }

    @Test func depthIsBounded() {
        let ok = String(repeating: "[", count: 64) + String(repeating: "]", count: 64)
        let deep = String(repeating: "[", count: 65) + String(repeating: "]", count: 65)
        #expect((try? StrictJSONParser.parse(Data(ok.utf8))) != nil)
        #expect(throws: StrictJSONError.tooDeep(limit: 64)) { try StrictJSONParser.parse(Data(deep.utf8)) }
    }

    @Test func bomOnlyWhenAllowed() throws {
        let body = Data([0xEF, 0xBB, 0xBF]) + Data("{}".utf8)
        #expect(throws: StrictJSONError.byteOrderMark) { try StrictJSONParser.parse(body) }
        #expect(try StrictJSONParser.parse(body, allowBOM: true) == .object([:]))
    }

    /// A seeded generator, so a failure names the seed that reproduces it.
    struct SeededGenerator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static func randomValue(depth: Int, _ g: inout SeededGenerator) -> JSONValue {
        let alphabet = Array("aé😀\"\\/\n\t\u{1}\u{7f} zZ0") + ["\u{2028}"]
        func text() -> String { String((0..<Int.random(in: 0..<8, using: &g)).map { _ in alphabet.randomElement(using: &g)! }) }
        switch Int.random(in: 0..<(depth > 3 ? 4 : 6), using: &g) {
        case 0: return .null
        case 1: return .bool(Bool.random(using: &g))
        case 2: return .number(Double(Int.random(in: -1_000_000...1_000_000, using: &g)) / 8)
        case 3: return .string(text())
        case 4: return .array((0..<Int.random(in: 0..<4, using: &g)).map { _ in randomValue(depth: depth + 1, &g) })
        default:
            var members: [String: JSONValue] = [:]
            for _ in 0..<Int.random(in: 0..<4, using: &g) { members[text()] = randomValue(depth: depth + 1, &g) }
            return .object(members)
        }
    }

    @Test func randomDocumentsRoundTrip() throws {
        var g = SeededGenerator(state: 20261201)
        for _ in 0..<2_000 {
            let value = Self.randomValue(depth: 0, &g)
            let data = try JSONEncoder().encode(value)
            let parsed = try StrictJSONParser.parseDocument(data)
            #expect(parsed.document.value() == value)
            // The validator skips its control-character pass when the parser saw none: that
            // must never hide one.
            if !parsed.mayHaveControlCharacters {
                #expect(parsed.document.withReader { CandidateValidator.controlCharacterPaths($0, JSONDocument.root, at: "") }.isEmpty)
            }
        }
    }

    /// The parser builds `JSONDocument`s; the parser before it built `JSONValue` trees and is
    /// kept as the reference (`ReferenceStrictJSONParser`). Bodies mutated at random (a byte
    /// changed, inserted or dropped, a span copied elsewhere, which repeats keys), and a few
    /// written for the edges, must get the same answer from both: the same tree or the same
    /// error at the same offset, the same control-character flag and `partner_candidate_id`
    /// range, with and without a value limit, from a `Data` slice too, and as a partner's answer.
    @Test func parsesAsTheTreeParserDid() {
        let seed = UInt64(Date().timeIntervalSince1970)
        var g = SeededGenerator(state: seed)
        let forty = (0..<40).map { "\"k\($0)\":\($0)" }.joined(separator: ",")
        let bases = [
            #"{"position_uid":"11.11","partner_candidate_id":null,"first_name":"Tést","email":"t@example.com","links":[{"url":"https://example.com"}],"custom_fields":{"a":1,"b":"x"},"note":"n\u00e9\n"}"#,
            #"{"ab":1,"ac":"x","K":[1,2.5e3,-0,true,false,null],"k":{"é":"é","x\u0041":"a\nb"},"n":9007199254740993,"m":-12345678901234567890}"#,
            #"{"\u0070artner_candidate_id":"p","position_uid":"x","K":1,"\u212A2":2}"#,
            "{\(forty),\"z\":{\(forty)}}",
            #"[[1,[2,{"a":"b","c":{"d":[]}}]],"\ud83d\ude00","\u212a",{}]"#,
        ]
        let edges = [
            #"{"a":1,"a":}"#, #"{"a":1,"a""#, #"{"a":1,"a":{"b":1,"b":2}}"#, "{\"K\":1,\"\u{212A}\":2}", #"{"a":1,"\u0061":2}"#,
            "{\(forty),\"k0\":0}", "{\(forty),\"\\u006b0\":0}", "{\"\u{212A}\":1,\(forty),\"K\":0}", #"{"a":1,"a":[1e999]}"#,
            #"{"a":1,"a":"\ud800"}"#, #"{"partner_candidate_id":1,"partner_candidate_id":2}"#, #"{"":1,"":2}"#,
            // Malformed past the value limit: the limit's 422 on purpose (the parser stops there).
            #"[1,2,3,4,5,6,7,8,9,10,11,12,13,]"#, #"{"x":[1,2,3,4,5,6,7,8,9,10,11],"y":}"#, #"{"a":1,"a":[1,2,3,4,5,6,7,8,9,10,11,12,13]}"#,
        ]
        let interesting: [UInt8] = [0x00, 0x22, 0x5C, 0x7B, 0x7D, 0x5B, 0x5D, 0x2C, 0x3A, 0x80, 0xC0, 0xE2, 0xED, 0xEF, 0xFF, 0x75, 0x30, 0x65, 0x2D, 0x4B]
        func compare(_ data: Data, _ label: String) {
            for maxValues in [nil, 12] as [Int?] {
                let old: Result<ReferenceParsedDocument, StrictJSONError>
                do throws(StrictJSONError) { old = .success(try ReferenceStrictJSONParser.parseDocument(data, maxValues: maxValues)) } catch { old = .failure(error) }
                let new: Result<ParsedDocument, StrictJSONError>
                do throws(StrictJSONError) { new = .success(try StrictJSONParser.parseDocument(data, maxValues: maxValues)) } catch { new = .failure(error) }
                switch (old, new) {
                case (.success(let old), .success(let new)):
                    #expect(new.document.value() == old.value, "\(label) max \(String(describing: maxValues))")
                    #expect(new.mayHaveControlCharacters == old.mayHaveControlCharacters, "\(label)")
                    #expect(new.partnerCandidateIDRange == old.partnerCandidateIDRange, "\(label)")
                case (.failure(let old), .failure(let new)):
                    #expect(new == old, "\(label) max \(String(describing: maxValues))")
                default:
                    Issue.record("\(label): the reference says \(old), the parser \(new)")
                }
            }
            let oldAnswer: Result<JSONValue, StrictJSONError>
            do throws(StrictJSONError) { oldAnswer = .success(try ReferenceStrictJSONParser.parseAnswer(data)) } catch { oldAnswer = .failure(error) }
            let newAnswer: Result<JSONValue, StrictJSONError>
            do throws(StrictJSONError) { newAnswer = .success(try StrictJSONParser.parseAnswer(data)) } catch { newAnswer = .failure(error) }
            #expect(newAnswer == oldAnswer, "\(label) as an answer")
        }
        var agreed = 0
        for edge in edges {
            compare(Data(edge.utf8), edge)
            compare((Data("xyz".utf8) + Data(edge.utf8)).dropFirst(3), "slice of \(edge)")
        }
        for (number, base) in bases.enumerated() {
            compare(Data(base.utf8), "base \(number)")
            for round in 0..<1_500 {
                var bytes = Array(base.utf8)
                for _ in 0..<Int.random(in: 1...3, using: &g) where bytes.count > 2 {
                    let at = Int.random(in: 0..<bytes.count, using: &g)
                    switch Int.random(in: 0..<5, using: &g) {
                    case 0: bytes[at] = interesting.randomElement(using: &g)!
                    case 1: bytes.insert(interesting.randomElement(using: &g)!, at: at)
                    case 2: bytes.remove(at: at)
                    case 3:
                        let from = Int.random(in: 0..<bytes.count, using: &g)
                        let span = bytes[from..<min(bytes.count, from + Int.random(in: 1...12, using: &g))]
                        bytes.insert(contentsOf: span, at: at)
                    default: bytes = Array(bytes[..<at])
                    }
                }
                let data = Data(bytes)
                compare(round % 10 == 0 ? (Data("xyz".utf8) + data).dropFirst(3) : data, "seed \(seed) base \(number) round \(round)")
                if (try? StrictJSONParser.parseDocument(data)) != nil { agreed += 1 }
            }
        }
        #expect(agreed > 500)
    }

    /// A node is 24 bytes (32-bit offsets): a partner's answer of 1 MB of `[0,0,...` is 500,000
    /// of them while it is read.
    @Test func nodesStaySmall() {
        #expect(MemoryLayout<JSONDocument.Node>.stride == 24)
    }

    @Test func mutatedBodiesNeverCrashAndNeverDisagree() throws {
        let seed = UInt64(Date().timeIntervalSince1970)
        var g = SeededGenerator(state: seed)
        let base = Array(#"{"position_uid":"11.11","first_name":"Test","last_name":"Person","email":"t@example.com","links":[{"url":"https://example.com"}],"address":{"country":"IL"},"custom_fields":{"a":1,"b":"x"},"note":"n"}"#.utf8)
        let interesting: [UInt8] = [0x00, 0x22, 0x5C, 0x7B, 0x7D, 0x5B, 0x5D, 0x2C, 0x3A, 0x80, 0xC0, 0xED, 0xEF, 0xFF, 0x75, 0x30, 0x65, 0x2D]
        var accepted = 0
        for round in 0..<5_000 {
            var bytes = base
            for _ in 0..<Int.random(in: 1...4, using: &g) where !bytes.isEmpty {
                let at = Int.random(in: 0..<bytes.count, using: &g)
                switch Int.random(in: 0..<4, using: &g) {
                case 0: bytes[at] = interesting.randomElement(using: &g)!
                case 1: bytes.insert(interesting.randomElement(using: &g)!, at: at)
                case 2: if bytes.count > 2 { bytes.remove(at: at) }
                default: bytes = Array(bytes[..<at])
                }
            }
            let data = Data(bytes)
            guard let parsed = try? StrictJSONParser.parseDocument(data) else { continue }
            let strict = parsed.document.value()
            accepted += 1
            // The validator reads the document where its reference read the tree: the same
            // problems, whether the parser saw control characters or not.
            let expected = ReferenceCandidateValidator().validate(strict)
            #expect(CandidateValidator().validate(parsed.document) == expected, "seed \(seed) round \(round)")
            #expect(CandidateValidator().validate(parsed.document, mayHaveControlCharacters: parsed.mayHaveControlCharacters) == expected,
                    "seed \(seed) round \(round)")
            let lenient = try? JSONDecoder().decode(JSONValue.self, from: data)
            #expect(lenient == strict, "seed \(seed) round \(round)")
        }
        #expect(accepted > 100)
    }
}
