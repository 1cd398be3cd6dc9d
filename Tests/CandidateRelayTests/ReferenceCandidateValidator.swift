import Foundation

@testable import CandidateRelay

/// The validator as it was before it read `JSONDocument`s: it checked a `JSONValue` tree, with
/// a dictionary per object. Kept here, unchanged but for its name, as the reference that the
/// document-reading validator must agree with, problem for problem (`CandidateValidatorTests`'
/// `documentReadingAgreesWithTheReference`, `StrictJSONParserTests`' mutated bodies). Its
/// format rules are `CandidateValidator`'s own.
struct ReferenceCandidateValidator {
    /// Returns every problem of `document`; an empty array means the partner should accept it.
    ///
    /// Control characters are found in one pass over every string (values and keys), and win
    /// over any other problem of the same field but `required`. `mayHaveControlCharacters: false` (the parser
    /// saw none) skips that pass.
    func validate(_ document: JSONValue, mayHaveControlCharacters: Bool = true) -> [ValidationProblem] {
        guard case .object(let fields) = document else {
            return [ValidationProblem(field: "$", problem: "must_be_object")]
        }
        var problems: [ValidationProblem] = []
        let controlPaths = mayHaveControlCharacters ? Self.controlCharacterPaths(document, at: "") : []
        // Looked up by every field checked: a set (an array searched each time was quadratic in
        // the elements of a long array, each with a control character).
        var controlPathsLeft = Set(controlPaths)
        func note(_ field: String, _ problem: String?) {
            if !controlPathsLeft.isEmpty, controlPathsLeft.remove(field) != nil {
                // A blank required field ("  \n") is reported as missing, as it always was.
                problems.append(ValidationProblem(field: field, problem: problem == "required" ? "required" : "invalid_characters"))
            } else if let problem {
                problems.append(ValidationProblem(field: field, problem: problem))
            }
        }
        /// The members of an optional object field; records `must_be_object` for another type.
        func members(_ value: JSONValue?, at path: String) -> [String: JSONValue]? {
            switch value {
            case nil, .null?: return nil
            case .object(let members)?: return members
            case _?: note(path, "must_be_object"); return nil
            }
        }
        /// The elements of an optional array field, with their paths; records `must_be_array`.
        func elements(_ value: JSONValue?, at path: String) -> [(path: String, value: JSONValue)] {
            switch value {
            case nil, .null?: return []
            case .array(let elements)?: return elements.enumerated().map { ("\(path)[\($0)]", $1) }
            case _?: note(path, "must_be_array"); return []
            }
        }
        /// An array element that must be an object (`null` included in the misfits).
        func element(_ value: JSONValue, at path: String) -> [String: JSONValue]? {
            if case .object(let members) = value { return members }
            note(path, "must_be_object")
            return nil
        }

        let short = CandidateValidator.shortLimit
        note("position_uid", Self.text(fields["position_uid"], required: true, limit: short))
        note("partner_candidate_id", Self.text(fields["partner_candidate_id"], limit: short) {
            // The partner keys its 409 detection on this id: a blank one would match nothing useful.
            CandidateValidator.isBlank($0) ? "empty" : nil
        })
        note("first_name", Self.text(fields["first_name"], required: true, limit: short))
        note("middle_name", Self.text(fields["middle_name"], limit: short))
        note("last_name", Self.text(fields["last_name"], required: true, limit: short))
        note("email", Self.text(fields["email"], limit: short, format: CandidateValidator.emailProblem))
        for name in ["phone", "mobile_phone", "national_id"] {
            note(name, Self.text(fields[name], limit: short))
        }
        note("linkedin_url", Self.text(fields["linkedin_url"], limit: CandidateValidator.urlLimit) {
            CandidateValidator.isLinkedInURL($0) ? nil : "invalid_linkedin_url"
        })
        note("salary_expectations", Self.text(fields["salary_expectations"], limit: short))
        note("prospect_status", Self.text(fields["prospect_status"], limit: short) {
            $0.utf8.allSatisfy({ $0 < 0x80 }) && CandidateValidator.prospectStatuses.contains($0) ? nil : "invalid_prospect_status"
        })
        if let resume = members(fields["resume"], at: "resume") {
            note("resume.name", Self.text(resume["name"], required: true, limit: short) { name in
                let lower = name.lowercased()
                let known = CandidateValidator.resumeExtensions.contains {
                    lower.hasSuffix(".\($0)") && lower.count > $0.count + 1
                }
                return known ? nil : "invalid_file_extension"
            })
            note("resume.file", Self.fileProblem(resume["file"]))
        }
        if let picture = members(fields["picture"], at: "picture") {
            note("picture.file", Self.fileProblem(picture["file"]))
            note("picture.name", Self.text(picture["name"], required: true, limit: short))
        }
        for (path, value) in elements(fields["links"], at: "links") {
            guard let link = element(value, at: path) else { continue }
            note("\(path).url", Self.text(link["url"], required: true, limit: CandidateValidator.urlLimit) {
                CandidateValidator.httpHost($0) == nil ? "invalid_url" : nil
            })
        }
        for (path, value) in elements(fields["files"], at: "files") {
            guard let file = element(value, at: path) else { continue }
            note("\(path).name", Self.text(file["name"], required: true, limit: short))
            note("\(path).file", Self.fileProblem(file["file"]))
        }
        if let contact = members(fields["source_contact"], at: "source_contact") {
            note("source_contact.full_name", Self.text(contact["full_name"], limit: short))
            note("source_contact.email",
                 Self.text(contact["email"], required: true, limit: short, format: CandidateValidator.emailProblem))
            note("source_contact.phone", Self.text(contact["phone"], limit: short))
        }
        if let address = members(fields["address"], at: "address") {
            note("address.country", Self.text(address["country"], limit: short) {
                // ASCII first: a Set of Swift strings compares by canonical equivalence, and
                // U+212A KELVIN SIGN is one with "K" ("\u{212A}R" passed as "KR").
                $0.utf8.allSatisfy({ $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") }) && CountryCodes.alpha2.contains($0)
                    ? nil : "incorrect_country_code"
            })
            for name in ["city", "state", "zip", "street"] {
                note("address.\(name)", Self.text(address[name], limit: short))
            }
        }
        if let custom = members(fields["custom_fields"], at: "custom_fields") {
            for key in custom.keys.sorted() {
                switch custom[key] {
                case .string?, .number?, .bool?: continue
                default: note("custom_fields.\(key)", "invalid_custom_candidate_field")
                }
            }
        }
        note("note", Self.text(fields["note"], limit: CandidateValidator.noteLimit))
        // Every other string (custom field values and keys, fields the partner page does not
        // list, members of known objects it does not list) is forwarded too: the same rule.
        for path in controlPaths where controlPathsLeft.contains(path) {
            problems.append(ValidationProblem(field: path, problem: "invalid_characters"))
        }
        return problems
    }

    // MARK: - Control characters

    /// U+0000–U+001F and U+007F (CONTRACT section 4); `multiline` allows tab, CR and LF.
    static func hasControlCharacter(_ string: String, multiline: Bool = false) -> Bool {
        func isControl(_ byte: UInt8) -> Bool {
            if byte == 0x7F { return true }
            guard byte < 0x20 else { return false }
            return !(multiline && (byte == 0x09 || byte == 0x0A || byte == 0x0D))
        }
        var string = string
        return string.withUTF8 { $0.contains(where: isControl) }
    }

    /// The paths of strings (values and object keys) holding control characters. `note` (multi-
    /// line text) and base64 `file` members (MIME line breaks) may hold tab, CR and LF.
    static func controlCharacterPaths(_ value: JSONValue, at path: String, multiline: Bool = false) -> [String] {
        switch value {
        case .string(let string):
            return Self.hasControlCharacter(string, multiline: multiline) ? [path.isEmpty ? "$" : path] : []
        case .array(let elements):
            return elements.enumerated().flatMap { Self.controlCharacterPaths($1, at: "\(path)[\($0)]") }
        case .object(let members):
            return members.keys.sorted().flatMap { key -> [String] in
                let child = path.isEmpty ? key : "\(path).\(key)"
                if Self.hasControlCharacter(key) { return [child] }
                let multiline = (key == "file" && (["resume", "picture"].contains(path) || path.wholeMatch(of: /files\[[0-9]+\]/) != nil))
                    || child == "note"
                return Self.controlCharacterPaths(members[key]!, at: child, multiline: multiline)
            }
        case .null, .bool, .number:
            return []
        }
    }

    // MARK: - Field rules (each returns the problem code, or nil when the value is fine)

    /// A string field: type, presence, length (in Unicode scalars), then its format.
    ///
    /// Scalars rather than grapheme clusters because a combining accent counts as a character
    /// in most databases and languages; the stricter count keeps the partner from refusing it.
    static func text(
        _ value: JSONValue?, required: Bool = false, limit: Int?,
        format: (String) -> String? = { _ in nil }
    ) -> String? {
        switch value {
        case nil, .null?:
            return required ? "required" : nil
        case .string(let string)?:
            if required, CandidateValidator.isBlank(string) { return "required" }
            // UTF-8 length bounds the scalar count: count scalars only when it could matter.
            if let limit, string.utf8.count > limit, string.unicodeScalars.count > limit { return "string_size_limit" }
            return format(string)
        case _?:
            return "must_be_string"
        }
    }

    /// A required base64 file: it must decode, and to at most `CandidateValidator.maxDecodedFileBytes`.
    static func fileProblem(_ value: JSONValue?) -> String? {
        Self.text(value, required: true, limit: nil) { string in
            guard let size = CandidateValidator.decodedBase64Size(string) else { return "invalid_base64" }
            return size > CandidateValidator.maxDecodedFileBytes ? "file_size_limit" : nil
        }
    }
}
