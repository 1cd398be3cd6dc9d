import Crypto
import Foundation
import Synchronization
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
    /// `storage.failed` at most once a second: every webhook fails alike while the disk is full.
    let storageFailureLog = LogThrottle(seconds: 1)
    /// `ingest.rejected` lines and replays' `ingest.accepted` lines, a few a second of each kind.
    let logBudget = IngestLogBudget()
    /// The outbox's counts for `/metrics`, read at most once a second whatever the scrape rate.
    let metricsRefresh = SharedRefresh<Void>(scalesWithCost: true)
    /// Bytes of webhook bodies being read, on every connection together (`reserveBody`).
    private let bodyBytesInFlight = SharedCount()

    /// A count every copy of the handler shares.
    final class SharedCount: Sendable {
        let value = Atomic<Int>(0)
    }

    /// Room for `bytes` more of bodies being received, checked and stored, taken if there is
    /// (false: answer 503). Every body is held whole until it is answered, and bodies that
    /// arrived slowly on many connections added up without a bound (8 stalled 20 MB bodies:
    /// +160 MB, found from outside). The budget is 64 MiB, or two of the largest bodies allowed
    /// if that is more; each body's first 64 KiB are not counted (the channel handler's), so
    /// webhooks of the usual few KB are never refused for it. The router's path (in-process tests;
    /// a live server's webhooks all go to the channel handler) counts its bodies the same way
    /// (`readBody`).
    func reserveBody(_ bytes: Int) -> Bool {
        let budget = PayloadMemory.budget(maxBodyBytes: settings.value.maxBodyBytes)
        var current = bodyBytesInFlight.value.load(ordering: .relaxed)
        while true {
            guard current + bytes <= budget else { return false }
            let (exchanged, original) = bodyBytesInFlight.value.compareExchange(expected: current, desired: current + bytes, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
    }

    /// Takes what a body of `total` bytes holds of the budget beyond its first free bytes and
    /// what it reserved already (`reserved`, updated). False: no room (answer 503). The channel
    /// handler and the router's `readBody` both count a body so, as its bytes arrive.
    func reserveBody(holding total: Int, reserved: inout Int) -> Bool {
        let more = total - IngestChannelHandler.freeBodyBytes - reserved
        guard more > 0 else { return true }
        guard reserveBody(more) else { return false }
        reserved += more
        return true
    }

    /// Gives back what `reserveBody` took.
    func releaseBody(_ bytes: Int) {
        if bytes > 0 { bodyBytesInFlight.value.subtract(bytes, ordering: .relaxed) }
    }

    static let webhookID = HTTPField.Name("webhook-id")!
    static let webhookTimestamp = HTTPField.Name("webhook-timestamp")!
    static let webhookSignature = HTTPField.Name("webhook-signature")!
    static let idempotencyKey = HTTPField.Name("Idempotency-Key")!

    /// Reads the body within the limit (413 without buffering more than `max_body_bytes`),
    /// straight into the `Data` that is validated and stored: a large body is held once, not
    /// once as a buffer and once more as its copy. What it holds past the first 64 KiB counts
    /// against the body budget (`reserveBody`, 503 when it is spent), as on the channel
    /// handler's path; `reserved` says how much, for the caller to give back.
    func readBody(_ request: Request, reserved: inout Int) async throws(IngestError) -> Data {
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
                guard reserveBody(holding: body.count + chunk.readableBytes, reserved: &reserved) else {
                    throw IngestChannelHandler.tooManyBodies
                }
                chunk.withUnsafeReadableBytes { body.append(contentsOf: $0) }
            }
        } catch let error as IngestError {
            throw error
        } catch {
            throw .malformedJSON(nil)
        }
        return body
    }

    /// `POST /v1/candidates` (the `default` account) and `POST /v1/accounts/{account}/candidates`,
    /// through the router. The live server answers these on the event loop instead
    /// (`IngestChannelHandler`), with the same steps: `admit`, `prepare`, the outbox, `finish`.
    public func accept(_ request: Request, account: String = AccountConfiguration.defaultID) async -> Response {
        let outcome: Result<StoredAnswer, IngestError>
        var reserved = 0
        defer { releaseBody(reserved) }
        do throws(IngestError) {
            let headers = WebhookHeaders(request.headers)
            try admitHead(account: account, headers: headers)
            let prepared = try prepare(account: account, headers: headers, body: try await readBody(request, reserved: &reserved))
            let stored: Result<AcceptResult, any Error>
            do {
                stored = .success(try await outbox.accept(prepared.submission, maxBacklog: prepared.maxBacklog))
            } catch {
                stored = .failure(error)
            }
            outcome = answer(stored, account: account, generated: prepared.generated)
        } catch {
            outcome = .failure(error)
        }
        return finish(outcome, account: account).response
    }

    /// A webhook that passed every check: what the outbox is to store.
    struct Prepared: Sendable {
        let submission: Submission
        /// The relay set `partner_candidate_id` (the 202 says so).
        let generated: Bool
        /// The account's backlog limit when the request arrived.
        let maxBacklog: Int
    }

    /// An answer for the webhook's sender and the fields of its `ingest.accepted` line.
    typealias StoredAnswer = (answer: IngestAnswer, fields: LogFields)

    /// What is decided before a byte of the body is read: an unknown account stores nothing and
    /// learns nothing; a relay shutting down takes nothing new.
    func admit(account: String) throws(IngestError) -> IngestAuthenticator {
        guard let authenticator = authenticators.value[account] else { throw .unknownAccount }
        if stopFlag.isStopping { throw .unavailable(reason: "shutting down", retryAfterSeconds: 5) }
        return authenticator
    }

    /// `admit`, and a 401 when the headers alone show that no body could be authentic (a
    /// timestamp out of tolerance, no signature of the right shape, a wrong bearer token): the
    /// body is then never held.
    /// Also 413 for a declared length over the limit, first (the contract's order, as far as the
    /// head can tell). The channel handler and the router's `accept` both start here.
    func admitHead(account: String, headers: WebhookHeaders) throws(IngestError) {
        let authenticator = try admit(account: account)
        let limit = settings.value.maxBodyBytes
        if let declared = headers.declaredLength, declared > limit { throw .payloadTooLarge(limit: limit) }
        if let refusal = authenticator.headRefusal(headers.auth, now: now()) { throw .unauthorized(refusal) }
    }

    /// The contract's checks on a whole body, in order (401, 415, 400, 422), and the submission
    /// they let through. Synchronous: the channel handler runs it on the event loop.
    func prepare(account: String, headers: WebhookHeaders, body: Data) throws(IngestError) -> Prepared {
        let authenticator = try admit(account: account)
        let receivedAt = now()
        if let refusal = authenticator.refusal(headers.auth, body: body, now: receivedAt) { throw .unauthorized(refusal) }
        guard Self.isJSON(headers.contentType) else { throw .unsupportedMediaType }
        // A compressed body is not read as such (and would reach the partner as it came).
        if let coding = headers.contentEncoding, !coding.isEmpty, coding.lowercased() != "identity" { throw .unsupportedContentEncoding }
        let parsed: ParsedDocument
        do throws(StrictJSONError) {
            parsed = try StrictJSONParser.parseDocument(body, maxValues: StrictJSONParser.maxDocumentValues)
        } catch .tooManyValues(_, let inObject) {
            // A body that is no object at all says so, as a small one would.
            throw .validationFailed([ValidationProblem(field: "$", problem: inObject ? "too_many_values" : "must_be_object")])
        } catch {
            throw .malformedJSON(error)
        }
        let document = parsed.document
        let problems = validator.validate(document, mayHaveControlCharacters: parsed.mayHaveControlCharacters)
        guard problems.isEmpty else { throw .validationFailed(problems) }

        let key = Self.idempotencyKey(webhookID: headers.auth.webhookID, idempotencyKey: headers.idempotencyKey)
        if let key, let problem = Self.keyProblem(key, headers: headers) { throw .validationFailed([problem]) }
        let id = EventID.generate(now: receivedAt)
        var partnerCandidateID = document.rootString("partner_candidate_id") ?? ""
        var payload = body
        let generated = partnerCandidateID.isEmpty
        if generated {
            partnerCandidateID = id
            payload = Self.settingPartnerCandidateID(id, in: body, at: parsed.partnerCandidateIDRange)
        }
        let submission = Submission(
            id: id, account: account, idempotencyKey: key, bodySHA256: Self.hex(SHA256.hash(data: body)),
            positionUID: document.rootString("position_uid") ?? "", partnerCandidateID: partnerCandidateID,
            payload: payload, receivedAt: receivedAt)
        return Prepared(submission: submission, generated: generated, maxBacklog: settings.value.maxBacklog)
    }

    /// The answer to a submission once the outbox is done with it: 202 after its commit, 200
    /// for a replay, or the error (a storage failure is logged here, without the body).
    func answer(_ stored: Result<AcceptResult, any Error>, account: String, generated: Bool) -> Result<StoredAnswer, IngestError> {
        let result: AcceptResult
        switch stored {
        case .success(let value):
            result = value
        case .failure(OutboxError.idempotencyKeyReused(let existingID)):
            return .failure(.idempotencyKeyReused(location: Self.location(account: account, id: existingID)))
        case .failure(OutboxError.accountClosed):
            // A reload is deciding whether this account may leave (it stays when it still has
            // events): "later", not a 404 that a sender could take as final for an account that stays.
            return .failure(.unavailable(reason: "the account is being reconfigured; retry later", retryAfterSeconds: 1))
        case .failure(OutboxError.backlogFull(let limit)):
            return .failure(.unavailable(reason: "backlog at its limit (max_backlog \(limit)); retry later", retryAfterSeconds: 30))
        case .failure(let error):
            if let suppressed = storageFailureLog.admit(now: now()) {
                logger.event(.error, "storage.failed", "outbox write failed",
                             LogFields(error: OutboxError.logCode(error), numbers: suppressed > 0 ? ["suppressed": Double(suppressed)] : [:]))
            }
            return .failure(.unavailable(reason: "storage unavailable; retry later", retryAfterSeconds: 5))
        }
        switch result {
        case .created(let record):
            doorbell.ring(waking: 1)  // one event: one idle worker
            metrics.ingest(result: "accepted", account: account)
            // Written directly (keys sorted, as every contract object): this is the hot path.
            let body = "{\"id\":\(ContractJSON.quoted(record.id)),\"partner_candidate_id\":\(ContractJSON.quoted(record.partnerCandidateID)),"
                + (generated ? "\"partner_candidate_id_generated\":true," : "") + "\"state\":\"pending\"}"
            let answer = IngestAnswer(
                status: .accepted, headers: [.contentType: "application/json", .location: Self.location(record)],
                body: ByteBuffer(string: body))
            return .success((answer, LogFields(account: account, eventID: record.id, positionUID: record.positionUID,
                                               partnerCandidateID: record.partnerCandidateID)))
        case .duplicate(let record):
            metrics.ingest(result: "duplicate", account: account)
            var object: [String: Any] = ["id": record.id, "state": record.state.rawValue, "partner_candidate_id": record.partnerCandidateID, "duplicate": true]
            // Same key, same body: the first request had no partner_candidate_id either.
            if generated { object["partner_candidate_id_generated"] = true }
            let answer = IngestAnswer(
                status: .ok, headers: [.contentType: "application/json", .location: Self.location(record)],
                body: ByteBuffer(bytes: ContractJSON.data(object)))
            return .success((answer, LogFields(account: account, eventID: record.id, positionUID: record.positionUID,
                                               partnerCandidateID: record.partnerCandidateID, extra: ["duplicate": "true"])))
        }
    }

    /// Logs the outcome (`ingest.accepted` or `ingest.rejected`), counts a rejection, and
    /// returns the answer to write.
    func finish(_ outcome: Result<StoredAnswer, IngestError>, account: String) -> IngestAnswer {
        switch outcome {
        case .success(let stored):
            if stored.answer.status == .accepted {
                logger.event(.info, "ingest.accepted", "candidate accepted", stored.fields)
            } else if let suppressed = logBudget.admit(.init(code: "duplicate", account: account), now: now()) {
                var fields = stored.fields
                if suppressed > 0 { fields.numbers["suppressed"] = Double(suppressed) }
                logger.event(.info, "ingest.accepted", "replay of a known event", fields)
            }
            return stored.answer
        case .failure(let error):
            // An unknown account's name is the sender's text: it becomes neither a label nor a field.
            let known = error.code == IngestError.unknownAccount.code ? "" : account
            metrics.ingest(result: error.code, account: known)
            var reason = ""
            if case .unauthorized(let refusal?) = error { reason = refusal.rawValue }
            if let suppressed = logBudget.admit(.init(code: error.code, account: known, reason: reason), now: now()) {
                let extra = reason.isEmpty ? [:] : ["reason": reason]
                logger.event(error.code == "unavailable" ? .warning : .notice, "ingest.rejected", "webhook rejected",
                             LogFields(account: known.isEmpty ? nil : known, status: Int(error.status.code), error: error.code,
                                       extra: extra, numbers: suppressed > 0 ? ["suppressed": Double(suppressed)] : [:]))
            }
            return error.answer
        }
    }

    /// A line for each kind of refusal (or replay) whose flood is over with lines left out
    /// (`IngestLogBudget.quietLeftOut`): the heartbeat calls it every tick.
    func logQuietLeftOut() {
        for (kind, suppressed) in logBudget.quietLeftOut(now: now()) {
            let fields = LogFields(account: kind.account.isEmpty ? nil : kind.account, error: kind.code == "duplicate" ? nil : kind.code,
                                   extra: kind.code == "duplicate" ? ["duplicate": "true"] : kind.reason.isEmpty ? [:] : ["reason": kind.reason],
                                   numbers: ["suppressed": Double(suppressed)])
            if kind.code == "duplicate" {
                logger.event(.info, "ingest.accepted", "replays of known events whose lines were left out", fields)
            } else {
                logger.event(kind.code == "unavailable" ? .warning : .notice, "ingest.rejected", "webhooks rejected whose lines were left out", fields)
            }
        }
    }

    /// The path of an event's record for its account.
    static func location(_ record: EventRecord) -> String { location(account: record.account, id: record.id) }

    static func location(account: String, id: String) -> String {
        account == AccountConfiguration.defaultID ? "/v1/candidates/\(id)" : "/v1/accounts/\(account)/candidates/\(id)"
    }

    /// Lower-case hex of a digest (without a `String(format:)` per byte on the ingest path).
    static func hex(_ digest: SHA256.Digest) -> String {
        digest.withUnsafeBytes { Hex.string($0) }
    }

    /// The idempotency key: `webhook-id`, else `Idempotency-Key`. A blank value is no key at all
    /// (it would otherwise be one key shared by every sender that sends it blank).
    static func idempotencyKey(webhookID: String?, idempotencyKey: String?) -> String? {
        [webhookID, idempotencyKey].lazy.compactMap { $0 }.first { !isBlankKey($0) }
    }

    /// What makes a key unusable, if anything; either would make two keys one (a false 409, or
    /// a new event answered as a replay). Bytes that were not UTF-8: the HTTP/1 decoder's
    /// strings hold them as U+FFFD, so `a\xffb` and `a\xfeb` meet (no key holds U+FFFD on
    /// purpose: refused whatever its origin). Its header sent twice: read as one value joined
    /// with ", ", `a` and `b` become a third key, `a, b`.
    static func keyProblem(_ key: String, headers: WebhookHeaders) -> ValidationProblem? {
        // One pass over the bytes for U+FFFD (EF BF BD) and ", " (a list of keys folded into
        // one): `String.contains` of a string went through Foundation's search (perf: ~1 % of
        // ingest's CPU with the scalar scan).
        var undecodable = false, listed = false
        var before: UInt8 = 0, previous: UInt8 = 0
        for byte in key.utf8 {
            if byte == 0xBD && previous == 0xBF && before == 0xEF { undecodable = true }
            if byte == 0x20 && previous == 0x2C { listed = true }
            before = previous
            previous = byte
        }
        let tooLong = key.utf8.count > maxKeyBytes
        guard undecodable || tooLong || listed else { return nil }  // the usual key: no lookup
        let fromWebhookID = headers.auth.webhookID == key
        let header = fromWebhookID ? webhookID : idempotencyKey
        if undecodable { return ValidationProblem(field: header.rawName, problem: "invalid_characters") }
        if (fromWebhookID ? headers.webhookIDFields : headers.idempotencyKeyFields) > 1 {
            return ValidationProblem(field: header.rawName, problem: "repeated")
        }
        return tooLong ? ValidationProblem(field: header.rawName, problem: "string_size_limit") : nil
    }

    /// The longest idempotency key kept (a message id; a 70 KB one was stored, and indexed,
    /// for the record's whole retention).
    static let maxKeyBytes = 1_024

    /// An idempotency key of nothing but white space (Unicode's `White_Space`: the space
    /// separators, U+2028 and U+2029, NEL) or invisible characters that print as nothing (U+200B,
    /// U+2060, U+FEFF, U+180E), decided byte by byte for ASCII, where a header can hold only space
    /// and tab. Found from outside: a key of U+2028 alone was a real key, one every sender that
    /// sends it shares (it followed Foundation's `.whitespaces`, which has no line separators).
    static func isBlankKey(_ value: String) -> Bool {
        value.unicodeScalars.allSatisfy { scalar in
            scalar.isASCII ? scalar == " " || scalar == "\t"
                : scalar.properties.isWhitespace || [0x200B, 0x2060, 0xFEFF, 0x180E].contains(scalar.value)
        }
    }

    /// `application/json` or any `application/*+json`; a `charset` parameter, if any, must be
    /// UTF-8 (the only encoding forwarded). Total: any header text, `;` or empty included.
    static func isJSON(_ contentType: String?) -> Bool {
        guard let contentType else { return false }
        // What nearly every sender sends, compared without the general path's allocations.
        if contentType.utf8.elementsEqual("application/json".utf8, by: { $0.asciiLowercased == $1 }) { return true }
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

    /// The body with `partner_candidate_id` set to `id`: its `null` replaced where it stands
    /// (`range`, from the parser), or the member added when it is absent. Every other byte is
    /// kept: re-encoding the document (as a `null` once did) rounded integers past 2^53 and
    /// reordered the members of what the relay had validated.
    static func settingPartnerCandidateID(_ id: String, in body: Data, at range: Range<Int>?) -> Data {
        guard let range else { return inserting(partnerCandidateID: id, into: body) }
        var result = Data(body[body.startIndex..<body.startIndex + range.lowerBound])
        result.append(Data("\"\(id)\"".utf8))
        result.append(body[(body.startIndex + range.upperBound)...])
        return result
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
}
