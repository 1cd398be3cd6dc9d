import Foundation
import GRDB

/// What the relay shows about an event (CONTRACT section 5): never the personal payload.
public struct EventRecord: Sendable, Equatable {
    public var id: String
    public var account: String
    public var state: EventState
    public var attempts: Int
    public var positionUID: String
    public var partnerCandidateID: String
    public var candidateUID: String?
    public var receivedAt: Date
    public var updatedAt: Date
    public var nextAttemptAt: Date?
    public var lastStatus: Int?
    public var lastError: String?
    /// The non-personal fields of the partner's Candidate, as JSON text.
    public var partnerResponse: String?

    /// The columns `init(row:)` needs, for SELECTs.
    static let columns = """
        id, account, state, attempts, position_uid, partner_candidate_id, candidate_uid, received_at, updated_at,
        next_attempt_at, last_status, last_error, partner_response
        """

    /// A just-inserted event, exactly as a read of its row returns it (no read-back query).
    init(inserted submission: Submission) {
        let at = Date(millis: submission.receivedAt.millis)
        id = submission.id
        account = submission.account
        state = .pending
        attempts = 0
        positionUID = submission.positionUID
        partnerCandidateID = submission.partnerCandidateID
        receivedAt = at
        updatedAt = at
        nextAttemptAt = at
    }

    init(row: Row) {
        id = row["id"]
        account = row["account"]
        state = EventState(rawValue: row["state"]) ?? .pending
        attempts = row["attempts"]
        positionUID = row["position_uid"]
        partnerCandidateID = row["partner_candidate_id"]
        candidateUID = row["candidate_uid"]
        receivedAt = Date(millis: row["received_at"])
        updatedAt = Date(millis: row["updated_at"])
        nextAttemptAt = (row["next_attempt_at"] as Millis?).map(Date.init(millis:))
        lastStatus = row["last_status"]
        lastError = row["last_error"]
        partnerResponse = row["partner_response"]
    }
}

/// One row of an event's history: one per attempt.
public struct AttemptRecord: Sendable, Equatable {
    public var attempt: Int
    public var at: Date
    public var outcome: String
    public var status: Int?
    public var error: String?
    public var latencyMs: Int?
}

/// What `status` reports.
public struct OutboxStatus: Sendable, Equatable {
    public var counts: [EventState: Int]
    public var oldestPendingAgeSeconds: Double?
    public var lastDeliveryAt: Date?
    /// The same per account (every account with events; `lastDeliveryAt` is not kept per account).
    public var accounts: [String: AccountStatus] = [:]
}

/// One account's part of `OutboxStatus`.
public struct AccountStatus: Sendable, Equatable {
    public var counts: [EventState: Int] = [:]
    public var oldestPendingAgeSeconds: Double?
    public var undelivered: Int { (counts[.pending] ?? 0) + (counts[.inFlight] ?? 0) }
}
