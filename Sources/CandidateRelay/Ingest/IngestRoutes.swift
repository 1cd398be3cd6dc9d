import Foundation
import HTTPTypes
import Hummingbird

/// The inbound HTTP API (CONTRACT section 4): the webhook, the read endpoints, health and metrics.
public enum IngestRoutes {
    public static func router(handler: IngestHandler) -> Router<BasicRequestContext> {
        // HEAD wherever GET is (monitors probe /healthz so); the middleware before any route.
        let router = Router(context: BasicRequestContext.self, options: .autoGenerateHeadEndpoints)
        router.add(middleware: UnroutedRequests())
        // `/v1/candidates...` is the `default` account's; `/v1/accounts/{account}/...` names one
        // (CONTRACT section 8). Without `accounts:` in the config, `default` is the only one.
        // An unknown account is 404 before anything else: nothing is read, nothing stored.
        @Sendable func account(_ context: BasicRequestContext) -> String {
            context.parameters.get("account") ?? AccountConfiguration.defaultID
        }
        /// The account a read names, once it is known and the request may read it.
        @Sendable func readableAccount(_ request: Request, _ context: BasicRequestContext) throws(IngestError) -> String {
            let account = account(context)
            guard let authenticator = handler.authenticators.value[account] else { throw .unknownAccount }
            guard authenticator.allowsReads(request.headers[.authorization]) else { throw .unauthorized(nil) }
            return account
        }
        let accept: @Sendable (Request, BasicRequestContext) async -> Response = { request, context in
            await handler.accept(request, account: account(context))
        }
        let readOne: @Sendable (Request, BasicRequestContext) async -> Response = { request, context in
            let account: String
            do throws(IngestError) { account = try readableAccount(request, context) } catch { return error.response }
            guard let id = context.parameters.get("id") else { return IngestError.notFound.response }
            do {
                // Another account's event is as unknown here as an id that does not exist.
                guard let record = try await handler.outbox.record(id: id), record.account == account else {
                    return IngestError.notFound.response
                }
                return Response.json(.ok, record.jsonObject(includeMessages: false))
            } catch {
                return IngestError.unavailable(reason: "storage unavailable", retryAfterSeconds: 5).response
            }
        }
        let lookup: @Sendable (Request, BasicRequestContext) async -> Response = { request, context in
            let account: String
            do throws(IngestError) { account = try readableAccount(request, context) } catch { return error.response }
            let query = LookupQuery.values(request.uri.query ?? "")
            let names = ["position_uid", "partner_candidate_id"]
            let incomplete = names.compactMap { name -> ValidationProblem? in
                switch query[name]?.count ?? 0 {
                case 0: ValidationProblem(field: name, problem: "required")
                case 1: nil
                default: ValidationProblem(field: name, problem: "repeated")  // which one is meant?
                }
            }
            guard incomplete.isEmpty, let position = query["position_uid"]?.first, let partnerID = query["partner_candidate_id"]?.first else {
                return IngestError.lookupIncomplete(incomplete).response
            }
            let invalid = [("position_uid", position), ("partner_candidate_id", partnerID)]
                .filter { $0.1.map { $0.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F } } ?? true }
                .map { ValidationProblem(field: $0.0, problem: "invalid_characters") }
            guard invalid.isEmpty, let position, let partnerID else { return IngestError.lookupInvalid(invalid).response }
            do {
                let records = try await handler.outbox.records(account: account, positionUID: position, partnerCandidateID: partnerID)
                return Response.json(.ok, ["events": records.map { $0.jsonObject(includeMessages: false) }])
            } catch {
                return IngestError.unavailable(reason: "storage unavailable", retryAfterSeconds: 5).response
            }
        }
        for prefix in ["/v1", "/v1/accounts/{account}"] {
            router.post("\(prefix)/candidates", use: accept)
            router.get("\(prefix)/candidates/{id}", use: readOne)
            router.get("\(prefix)/candidates", use: lookup)
        }
        router.get("/healthz") { _, _ in
            Response.json(.ok, ["status": "ok"])
        }
        router.get("/readyz") { _, _ in
            if handler.stopFlag.isStopping {
                return Response.json(.serviceUnavailable, ["status": "stopping"], headers: [.retryAfter: "5"])
            }
            if handler.outbox.damage != nil {
                return Response.json(.serviceUnavailable, ["status": "storage_damaged"], headers: [.retryAfter: "5"])
            }
            // Ready only while the disk holds at least one request of the largest size (a small
            // write can still fit in the WAL's allocated space when a request would not). Looked
            // at before the write: on a disk full to its last byte the write fails too, and the
            // answer must still say `storage_full` (found from outside: it said
            // `storage_unwritable`, which an alert on `storage_full` missed).
            if let free = handler.outbox.freeBytes(), free < handler.settings.value.maxBodyBytes {
                return Response.json(.serviceUnavailable, ["status": "storage_full"], headers: [.retryAfter: "5"])
            }
            guard await handler.outbox.probeWritable() else {
                return Response.json(.serviceUnavailable, ["status": "storage_unwritable"], headers: [.retryAfter: "5"])
            }
            return Response.json(.ok, ["status": "ready"])
        }
        router.get("/metrics") { _, _ in
            await handler.metricsRefresh.value {
                if let status = try? await handler.outbox.liveStatus(now: handler.now()) { handler.metrics.update(from: status) }
            }
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: handler.metrics.exposition())))
        }
        return router
    }
}

/// Requests no route takes get the API's JSON errors, not Hummingbird's empty 404: 405 with
/// `Allow` on a path that exists for other methods (a `PUT` of a candidate), else 404
/// `not_found`.
struct UnroutedRequests<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError where error.status == .notFound {
            // Only the router's own "no route" throws it: the routes answer their 404s.
            if let allow = Self.allowedMethods(path: request.uri.path) {
                return IngestError.methodNotAllowed(allow: allow).response
            }
            return IngestError.noSuchPath.response
        }
    }

    /// The methods the routes answer on `path`, nil if none has it.
    static func allowedMethods(path: String) -> String? {
        var parts = path.split(separator: "/", omittingEmptySubsequences: true)[...]
        if parts.count == 1, ["healthz", "readyz", "metrics"].contains(parts[0]) { return "GET, HEAD" }
        guard parts.first == "v1" else { return nil }
        parts = parts.dropFirst()
        if parts.count >= 2, parts.first == "accounts" { parts = parts.dropFirst(2) }
        guard parts.first == "candidates" else { return nil }
        switch parts.count {
        case 1: return "GET, HEAD, POST"
        case 2: return "GET, HEAD"
        default: return nil
        }
    }
}

extension IngestAuthenticator {
    /// Read endpoints need the account's bearer token when it has one, and are open otherwise.
    func allowsReads(_ authorization: String?) -> Bool {
        !requiresBearerForReads || bearerMatches(authorization)
    }
}

/// A lookup's query string, read as HTML forms and most HTTP clients write one
/// (`application/x-www-form-urlencoded`: `+` is a space, then percent-decoding). Found from
/// outside: `+` was kept as a plus, so a lookup from Python's `urlencode`, `requests` or Java's
/// `URLEncoder` of an id with a space answered "no events" (a literal `+` is `%2B` in those).
enum LookupQuery {
    /// Each parameter's values in order; a value that is not valid percent-encoded UTF-8 is nil.
    static func values(_ raw: String) -> [String: [String?]] {
        var values: [String: [String?]] = [:]
        for pair in raw.split(separator: "&", omittingEmptySubsequences: true) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let name = decode(parts[0]) else { continue }
            values[name, default: []].append(parts.count > 1 ? decode(parts[1]) : "")
        }
        return values
    }

    /// `+` a space, `%XX` a byte; nil for a bad escape or bytes that are not UTF-8. Not
    /// Foundation's `removingPercentEncoding`, which drops a leading U+FEFF (found from outside:
    /// an id beginning with a BOM, stored and sent as it was, was never found by a lookup).
    static func decode(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            switch byte {
            case UInt8(ascii: "+"):
                bytes.append(UInt8(ascii: " "))
            case UInt8(ascii: "%"):
                guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else { return nil }
                bytes.append(high << 4 | low)
            default:
                bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
