import Foundation

/// What a partner answer means, before the retry budget is applied (CONTRACT section 5's table).
public enum Classification: Sendable, Equatable {
    case delivered(candidateUID: String, summary: String?)
    case linked(candidateUID: String, error: String?)
    /// 401 other than `duplicate_candidate`: mint a fresh token and resend once, at once.
    case refreshTokenAndResend
    case retry(error: String, retryAfter: Date?)
    case dead(error: String)
}

/// Pure: maps one partner answer to a classification. Table-tested row by row.
public enum OutcomeClassifier {
    static let deadStatuses: Set<Int> = [400, 403, 404, 405, 410, 413, 422]
    /// 421 (Misdirected Request) too, beyond CONTRACT section 5's list: the server says it did
    /// not handle the request on that connection, which RFC 9110 lets a client send again.
    static let retryStatuses: Set<Int> = [408, 421, 425, 429]

    public static func classify(_ answer: PartnerAnswer, now: Date) -> Classification {
        switch answer {
        case .transportFailure(let failure):
            return .retry(error: failure.rawValue, retryAfter: nil)
        case .response(let status, let retryAfterHeader, let body, _):
            if (200..<300).contains(status) {
                let document = try? StrictJSONParser.parseAnswer(body)
                guard let uid = PartnerErrorBody.usableUID(document?["uid"]) else {
                    // A 2xx without a Candidate (a proxy's page, a 204), or with a uid no one
                    // could use: resend; if the partner did create it, its 409 then links us to
                    // the real uid.
                    let given = document?["uid"].map { $0 != .null } ?? false
                    return .retry(error: given ? "invalid_uid_in_response" : "no_uid_in_response", retryAfter: nil)
                }
                return .delivered(candidateUID: uid, summary: CandidateSummary.json(from: document))
            }
            let parsed = PartnerErrorBody(body)
            let code = parsed.error ?? "http_\(status)"
            switch status {
            case 409 where parsed.error == "candidate_post_conflict" || parsed.candidateUID != nil:
                guard let uid = parsed.candidateUID else { return .dead(error: code) }
                return .linked(candidateUID: uid, error: code)
            case 401 where parsed.error == "duplicate_candidate":
                return .dead(error: code)
            case 401:
                return .refreshTokenAndResend
            case _ where retryStatuses.contains(status), 300..<400, 500..<600:
                return .retry(error: code, retryAfter: retryAfterHeader.flatMap { RetryAfter.parse($0, now: now) })
            case _ where deadStatuses.contains(status), 409:
                return .dead(error: code)
            case 400..<500:
                // Unlisted 4xx: the request itself is refused; resending the same bytes will not help.
                return .dead(error: code)
            default:
                return .retry(error: code, retryAfter: nil)
            }
        }
    }
}

/// The non-personal fields of the partner's Candidate, kept on the record (CONTRACT section 5).
enum CandidateSummary {
    static let fields = ["uid", "position_uid", "status", "time_created", "time_last_status_changed", "current_steps", "completed_steps"]

    static func json(from document: JSONValue?) -> String? {
        guard case .object(let members)? = document else { return nil }
        var kept: [String: JSONValue] = [:]
        for field in fields { if let value = members[field] { kept[field] = value } }
        return JSONValue.object(kept).jsonText
    }
}
