import Foundation

/// Checks a `POST /candidates` body against the partner's documented rules. Pure: it only
/// reads bytes and returns either the parsed object or the partner error to answer.
enum CandidateBodyValidator {
    /// A rule the body broke, with the partner's 400 code.
    struct Failure: Error, Equatable {
        var code: String
        var message: String
    }

    static let requiredFields = ["position_uid", "first_name", "last_name"]
    static let prospectStatuses: Set<String> = [
        "Sourced", "Contacted", "Responded", "Interested", "Not interested", "Do not contact",
    ]

    /// Parses `data` as a JSON object; nil when it is not one.
    static func parseObject(_ data: Data) -> [String: Any]? {
        (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
    }

    /// The identifiers worth recording even when the body is otherwise invalid.
    static func identifiers(in object: [String: Any]?) -> (positionUID: String?, partnerCandidateID: String?) {
        (stringValue(object?["position_uid"]), stringValue(object?["partner_candidate_id"]))
    }

    /// Validates a parsed body. The partner reports every violation as a 400; the codes come
    /// from its documentation (`required_field` for anything missing or malformed here).
    static func validate(_ object: [String: Any]?) -> Failure? {
        guard let object else {
            return Failure(code: "required_field", message: "Body must be a JSON object")
        }
        for field in requiredFields {
            guard let value = object[field] as? String, !value.trimmingCharacters(in: .whitespaces).isEmpty else {
                return Failure(code: "required_field", message: "Missing required field: \(field)")
            }
        }
        if let status = object["prospect_status"], !(status is NSNull) {
            guard let text = status as? String, prospectStatuses.contains(text) else {
                return Failure(code: "required_field", message: "Invalid prospect_status")
            }
        }
        if let contact = object["source_contact"], !(contact is NSNull) {
            guard let contact = contact as? [String: Any], let email = contact["email"] as? String, !email.isEmpty
            else {
                return Failure(code: "required_field", message: "Missing required field: source_contact.email")
            }
        }
        return nil
    }

    /// Accepts a string or an integer id (clients differ), normalised to a string.
    static func stringValue(_ value: Any?) -> String? {
        switch value {
        case let text as String: return text
        case let number as Int: return String(number)
        default: return nil
        }
    }
}
