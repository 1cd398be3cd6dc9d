import Crypto
import Foundation
import Hummingbird
import Logging

/// `POST /candidates`: the partner's "Create a candidate", with faults applied first
/// (close, latency, injected status), then auth, rate limit, validation and duplicate detection.
struct CandidateEndpoint: Sendable {
    let configuration: PartnerSimulatorConfiguration
    let store: SimulatorStore
    let authenticator: BearerAuthenticator
    let logger: Logger

    /// Largest body read; above it the request is answered 413 rather than buffered.
    static let maximumBodyBytes = 64 * 1024 * 1024

    private static let idempotencyKey = HTTPFields.Element.Name("Idempotency-Key")!
    private static let conflictMessage =
        "Candidate with provided partner_candidate_id already exists in position with status in progress"

    /// Answers one create request and records it (identifiers only) in the snapshot.
    func handle(_ request: Request, context: SimulatorRequestContext) async throws -> Response {
        let receivedAt = Date()
        var request = request
        let body: Data?
        do {
            body = Data(try await request.collectBody(upTo: Self.maximumBodyBytes).readableBytesView)
        } catch {
            body = nil
        }
        let object = body.flatMap(CandidateBodyValidator.parseObject)
        let ids = CandidateBodyValidator.identifiers(in: object)
        var record = ReceivedRequest(
            at: receivedAt,
            positionUID: ids.positionUID,
            partnerCandidateID: ids.partnerCandidateID,
            status: 0,
            idempotencyKey: request.headers[Self.idempotencyKey],
            userAgent: request.headers[.userAgent],
            apiKey: Self.issuer(of: request.headers[.authorization])
        )
        record.acceptEncoding = request.headers[.acceptEncoding]
        record.bodySHA256 = body.map { SHA256.hash(data: $0).map { String(format: "%02x", $0) }.joined() }
        let faults = store.faults
        if faults.closeRate > 0, Double.random(in: 0..<1) < faults.closeRate {
            record.error = "connection_closed"
            finish(record)
            await context.closeConnection()
            // Nothing reaches the client: the channel is already closed when this is written.
            return Response(status: .internalServerError)
        }
        if let key = record.apiKey, let delay = faults.latencyMsByAPIKey[key] {
            await store.stall(milliseconds: delay) { $0.latencyMsByAPIKey[key] != nil }
        } else if faults.latencyMs > 0 {
            try? await Task.sleep(for: .milliseconds(faults.latencyMs))
        }
        let response: (Response, String?)
        if let status = store.takeInjectedStatus(apiKey: record.apiKey) {
            response = injected(status: status, faults: faults)
        } else if body == nil {
            response = error(413, "string_size_limit", "Request body too large")
        } else {
            response = process(object: object, request: request, faults: faults, now: Date())
        }
        record.status = response.0.status.code
        record.error = response.1
        finish(record)
        return faults.stallBodyMs > 0 ? stallingBody(response.0, milliseconds: faults.stallBodyMs) : response.0
    }

    /// The same answer, but only its head and first body byte go at once; the rest follows
    /// after `milliseconds` (or never, if the client gives up and closes first).
    func stallingBody(_ response: Response, milliseconds: Int) -> Response {
        let original = response.body
        let store = self.store
        return Response(status: response.status, headers: response.headers, body: ResponseBody(contentLength: original.contentLength) { writer in
            let collector = BufferCollector()
            try await original.write(collector)
            var rest = collector.buffer.buffer
            let first = rest.readSlice(length: min(1, rest.readableBytes)) ?? ByteBuffer()
            try await writer.write(first)
            await store.stall(milliseconds: milliseconds) { $0.stallBodyMs > 0 }
            try await writer.write(rest)
            try await writer.finish(nil)
        })
    }

    /// The `iss` claim of a bearer JWT, unverified (for the inspection record only).
    static func issuer(of authorization: String?) -> String? {
        guard let authorization, authorization.lowercased().hasPrefix("bearer ") else { return nil }
        let parts = authorization.dropFirst(7).split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let claims = Base64URL.decode(parts[1]),
              let object = try? JSONSerialization.jsonObject(with: claims) as? [String: Any] else { return nil }
        return object["iss"] as? String
    }

    /// The real handling once no fault fired. Returns the answer and its error code (if any).
    private func process(
        object: [String: Any]?,
        request: Request,
        faults: SimulatorFaults,
        now: Date
    ) -> (Response, String?) {
        let auth = authenticator.authenticate(
            authorization: request.headers[.authorization], faults: faults, now: now)
        let bucket: String
        switch auth {
        case .refused(let message): return error(401, "unauthorized", message)
        case .accepted(let key): bucket = key
        }
        guard
            store.admit(
                key: configuration.rateLimitScope == .partner ? "partner" : bucket, limit: configuration.rateLimitRequests,
                window: configuration.rateLimitPerSeconds, now: now)
        else {
            let headers = SimulatorResponse.retryAfterHeaders(status: 429, faults: faults)
            return error(429, "too_many_requests", "Rate limit exceeded", headers: headers)
        }
        if let failure = CandidateBodyValidator.validate(object) {
            return error(400, failure.code, failure.message)
        }
        // validate() guarantees an object with a non-empty string position_uid.
        guard let object, let positionUID = object["position_uid"] as? String else {
            return error(400, "required_field", "Missing required field: position_uid")
        }
        switch positionUID {
        case "missing": return error(404, "position_not_found", "Position not found")
        case "forbidden": return error(403, "no_permission", "No permission for this position")
        default: break
        }
        let partnerCandidateID = CandidateBodyValidator.stringValue(object["partner_candidate_id"])
        switch store.createCandidate(positionUID: positionUID, partnerCandidateID: partnerCandidateID) {
        case .conflict(let existingUID):
            // The partner's examples show candidate_uid both as a number and as a string.
            let uid: Any = Int(existingUID).map { $0 as Any } ?? existingUID
            return error(409, "candidate_post_conflict", Self.conflictMessage, extra: ["candidate_uid": uid])
        case .created(let uid):
            return (SimulatorResponse.json(status: 201, object: candidate(uid: uid, from: object, at: now)), nil)
        }
    }

    /// The Candidate answer: the partner's shape, echoing what the real API echoes.
    private func candidate(uid: String, from object: [String: Any], at now: Date) -> [String: Any] {
        let timestamp = now.formatted(.iso8601)
        var candidate: [String: Any] = [
            "uid": uid,
            "position_uid": object["position_uid"] ?? NSNull(),
            "time_created": timestamp,
            "time_last_status_changed": timestamp,
            "current_steps": [["name": "CV Screen", "type": "Go/No-go", "time_scheduled": timestamp]],
            "completed_steps": [Any](),
            "status": "In progress",
        ]
        for field in ["first_name", "last_name", "email", "source_contact"] {
            if let value = object[field] { candidate[field] = value }
        }
        return candidate
    }

    private func injected(status: Int, faults: SimulatorFaults) -> (Response, String?) {
        // An injected 409 has no candidate_uid, so clients must treat it as a dead letter.
        let code = status == 409 ? "candidate_post_conflict" : "injected_fault"
        let headers = SimulatorResponse.retryAfterHeaders(status: status, faults: faults)
        return error(status, code, "Injected fault (simulated)", headers: headers)
    }

    private func error(
        _ status: Int, _ code: String, _ message: String,
        extra: [String: Any] = [:], headers: HTTPFields = [:]
    ) -> (Response, String?) {
        let response = SimulatorResponse.partnerError(
            status: status, code: code, message: message, extra: extra, headers: headers)
        return (response, code)
    }

    /// Stores the record and logs it; identifiers only, never the candidate's personal data.
    private func finish(_ record: ReceivedRequest) {
        store.record(record)
        logger.debug(
            "partner-sim create",
            metadata: [
                "position_uid": "\(record.positionUID ?? "-")",
                "partner_candidate_id": "\(record.partnerCandidateID ?? "-")",
                "status": "\(record.status)",
                "error": "\(record.error ?? "-")",
            ])
    }
}

/// Collects a response body into one buffer (to hold part of it back).
private struct BufferCollector: ResponseBodyWriter {
    final class Box: @unchecked Sendable { var buffer = ByteBuffer() }
    let buffer = Box()
    mutating func write(_ part: ByteBuffer) async throws {
        var part = part
        buffer.buffer.writeBuffer(&part)
    }
    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {}
}
