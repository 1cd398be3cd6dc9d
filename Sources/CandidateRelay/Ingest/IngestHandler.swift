import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging

/// The webhook's decision pipeline, in the contract's order (413, 401, 415, 400, 422), then
/// idempotency and the durable write. Answers 202 only after the outbox commit returned.
public struct IngestHandler: Sendable {
    let outbox: Outbox
    /// Each known account's authenticator (CONTRACT section 8): its keys are the accounts.
    let authenticators: Live<[String: IngestAuthenticator]>
    let settings: Live<IngestConfiguration>
    let validator = CandidateValidator()
    let doorbell: Doorbell
    let metrics: RelayMetrics
    let logger: Logger
    let stopFlag: StopFlag
    let now: @Sendable () -> Date

    static let webhookID = HTTPField.Name("webhook-id")!
    static let webhookTimestamp = HTTPField.Name("webhook-timestamp")!
    static let webhookSignature = HTTPField.Name("webhook-signature")!
    static let idempotencyKey = HTTPField.Name("Idempotency-Key")!

    /// Reads the body within the limit (413 without buffering more than `max_body_bytes`),
    /// straight into the `Data` that is validated and stored: a large body is held once, not
    /// once as a buffer and once more as its copy.
    func readBody(_ request: Request) async throws(IngestError) -> Data {
        let limit = settings.value.maxBodyBytes
        let declared = request.headers[.contentLength].flatMap(Int.init)
        if let declared, declared > limit {
            throw .payloadTooLarge(limit: limit)
        }
        var body = Data()
        if let declared, declared > 0 { body.reserveCapacity(declared) }
        do {
            for try await chunk in request.body {
                if body.count + chunk.readableBytes > limit { throw IngestError.payloadTooLarge(limit: limit) }
                chunk.withUnsafeReadableBytes { body.append(contentsOf: $0) }
            }
        } catch let error as IngestError {
            throw error
        } catch {
            throw .malformedJSON
        }
        return body
    }

    /// `POST /v1/candidates` (the `default` account) and `POST /v1/accounts/{account}/candidates`.
    public func accept(_ request: Request, account: String = AccountConfiguration.defaultID) async -> Response {
        do {
            let (response, fields) = try await process(request, account: account)
            let message = response.status == .accepted ? "candidate accepted" : "replay of a known event"
            logger.event(.info, "ingest.accepted", message, fields)
            return response
        } catch {
            // An unknown account's name is the sender's text: it becomes neither a label nor a field.
            let known = error.code == IngestError.unknownAccount.code ? "" : account
            metrics.ingest(result: error.code, account: known)
            logger.event(error.code == "unavailable" ? .warning : .notice, "ingest.rejected",
                         "webhook rejected", LogFields(account: known.isEmpty ? nil : known, status: Int(error.status.code), error: error.code))
            return error.response
        }
    }

    /// The path of an event's record for its account.
    static func location(_ record: EventRecord) -> String {
        record.account == AccountConfiguration.defaultID
            ? "/v1/candidates/\(record.id)" : "/v1/accounts/\(record.account)/candidates/\(record.id)"
    }

    private func process(_ request: Request, account: String) async throws(IngestError) -> (Response, LogFields) {
        // Before anything is read: an unknown account stores nothing and learns nothing.
        guard let authenticator = authenticators.value[account] else { throw .unknownAccount }
        if stopFlag.isStopping { throw .unavailable(reason: "shutting down", retryAfterSeconds: 5) }
        let body = try await readBody(request)
        let headers = request.headers
        let auth = IngestAuthenticator.Headers(
            webhookID: headers[Self.webhookID], webhookTimestamp: headers[Self.webhookTimestamp],
            webhookSignature: headers[Self.webhookSignature], authorization: headers[.authorization])
        let receivedAt = now()
        guard authenticator.isAuthentic(auth, body: body, now: receivedAt) else { throw .unauthorized }
        guard Self.isJSON(headers[.contentType]) else { throw .unsupportedMediaType }
        let document: JSONValue
        let mayHaveControlCharacters: Bool
        do {
            (document, mayHaveControlCharacters) = try StrictJSONParser.parseDocument(body)
        } catch {
            throw .malformedJSON
        }
        let problems = validator.validate(document, mayHaveControlCharacters: mayHaveControlCharacters)
        guard problems.isEmpty else { throw .validationFailed(problems) }

        let key = Self.idempotencyKey(webhookID: headers[Self.webhookID], idempotencyKey: headers[Self.idempotencyKey])
        let id = EventID.generate(now: receivedAt)
        var partnerCandidateID = document["partner_candidate_id"]?.stringValue ?? ""
        var payload = body
        let generated = partnerCandidateID.isEmpty
        if generated {
            partnerCandidateID = id
            payload = Self.settingPartnerCandidateID(id, in: body, document: document)
        }
        let submission = Submission(
            id: id, account: account, idempotencyKey: key, bodySHA256: Self.hex(SHA256.hash(data: body)),
            positionUID: document["position_uid"]?.stringValue ?? "", partnerCandidateID: partnerCandidateID,
            payload: payload, receivedAt: receivedAt)
        let result: AcceptResult
        do {
            result = try await outbox.accept(submission, maxBacklog: settings.value.maxBacklog)
        } catch OutboxError.idempotencyKeyReused {
            throw .idempotencyKeyReused
        } catch OutboxError.backlogFull(let limit) {
            throw .unavailable(reason: "backlog above \(limit) events; retry later", retryAfterSeconds: 30)
        } catch {
            logger.event(.error, "storage.failed", "outbox write failed", LogFields(error: Self.errorCode(error)))
            throw .unavailable(reason: "storage unavailable; retry later", retryAfterSeconds: 5)
        }
        switch result {
        case .created(let record):
            doorbell.ring()
            metrics.ingest(result: "accepted", account: account)
            // Written directly (keys sorted, as every contract object): this is the hot path.
            let body = "{\"id\":\(ContractJSON.quoted(record.id)),\"partner_candidate_id\":\(ContractJSON.quoted(record.partnerCandidateID)),"
                + (generated ? "\"partner_candidate_id_generated\":true," : "") + "\"state\":\"pending\"}"
            let response = Response(
                status: .accepted, headers: [.contentType: "application/json", .location: Self.location(record)],
                body: .init(byteBuffer: ByteBuffer(string: body)))
            return (response, LogFields(account: account, eventID: record.id, positionUID: record.positionUID,
                                        partnerCandidateID: record.partnerCandidateID))
        case .duplicate(let record):
            metrics.ingest(result: "duplicate", account: account)
            let object: [String: Any] = ["id": record.id, "state": record.state.rawValue, "partner_candidate_id": record.partnerCandidateID, "duplicate": true]
            let response = Response.json(.ok, object, headers: [.location: Self.location(record)])
            return (response, LogFields(account: account, eventID: record.id, positionUID: record.positionUID, partnerCandidateID: record.partnerCandidateID, extra: ["duplicate": "true"]))
        }
    }

    /// Lower-case hex of a digest (without a `String(format:)` per byte on the ingest path).
    static func hex(_ digest: SHA256.Digest) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(64)
        for byte in digest {
            bytes.append(digits[Int(byte >> 4)])
            bytes.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The idempotency key: `webhook-id`, else `Idempotency-Key`. A blank value is no key at all
    /// (it would otherwise be one key shared by every sender that sends it blank).
    static func idempotencyKey(webhookID: String?, idempotencyKey: String?) -> String? {
        [webhookID, idempotencyKey].lazy.compactMap { $0 }
            .first { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
    }

    /// `application/json` or any `application/*+json`; a `charset` parameter, if any, must be
    /// UTF-8 (the only encoding forwarded). Total: any header text, `;` or empty included.
    static func isJSON(_ contentType: String?) -> Bool {
        guard let contentType else { return false }
        var parts = contentType.split(separator: ";", omittingEmptySubsequences: false).makeIterator()
        let media = (parts.next() ?? "").trimmingCharacters(in: .whitespaces).lowercased()
        guard media == "application/json" || (media.hasPrefix("application/") && media.hasSuffix("+json") && media.count > 17)
        else { return false }
        for parameter in parts {
            let pair = parameter.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard pair.count == 2, pair[0].trimmingCharacters(in: .whitespaces).lowercased() == "charset" else { continue }
            let charset = pair[1].trimmingCharacters(in: CharacterSet(charactersIn: " \t\"")).lowercased()
            if charset != "utf-8" && charset != "utf8" { return false }
        }
        return true
    }

    /// Sets the generated id. When the key is absent it is inserted after the opening brace,
    /// keeping every byte the sender sent; when present (null or blank) the object is re-encoded,
    /// so the partner never sees the key twice.
    static func settingPartnerCandidateID(_ id: String, in body: Data, document: JSONValue) -> Data {
        guard case .object(var members) = document else { return body }
        if members["partner_candidate_id"] == nil { return inserting(partnerCandidateID: id, into: body) }
        members["partner_candidate_id"] = .string(id)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return (try? encoder.encode(JSONValue.object(members))) ?? body
    }

    /// Adds `"partner_candidate_id"` right after the object's opening brace (the body is a
    /// validated, non-empty JSON object).
    static func inserting(partnerCandidateID id: String, into body: Data) -> Data {
        guard let brace = body.firstIndex(of: UInt8(ascii: "{")) else { return body }
        var result = Data(body[..<body.index(after: brace)])
        result.append(Data("\"partner_candidate_id\":\"\(id)\",".utf8))
        result.append(body[body.index(after: brace)...])
        return result
    }

    static func errorCode(_ error: any Error) -> String {
        if case OutboxError.storage = error { return "storage_error" }
        return String(describing: type(of: error))
    }
}
