import Foundation

/// What the simulator has seen and done so far, as returned by `GET /_sim/state`.
///
/// Tests assert on this instead of on the relay's internals: it is what the partner observed.
public struct SimulatorSnapshot: Sendable, Codable {
    /// Every `POST /candidates` received, in arrival order, whatever its answer.
    public var requests: [ReceivedRequest]
    /// Every candidate created, in creation order.
    public var candidates: [CreatedCandidate]
    /// OAuth access tokens issued.
    public var tokensIssued: Int
    /// OAuth token endpoint hits, failures included.
    public var tokenRequests: Int
    /// The `Accept-Encoding` of the last token request (nil: none sent, or no request yet).
    public var tokenAcceptEncoding: String?

    public init(
        requests: [ReceivedRequest] = [],
        candidates: [CreatedCandidate] = [],
        tokensIssued: Int = 0,
        tokenRequests: Int = 0,
        tokenAcceptEncoding: String? = nil
    ) {
        self.requests = requests
        self.candidates = candidates
        self.tokensIssued = tokensIssued
        self.tokenRequests = tokenRequests
        self.tokenAcceptEncoding = tokenAcceptEncoding
    }

    /// How many candidates were created for one (position, partner candidate id) pair; more
    /// than one means the simulator's duplicate detection was bypassed, which should never happen.
    public func createdCount(positionUID: String, partnerCandidateID: String) -> Int {
        candidates.filter { $0.positionUID == positionUID && $0.partnerCandidateID == partnerCandidateID }.count
    }
}

/// One `POST /candidates` as the simulator saw it. Deliberately carries no personal fields
/// (names, emails, phones...) so snapshots can be printed and logged freely.
public struct ReceivedRequest: Sendable, Codable {
    /// When the request arrived.
    public var at: Date
    /// `position_uid` from the body, when the body could be read.
    public var positionUID: String?
    /// `partner_candidate_id` from the body, when present.
    public var partnerCandidateID: String?
    /// Status answered; 0 when the connection was closed without an answer.
    public var status: Int
    /// The partner error code answered, if any.
    public var error: String?
    /// The `Idempotency-Key` header, if the client sent one.
    public var idempotencyKey: String?
    /// The `User-Agent` header, if any.
    public var userAgent: String?
    /// The `Accept-Encoding` header, if any.
    public var acceptEncoding: String?
    /// The JWT `iss` (the customer's api-key) the request carried, as sent: `status` says
    /// whether it was accepted. Nil for OAuth access tokens and missing or unreadable tokens.
    public var apiKey: String?
    /// SHA-256 (hex) of the body as received: tests compare what was sent without the
    /// simulator keeping personal data.
    public var bodySHA256: String?

    public init(
        at: Date,
        positionUID: String? = nil,
        partnerCandidateID: String? = nil,
        status: Int,
        error: String? = nil,
        idempotencyKey: String? = nil,
        userAgent: String? = nil,
        apiKey: String? = nil
    ) {
        self.at = at
        self.positionUID = positionUID
        self.partnerCandidateID = partnerCandidateID
        self.status = status
        self.error = error
        self.idempotencyKey = idempotencyKey
        self.userAgent = userAgent
        self.apiKey = apiKey
    }
}

/// A candidate the simulator created (identifiers only, no personal data).
public struct CreatedCandidate: Sendable, Codable {
    /// The uid answered; either "NN.AAA"-style or a plain integer, as the real partner's examples show.
    public var uid: String
    /// Position the candidate was created in.
    public var positionUID: String
    /// The client's own id for the candidate, which drives 409 detection.
    public var partnerCandidateID: String?

    public init(uid: String, positionUID: String, partnerCandidateID: String?) {
        self.uid = uid
        self.positionUID = positionUID
        self.partnerCandidateID = partnerCandidateID
    }
}
