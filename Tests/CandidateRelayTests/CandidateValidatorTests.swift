import Foundation
import Testing

@testable import CandidateRelay

/// One row of the table: a JSON payload and exactly the problems it must produce, in order.
struct CandidateValidationCase: Sendable, CustomTestStringConvertible {
    let name: String
    let json: String
    let expected: [ValidationProblem]

    init(_ name: String, _ json: String, _ expected: [ValidationProblem] = []) {
        self.name = name
        self.json = json
        self.expected = expected
    }

    // The name only: some payloads hold megabytes of base64.
    var testDescription: String { name }
}

private func problem(_ field: String, _ code: String) -> ValidationProblem {
    ValidationProblem(field: field, problem: code)
}

/// A minimal valid candidate (fake person) with `extra` members appended as JSON text.
private func candidate(_ extra: String = "") -> String {
    let base = #""position_uid": "11.11", "first_name": "Ada", "last_name": "Example""#
    return extra.isEmpty ? "{\(base)}" : "{\(base), \(extra)}"
}

private func resume(file: String) -> String {
    #""resume": {"name": "ada_cv.pdf", "file": "\#(file)"}"#
}

private let sixMegabytes = CandidateValidator.maxDecodedFileBytes
/// Exactly 6 MiB decoded: 6 MiB is a multiple of 3, so no padding.
private let base64OfSixMegabytes = String(repeating: "AAAA", count: sixMegabytes / 3)
/// 6 MiB + 1 byte decoded: one more padded group carrying a single byte.
private let base64OfSixMegabytesPlusOne = base64OfSixMegabytes + "AA=="

private let fullValidCandidate = #"""
{
  "position_uid": "11.11", "partner_candidate_id": "1111A",
  "first_name": "Ada", "middle_name": "Q", "last_name": "Example",
  "email": "ada.example@example.com", "phone": "555-0100", "mobile_phone": "555-0101",
  "national_id": "0000-0000-0", "linkedin_url": "https://www.linkedin.com/in/ada-example-000",
  "salary_expectations": "80k / Annual", "prospect_status": "Interested",
  "resume": {"name": "ada_cv.docx", "file": "UEsDBA=="},
  "picture": {"file": "iVBORw0KGgo=", "name": "image.png"},
  "links": [{"url": "https://www.github.example/ada"}, {"url": "http://ada.example.org/"}],
  "files": [{"name": "Coding Challenge", "file": "SGVsbG8sIHdvcmxkIQ=="}],
  "source_contact": {"full_name": "Sam Sample", "email": "sam@example.org", "phone": "555 555 0199"},
  "address": {"country": "US", "city": "Springfield", "state": "NY", "zip": "00000", "street": "1 Example St"},
  "custom_fields": {"field1": "value1", "years": 7, "remote": true},
  "note": "Fake candidate used in tests"
}
"""#

private let cases: [CandidateValidationCase] = [
    // Valid documents
    CandidateValidationCase("minimal valid", candidate()),
    CandidateValidationCase("every field valid", fullValidCandidate),
    CandidateValidationCase("unknown top-level fields are allowed", candidate(#""future_field": {"x": [1, null]}"#)),
    CandidateValidationCase(
        "null optional fields mean absent",
        candidate(#""partner_candidate_id": null, "email": null, "linkedin_url": null, "prospect_status": null, "resume": null, "picture": null, "links": null, "files": null, "source_contact": null, "address": {"country": null}, "custom_fields": null, "note": null"#)),
    CandidateValidationCase("resume of exactly 6 MiB", candidate(resume(file: base64OfSixMegabytes))),
    CandidateValidationCase("base64 with line breaks", candidate(resume(file: #"SGVs\nbG8s\r\nIHdv cmxk\tIQ=="#))),
    CandidateValidationCase("LinkedIn country subdomain, uppercase", candidate(#""linkedin_url": "HTTPS://NL.LinkedIn.com/in/ada""#)),
    CandidateValidationCase(
        "a backslash makes a browser's host differ from the parser's: refused",
        candidate(#""linkedin_url": "https://evil.example\\@linkedin.com/in/ada", "links": [{"url": "https://a.example\\@b.example/"}]"#),
        [problem("linkedin_url", "invalid_linkedin_url"), problem("links[0].url", "invalid_url")]),
    CandidateValidationCase("resume extension is case-insensitive", candidate(#""resume": {"name": "CV.PDF", "file": "QUJD"}"#)),
    CandidateValidationCase("empty links and files", candidate(#""links": [], "files": []"#)),
    CandidateValidationCase(
        "255-character name and 10000-character note",
        candidate(#""middle_name": "\#(String(repeating: "é", count: 255))", "note": "\#(String(repeating: "n", count: 10_000))""#)),

    // The document itself
    CandidateValidationCase("array document", "[]", [problem("$", "must_be_object")]),
    CandidateValidationCase("string document", #""candidate""#, [problem("$", "must_be_object")]),
    CandidateValidationCase("null document", "null", [problem("$", "must_be_object")]),
    CandidateValidationCase(
        "empty object: every required field at once", "{}",
        [problem("position_uid", "required"), problem("first_name", "required"), problem("last_name", "required")]),

    // Required strings
    CandidateValidationCase(
        "blank and null required fields",
        #"{"position_uid": "", "first_name": "  \n", "last_name": null}"#,
        [problem("position_uid", "required"), problem("first_name", "required"), problem("last_name", "required")]),
    CandidateValidationCase(
        "numbers and booleans instead of strings",
        #"{"position_uid": 11.11, "first_name": true, "last_name": ["Example"]}"#,
        [problem("position_uid", "must_be_string"), problem("first_name", "must_be_string"), problem("last_name", "must_be_string")]),
    CandidateValidationCase(
        "256-character first name",
        #"{"position_uid": "11.11", "first_name": "\#(String(repeating: "a", count: 256))", "last_name": "Example"}"#,
        [problem("first_name", "string_size_limit")]),

    // Optional strings
    CandidateValidationCase("empty partner_candidate_id", candidate(#""partner_candidate_id": """#), [problem("partner_candidate_id", "empty")]),
    CandidateValidationCase("blank partner_candidate_id", candidate(#""partner_candidate_id": "   ""#), [problem("partner_candidate_id", "empty")]),
    CandidateValidationCase("numeric partner_candidate_id", candidate(#""partner_candidate_id": 1111"#), [problem("partner_candidate_id", "must_be_string")]),
    CandidateValidationCase(
        "optional strings of other types",
        candidate(#""middle_name": 1, "phone": false, "mobile_phone": {}, "national_id": [], "salary_expectations": 80000, "note": 2"#),
        [problem("middle_name", "must_be_string"), problem("phone", "must_be_string"), problem("mobile_phone", "must_be_string"),
         problem("national_id", "must_be_string"), problem("salary_expectations", "must_be_string"), problem("note", "must_be_string")]),
    CandidateValidationCase(
        "256-character phone and national id",
        candidate(#""phone": "\#(String(repeating: "5", count: 256))", "national_id": "\#(String(repeating: "0", count: 256))""#),
        [problem("phone", "string_size_limit"), problem("national_id", "string_size_limit")]),
    CandidateValidationCase("10001-character note", candidate(#""note": "\#(String(repeating: "n", count: 10_001))""#), [problem("note", "string_size_limit")]),

    // Email
    CandidateValidationCase("email without @", candidate(#""email": "ada.example.com""#), [problem("email", "invalid_email")]),
    CandidateValidationCase("email without dot in domain", candidate(#""email": "ada@localhost""#), [problem("email", "invalid_email")]),
    CandidateValidationCase("email with two @", candidate(#""email": "ada@home@example.com""#), [problem("email", "invalid_email")]),
    CandidateValidationCase("email with a space", candidate(#""email": "ada example@example.com""#), [problem("email", "invalid_email")]),
    CandidateValidationCase("email with empty domain label", candidate(#""email": "ada@example..com""#), [problem("email", "invalid_email")]),
    CandidateValidationCase("email with trailing dot", candidate(#""email": "ada@example.com.""#), [problem("email", "invalid_email")]),
    CandidateValidationCase("email with empty local part", candidate(#""email": "@example.com""#), [problem("email", "invalid_email")]),
    CandidateValidationCase("empty email", candidate(#""email": """#), [problem("email", "invalid_email")]),
    CandidateValidationCase("numeric email", candidate(#""email": 42"#), [problem("email", "must_be_string")]),
    CandidateValidationCase(
        "256-character email",
        candidate(#""email": "\#(String(repeating: "a", count: 244))@example.com""#),
        [problem("email", "string_size_limit")]),

    // Found from outside: what went dead at a partner, or merged two candidates there.
    CandidateValidationCase(
        "invisible partner_candidate_id and name",
        candidate(#""partner_candidate_id": "\uFEFF", "middle_name": "\u200B\u2060""#) ,
        [problem("partner_candidate_id", "empty")]),
    CandidateValidationCase(
        "zero-width first_name", #"{"position_uid": "11.11", "first_name": "\u200B\u00AD", "last_name": "Example"}"#,
        [problem("first_name", "required")]),
    CandidateValidationCase(
        "ids of other invisible characters (Hangul filler, braille blank, grapheme joiner, variation selector)",
        #"{"position_uid": "\u3164", "partner_candidate_id": "\u2800\u034F\uFE0F", "first_name": "\uFFA0", "last_name": "\u115F\u1160"}"#,
        [problem("position_uid", "required"), problem("partner_candidate_id", "empty"), problem("first_name", "required"), problem("last_name", "required")]),
    CandidateValidationCase(
        "visible text with joiners and marks inside, and IDN link hosts",
        #"{"position_uid": "11.11", "first_name": "\u0645\u06CC\u200C\u0631\u0648\u0645", "last_name": "\u05DB\u05D4\u05DF\u200F", "middle_name": "\u0915\u094D\u200D\u0937", "links": [{"url": "https://b\u00FCcher.de/x"}, {"url": "http://\u4F8B\u3048.jp/"}]}"#),
    CandidateValidationCase("LinkedIn host escaped", candidate(#""linkedin_url": "https://www%2elinkedin.com/in/ada""#), [problem("linkedin_url", "invalid_linkedin_url")]),
    CandidateValidationCase("email as a mailto link", candidate(#""email": "mailto:ada@example.com""#), [problem("email", "invalid_email")]),
    CandidateValidationCase(
        "tab in a file member outside resume, picture and files",
        candidate(#""custom_fields": {"file": "a\tb"}, "address": {"file": "x\ny"}, "files": [{"name": "n", "file": "QUJD\nREVG"}]"#),
        [problem("address.file", "invalid_characters"), problem("custom_fields.file", "invalid_characters")]),

    // LinkedIn and links
    CandidateValidationCase("LinkedIn look-alike host", candidate(#""linkedin_url": "https://linkedin.com.evil.example/in/ada""#), [problem("linkedin_url", "invalid_linkedin_url")]),
    CandidateValidationCase("LinkedIn suffix without dot", candidate(#""linkedin_url": "https://notlinkedin.com/in/ada""#), [problem("linkedin_url", "invalid_linkedin_url")]),
    CandidateValidationCase("LinkedIn without scheme", candidate(#""linkedin_url": "www.linkedin.com/in/ada""#), [problem("linkedin_url", "invalid_linkedin_url")]),
    CandidateValidationCase("LinkedIn over ftp", candidate(#""linkedin_url": "ftp://www.linkedin.com/in/ada""#), [problem("linkedin_url", "invalid_linkedin_url")]),
    CandidateValidationCase("links is an object", candidate(#""links": {"url": "https://example.org"}"#), [problem("links", "must_be_array")]),
    CandidateValidationCase(
        "links: non-objects, bad and missing urls, each with its index",
        candidate(#""links": [{"url": "https://example.org"}, {"url": "not a url"}, "https://example.org", {}, {"url": "mailto:ada@example.com"}, {"url": "https://"}, {"url": 7}]"#),
        [problem("links[1].url", "invalid_url"), problem("links[2]", "must_be_object"), problem("links[3].url", "required"),
         problem("links[4].url", "invalid_url"), problem("links[5].url", "invalid_url"), problem("links[6].url", "must_be_string")]),
    CandidateValidationCase(
        "2049-character link",
        candidate(#""links": [{"url": "https://example.org/\#(String(repeating: "p", count: 2029))"}]"#),
        [problem("links[0].url", "string_size_limit")]),

    // Prospect status
    CandidateValidationCase("prospect status in lowercase", candidate(#""prospect_status": "interested""#), [problem("prospect_status", "invalid_prospect_status")]),
    CandidateValidationCase("prospect status with wrong case inside", candidate(#""prospect_status": "Not Interested""#), [problem("prospect_status", "invalid_prospect_status")]),
    CandidateValidationCase("prospect status as a number", candidate(#""prospect_status": 1"#), [problem("prospect_status", "must_be_string")]),

    // Resume, picture, files
    CandidateValidationCase("resume is a string", candidate(#""resume": "QUJD""#), [problem("resume", "must_be_object")]),
    CandidateValidationCase("resume without name and file", candidate(#""resume": {}"#), [problem("resume.name", "required"), problem("resume.file", "required")]),
    CandidateValidationCase(
        "resume with a text file and broken base64",
        candidate(#""resume": {"name": "ada_cv.txt", "file": "not base64!"}"#),
        [problem("resume.name", "invalid_file_extension"), problem("resume.file", "invalid_base64")]),
    CandidateValidationCase("resume named only by its extension", candidate(#""resume": {"name": ".pdf", "file": "QUJD"}"#), [problem("resume.name", "invalid_file_extension")]),
    CandidateValidationCase("base64 of wrong length", candidate(resume(file: "QUJD=")), [problem("resume.file", "invalid_base64")]),
    CandidateValidationCase("base64 with data after padding", candidate(resume(file: "QQ==QQ==")), [problem("resume.file", "invalid_base64")]),
    CandidateValidationCase("base64url alphabet", candidate(resume(file: "-_-_")), [problem("resume.file", "invalid_base64")]),
    CandidateValidationCase("resume of 6 MiB + 1 byte", candidate(resume(file: base64OfSixMegabytesPlusOne)), [problem("resume.file", "file_size_limit")]),
    CandidateValidationCase(
        "picture without name, file as a number",
        candidate(#""picture": {"file": 12}"#),
        [problem("picture.file", "must_be_string"), problem("picture.name", "required")]),
    CandidateValidationCase("files is an object", candidate(#""files": {}"#), [problem("files", "must_be_array")]),
    CandidateValidationCase(
        "files: second entry wrong, third not an object",
        candidate(#""files": [{"name": "Challenge", "file": "QUJD"}, {"name": 5, "file": "%%%%"}, null, {"name": "Big", "file": "\#(base64OfSixMegabytesPlusOne)"}]"#),
        [problem("files[1].name", "must_be_string"), problem("files[1].file", "invalid_base64"),
         problem("files[2]", "must_be_object"), problem("files[3].file", "file_size_limit")]),

    // Source contact
    CandidateValidationCase("source contact is a string", candidate(#""source_contact": "Sam""#), [problem("source_contact", "must_be_object")]),
    CandidateValidationCase("source contact without email", candidate(#""source_contact": {"full_name": "Sam Sample"}"#), [problem("source_contact.email", "required")]),
    CandidateValidationCase(
        "source contact with bad email and numeric phone",
        candidate(#""source_contact": {"full_name": null, "email": "sam at example.org", "phone": 5550199}"#),
        [problem("source_contact.email", "invalid_email"), problem("source_contact.phone", "must_be_string")]),

    // Address
    CandidateValidationCase("lowercase country", candidate(#""address": {"country": "us"}"#), [problem("address.country", "incorrect_country_code")]),
    CandidateValidationCase("alpha-3 country", candidate(#""address": {"country": "USA"}"#), [problem("address.country", "incorrect_country_code")]),
    CandidateValidationCase("user-assigned country XK", candidate(#""address": {"country": "XK"}"#), [problem("address.country", "incorrect_country_code")]),
    CandidateValidationCase("reserved country UK", candidate(#""address": {"country": "UK"}"#), [problem("address.country", "incorrect_country_code")]),
    CandidateValidationCase("numeric country", candidate(#""address": {"country": 840}"#), [problem("address.country", "must_be_string")]),
    // U+212A KELVIN SIGN is canonically equivalent to "K": a Swift Set found "\u{212A}R" as "KR".
    CandidateValidationCase("Kelvin sign in a country code", candidate(#""address": {"country": "\#u{212A}R"}"#),
                            [problem("address.country", "incorrect_country_code")]),
    CandidateValidationCase("address is an array", candidate(#""address": ["US"]"#), [problem("address", "must_be_object")]),
    CandidateValidationCase(
        "address members of other types",
        candidate(#""address": {"country": "GB", "city": 1, "state": true, "zip": 11249, "street": {}}"#),
        [problem("address.city", "must_be_string"), problem("address.state", "must_be_string"),
         problem("address.zip", "must_be_string"), problem("address.street", "must_be_string")]),

    // Custom fields
    CandidateValidationCase("custom fields is an array", candidate(#""custom_fields": ["value1"]"#), [problem("custom_fields", "must_be_object")]),
    CandidateValidationCase(
        "custom fields with object, array and null values, keys sorted",
        candidate(#""custom_fields": {"zeta": {"a": 1}, "ok": "fine", "alpha": [1], "mid": null, "n": 1.5}"#),
        [problem("custom_fields.alpha", "invalid_custom_candidate_field"), problem("custom_fields.mid", "invalid_custom_candidate_field"),
         problem("custom_fields.zeta", "invalid_custom_candidate_field")]),

    // Many problems at once, in document order
    CandidateValidationCase(
        "every kind of problem in one payload",
        #"""
        {"position_uid": 7, "partner_candidate_id": "", "first_name": "", "last_name": "Example",
         "email": "nope", "linkedin_url": "https://example.com/in/ada", "prospect_status": "Hired",
         "resume": {"name": "cv.exe", "file": "@@@@"}, "picture": {"file": "QUJD", "name": null},
         "links": [{"url": "https://example.org"}, {"url": "example.org"}],
         "files": [{"file": "QUJD"}], "source_contact": {"email": ""},
         "address": {"country": "ZZ"}, "custom_fields": {"field1": []}, "note": false}
        """#,
        [problem("position_uid", "must_be_string"), problem("partner_candidate_id", "empty"),
         problem("first_name", "required"), problem("email", "invalid_email"),
         problem("linkedin_url", "invalid_linkedin_url"), problem("prospect_status", "invalid_prospect_status"),
         problem("resume.name", "invalid_file_extension"), problem("resume.file", "invalid_base64"),
         problem("picture.name", "required"), problem("links[1].url", "invalid_url"),
         problem("files[0].name", "required"), problem("source_contact.email", "required"),
         problem("address.country", "incorrect_country_code"),
         problem("custom_fields.field1", "invalid_custom_candidate_field"), problem("note", "must_be_string")]),
]

/// The payload validator: a table of documents and the exact problems each must produce.
@Suite struct CandidateValidatorTests {
    @Test(arguments: cases)
    func reportsExactlyTheseProblems(_ row: CandidateValidationCase) throws {
        let parsed = try StrictJSONParser.parseDocument(Data(row.json.utf8))
        #expect(CandidateValidator().validate(parsed.document, mayHaveControlCharacters: parsed.mayHaveControlCharacters) == row.expected)
        #expect(CandidateValidator().validate(parsed.document) == row.expected)
        #expect(ReferenceCandidateValidator().validate(parsed.document.value()) == row.expected)
    }

    @Test func tableIsLargeEnough() {
        #expect(cases.count >= 45)
    }

    @Test func countryListHasTheOfficialCodes() {
        #expect(CountryCodes.alpha2.count == 249)
        #expect(CountryCodes.alpha2.allSatisfy { code in
            code.count == 2 && code.unicodeScalars.allSatisfy { ("A"..."Z").contains($0) }
        })
        #expect(["US", "GB", "IL", "SS", "BQ", "AX"].allSatisfy(CountryCodes.alpha2.contains))
    }

    @Test(arguments: [("", nil), ("QQ==", 1), ("QUI=", 2), ("QUJD", 3), ("QUJD\nQUJD", 6), ("QUJ", nil), ("Q===", nil)] as [(String, Int?)])
    func decodedBase64Size(_ text: String, _ size: Int?) {
        #expect(CandidateValidator.decodedBase64Size(text) == size)
        if let size { #expect(Data(base64Encoded: text, options: .ignoreUnknownCharacters)?.count == size) }
    }

    @Test func problemsEncodeWithTheContractKeys() throws {
        let data = try JSONEncoder().encode(problem("links[0].url", "invalid_url"))
        let object = try JSONSerialization.jsonObject(with: data) as? [String: String]
        #expect(object == ["field": "links[0].url", "problem": "invalid_url"])
    }

    /// The validator reads a `JSONDocument` (positions in the body); its reference read a
    /// `JSONValue` tree. Every table row, mutated at random (a field's value swapped for one of
    /// the edge values, keys and strings written with escapes, a key's first letter replaced by
    /// U+212A KELVIN SIGN: a non-ASCII key, and for "K" its canonical twin), must give the same
    /// problems, in the same order, with and without the control pass. (The tree the reference
    /// reads is built from the document; `parsesAsTheTreeParserDid` checks that tree against
    /// the parser before.)
    @Test func documentReadingAgreesWithTheReference() throws {
        let seed = UInt64(Date().timeIntervalSince1970)
        var g = StrictJSONParserTests.SeededGenerator(state: seed)
        let edges: [JSONValue] = [
            .null, .bool(true), .number(7), .number(1.5), .string(""), .string("  \t"), .string("\u{2028}"), .string("\u{FEFF}"),
            .string("a\u{0}b"), .string("a\u{7F}"), .string("line\nbreak"), .string(String(repeating: "x", count: 255)),
            .string(String(repeating: "x", count: 256)), .string(String(repeating: "é", count: 255)), .string(String(repeating: "é", count: 256)),
            .string(String(repeating: "n", count: 10_001)), .string("QUJD"), .string("QUJ"), .string("QU\nJD"), .string("@@"),
            .string("https://www.linkedin.com/in/x"), .string("https://example.com/a"), .string("http://"), .string("a@b.c"),
            .string("a@b"), .string("Sourced"), .string("Do not contact"), .string("US"), .string("ZZ"), .string("\u{212A}R"),
            .string("cv.pdf"), .string("CV.DOCX"), .string(".pdf"), .string("日本"), .array([]), .object([:]),
            .array([.object(["url": .string("https://a.example")]), .string("x"), .null]),
            .array([.object(["name": .string("n"), "file": .string("QUJD")]), .object(["file": .number(1)])]),
            .object(["name": .string("cv.pdf"), "file": .string("QUJD")]), .object(["country": .string("DE"), "city": .null]),
            .object(["k": .object([:]), "ok": .string("v"), "a\u{1}": .bool(true)]),
        ]
        let fields = ["position_uid", "partner_candidate_id", "first_name", "middle_name", "last_name", "email", "phone",
                      "linkedin_url", "prospect_status", "resume", "picture", "links", "files", "source_contact", "address",
                      "custom_fields", "note", "extra\u{7}", "K"]
        func mutate(_ value: JSONValue, depth: Int) -> JSONValue {
            guard case .object(var members) = value else {
                return Int.random(in: 0..<3, using: &g) == 0 ? edges.randomElement(using: &g)! : value
            }
            for _ in 0..<Int.random(in: 0...3, using: &g) {
                let key = (members.keys.sorted() + fields).randomElement(using: &g)!
                members[key] = depth < 2 && Bool.random(using: &g) ? mutate(members[key] ?? .object([:]), depth: depth + 1)
                    : edges.randomElement(using: &g)!
            }
            if Int.random(in: 0..<6, using: &g) == 0, let key = members.keys.sorted().randomElement(using: &g) {
                // A non-ASCII key (the Kelvin sign is canonically equivalent to "K").
                members["\u{212A}" + key.dropFirst()] = members.removeValue(forKey: key)
            }
            return .object(members)
        }
        /// JSON text with each character written as it is or, at random, as a `\u` escape.
        func text(_ value: JSONValue) -> String {
            switch value {
            case .string(let string):
                var out = "\""
                for scalar in string.unicodeScalars {
                    let mustEscape = scalar == "\"" || scalar == "\\" || scalar.value < 0x20
                    if mustEscape || Int.random(in: 0..<8, using: &g) == 0 {
                        for unit in String(scalar).utf16 { out += String(format: "\\u%04x", unit) }
                    } else {
                        out.unicodeScalars.append(scalar)
                    }
                }
                return out + "\""
            case .array(let elements): return "[" + elements.map(text).joined(separator: ",") + "]"
            case .object(let members):
                return "{" + members.keys.sorted().map { text(.string($0)) + ":" + text(members[$0]!) }.joined(separator: ",") + "}"
            default: return value.jsonText
            }
        }
        var compared = 0
        for row in cases where row.json.utf8.count < 100_000 {
            let original = try JSONValue.parse(Data(row.json.utf8))
            for round in 0..<40 {
                let mutated = round == 0 ? original : mutate(original, depth: 0)
                guard let parsed = try? StrictJSONParser.parseDocument(Data(text(mutated).utf8)) else { continue }
                compared += 1
                let expected = ReferenceCandidateValidator().validate(parsed.document.value())
                #expect(CandidateValidator().validate(parsed.document) == expected, "seed \(seed), \(row.name), round \(round)")
                #expect(CandidateValidator().validate(parsed.document, mayHaveControlCharacters: parsed.mayHaveControlCharacters) == expected,
                        "seed \(seed), \(row.name), round \(round)")
            }
        }
        #expect(compared > 2_000)
    }

    /// The one-pass email check agrees with a split-based statement of its rule, on the edges;
    /// what went dead at a partner that checks addresses (found from outside) is refused.
    @Test func emailShapeMatchesTheSplitRule() {
        func splitRule(_ string: String) -> Bool {
            guard !CandidateValidator.hasSpaceOrControl(string) else { return false }
            let parts = string.split(separator: "@", omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty else { return false }
            let atext = Set("!#$%&'*+-/=?^_`{|}~")
            guard parts[0].split(separator: ".", omittingEmptySubsequences: false).allSatisfy({ !$0.isEmpty }),
                  parts[0].allSatisfy({ !$0.isASCII || $0.isLetter || $0.isNumber || atext.contains($0) || $0 == "." })
            else { return false }
            let labels = parts[1].split(separator: ".", omittingEmptySubsequences: false)
            return labels.count >= 2
                && labels.allSatisfy { label in
                    !label.isEmpty && label.first != "-" && label.last != "-"
                        && label.allSatisfy { !$0.isASCII || $0.isLetter || $0.isNumber || $0 == "-" }
                }
                && !labels.last!.allSatisfy { $0.isASCII && $0.isNumber }
        }
        let samples = ["a@b.c", "a@.b.c", "a@b.c.", "@b.c", "a@b", "a@@b.c", "a@b..c", "é@ü.de", "a.b@c.d", "a@b.c@d",
                       ".a@b.c", "a@b.", "a@.", "a@", "", "@", ".", "a@b.c.d.e", "a..b@c.d", "日本@例え.jp", "a@b.c\u{7F}",
                       "o'brien+tag@sub.example.co.uk", "A.B-C_D@Example-Mail.COM", "x@123.example", "x@a-b.c", "a.@b.c",
                       "x@-a.c", "x@a-.c", "x@a.c-", "x@a.-c", "x@a.123", "x@1.2.3.4",
                       String(repeating: "l", count: 64) + "@b.c", String(repeating: "l", count: 65) + "@b.c",
                       "x@" + String(repeating: "d", count: 63) + ".c", "x@" + String(repeating: "d", count: 64) + ".c"]
        let refusedFromOutside = [
            "mailto:ann@example.com", "<ann@example.com>", "ann\u{200B}@example.com", "ann\u{AD}@example.com",
            "ann\u{200E}@example.com", "\u{FEFF}ann@example.com", "ann@[192.0.2.1]", "\"ann\"@example.com", "ann@exam_ple.com",
            "ann.@example.com", "ann@example.com/", "ann(comment)@example.com", "ann@example.com:25", "ann,bob@example.com",
        ]
        for sample in samples + refusedFromOutside {
            #expect(CandidateValidator.isEmail(sample) == splitRule(sample), "\(sample)")
        }
        for sample in refusedFromOutside {
            #expect(!CandidateValidator.isEmail(sample), "\(sample)")
        }
        // No length of its own: the field's 255 characters are the limit (the reliability suite's
        // boundary case, a 239-character local part, is accepted).
        for sample in [String(repeating: "a", count: 239) + "@example.invalid", "a@" + String(repeating: "b", count: 240) + ".com", "a@b.c", "é@ü.de", "日本@例え.jp", "o'brien+tag@sub.example.co.uk", "x@123.example", "A.B-C_D@Example-Mail.COM"] {
            #expect(CandidateValidator.isEmail(sample), "\(sample)")
        }
    }

    /// The URL fast path finds the host URLComponents finds, or leaves the URL to it.
    @Test func plainURLHostsMatchTheParser() {
        let samples = [
            "https://www.linkedin.com/in/ada-example-000", "HTTPS://NL.LinkedIn.com/in/ada", "http://example.com",
            "http://example.com:8080/a?b=c&d=e", "https://example.com/", "https://example.com?x", "http://a.b.c/p;q=1/(x)",
            "https://example.com/a b", "https://exa mple.com", "https://example.com/%41", "https://example.com/%zz",
            "https://user@example.com/", "https://[::1]/", "https://example.com#frag", "https://example.com/a#b#c",
            "https://example.com:/", "https://example.com:80a/", "https://:80/", "https:///path", "https://", "http:/x.com",
            "ftp://example.com", "httpx://example.com", "https:example.com", "https://exämple.com/", "https://example.com/ä",
            "https://example.com/a|b", "https://example.com/a\\b", "https://example.com/a^b", "https://ex_ample.com/",
            "https://example.com:8080:9090/", "https://example.com/@user:pass", "https://example.com/?q=a:b@c/d?e",
            "HtTp://Example.COM/Path", "https://-.-/", "https://example.com/\u{7F}", "https://example.com/[x]",
        ]
        for sample in samples {
            #expect(CandidateValidator.httpHost(sample) == CandidateValidator.parsedHTTPHost(sample), "\(sample)")
            if let fast = CandidateValidator.plainHTTPHost(sample) {
                #expect(fast == CandidateValidator.parsedHTTPHost(sample), "\(sample)")
            }
        }
        #expect(CandidateValidator.plainHTTPHost("https://www.linkedin.com/in/ada-example-000") == "www.linkedin.com")
    }
}
