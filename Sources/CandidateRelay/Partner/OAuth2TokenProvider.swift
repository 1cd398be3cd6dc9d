import AsyncHTTPClient
import Foundation
import Logging
import NIOCore

/// RFC 6749 section 4.4 client credentials. One refresh is shared by every worker (single
/// flight: N workers with an expired token cause one token request); a token is refreshed when
/// less than min(60 s, expires_in / 10) of it is left, and dropped after a 401.
public actor OAuth2TokenProvider: TokenProvider {
    /// Performs the token request; injectable so single flight can be tested without a server.
    public typealias Fetch = @Sendable (OAuth2Configuration) async throws -> (token: String, expiresIn: Double)

    let configuration: OAuth2Configuration
    let fetch: Fetch
    let logger: Logger
    let metrics: RelayMetrics?
    /// The account whose credentials these are (its log lines and metrics say so).
    let account: String
    public nonisolated let credentials: String?
    let now: @Sendable () -> Date
    private var cached: (token: String, expires: Date, margin: Double)?
    private var inFlight: Task<(token: String, expiresIn: Double), any Error>?

    public init(configuration: OAuth2Configuration, fetch: @escaping Fetch, logger: Logger, metrics: RelayMetrics? = nil,
                account: String = AccountConfiguration.defaultID, credentials: String? = nil,
                now: @escaping @Sendable () -> Date = Date.init) {
        self.account = account
        self.credentials = credentials
        self.configuration = configuration
        self.fetch = fetch
        self.logger = logger
        self.metrics = metrics
        self.now = now
    }

    /// An access token fit for an `Authorization` header: 1–16,384 visible ASCII characters
    /// (RFC 6750's b64token is narrower; anything outside this could not be sent at all).
    static func isUsable(_ token: String) -> Bool {
        (1...16_384).contains(token.utf8.count) && token.utf8.allSatisfy { (0x21...0x7E).contains($0) }
    }

    /// The token lifetimes believed, in seconds, whatever `expires_in` says.
    static let lifetimeBounds = 30.0...86_400.0

    public func token() async throws -> String {
        if let cached, cached.expires.timeIntervalSince(now()) > cached.margin { return cached.token }
        let task: Task<(token: String, expiresIn: Double), any Error>
        if let inFlight {
            task = inFlight
        } else {
            let fetch = self.fetch
            let configuration = self.configuration
            task = Task { try await fetch(configuration) }
            inFlight = task
        }
        do {
            let result = try await Self.value(of: task)
            // Not cached: a CR/LF in it failed every request before it left (and was kept for
            // its whole `expires_in`).
            guard Self.isUsable(result.token) else { throw TokenUnavailable(reason: "token_response_invalid_access_token") }
            if inFlight == task {
                inFlight = nil
                // Bounded: an `expires_in` of 0 or less would mint a token for every request,
                // and 1e300 keep one for ever (a 401 still re-mints at once either way).
                let lifetime = min(max(result.expiresIn, Self.lifetimeBounds.lowerBound), Self.lifetimeBounds.upperBound)
                let expires = now().addingTimeInterval(lifetime)
                cached = (result.token, expires, min(60, lifetime / 10))
                metrics?.tokenMinted(mode: "oauth2_client_credentials", account: account)
                logger.event(.info, "auth.token_minted", "partner token obtained",
                             LogFields(account: account, extra: ["mode": "oauth2_client_credentials", "expires_at": Timestamp.string(expires)]))
            }
            return result.token
        } catch {
            // Said once per failed request, by the first waiter back (found from outside: every
            // worker waiting on the shared fetch logged it, so the alert on it counted workers).
            let first = inFlight == task
            if first { inFlight = nil }
            if Task.isCancelled { throw CancellationError() }
            if first {
                logger.event(.warning, "auth.token_failed", "partner token endpoint failed",
                             LogFields(account: account, error: (error as? TokenUnavailable)?.reason ?? "token_request_failed"))
            }
            throw error is TokenUnavailable ? error : TokenUnavailable(reason: "token_request_failed")
        }
    }

    /// Waits for the shared fetch, but stops waiting when this waiter is cancelled (shutdown):
    /// `Task.value` alone would hold the drain until the fetch ends. The fetch itself is
    /// cancelled too, since every worker waiting on it is being cancelled at that point; the
    /// next `token()` starts a fresh one.
    private static func value<T: Sendable>(of task: Task<T, any Error>) async throws -> T {
        try await withTaskCancellationHandler {
            try await task.value
        } onCancel: {
            task.cancel()
        }
    }

    public func invalidate(_ token: String) {
        if cached?.token == token { cached = nil }
    }

    /// The real token request: form POST, client authentication by HTTP Basic (default,
    /// RFC 6749 section 2.3.1) or in the body.
    public static func httpFetch(client: HTTPClient, timeoutSeconds: Double) -> Fetch {
        { configuration in
            var request = HTTPClientRequest(url: configuration.tokenURL)
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
            request.headers.add(name: "Accept", value: "application/json")
            request.headers.add(name: "Accept-Encoding", value: "identity")  // as `HTTPPartnerClient`'s
            request.headers.add(name: "User-Agent", value: HTTPPartnerClient.userAgent)
            var form = ["grant_type": "client_credentials"]
            if let scope = configuration.scope { form["scope"] = scope }
            switch configuration.clientAuth {
            case .basic:
                let credentials = formEncode(configuration.clientID) + ":" + formEncode(configuration.clientSecret.value)
                request.headers.add(name: "Authorization", value: "Basic " + Data(credentials.utf8).base64EncodedString())
            case .body:
                form["client_id"] = configuration.clientID
                form["client_secret"] = configuration.clientSecret.value
            }
            let body = form.keys.sorted().map { "\($0)=\(formEncode(form[$0]!))" }.joined(separator: "&")
            request.body = .bytes(ByteBuffer(string: body))
            let response: HTTPClientResponse
            let bytes: ByteBuffer
            let prepared = request
            do {
                // The whole answer, body included, within the timeout (a stalled body would
                // otherwise hold every worker waiting on this token).
                let answer = try await withDeadline(seconds: timeoutSeconds) { () async throws -> (HTTPClientResponse, ByteBuffer) in
                    let response = try await client.execute(prepared, timeout: .milliseconds(Int64(timeoutSeconds * 1000)))
                    return (response, try await response.body.collect(upTo: 1 << 16))
                }
                guard let answer else { throw TokenUnavailable(reason: TransportFailure.timeout.rawValue) }
                (response, bytes) = answer
            } catch let error as TokenUnavailable {
                throw error
            } catch {
                throw TokenUnavailable(reason: HTTPPartnerClient.classify(error).rawValue)
            }
            guard (200..<300).contains(Int(response.status.code)) else {
                // A 429 or 503 asking to wait is waited out, not asked again at the back-off's
                // first steps (found from outside: the token endpoint's Retry-After was ignored).
                let now = Date()
                let retryAfter = RetryAfter.longest(response.headers["Retry-After"], now: now, date: response.headers.first(name: "Date")).flatMap { RetryAfter.parse($0, now: now) }
                throw TokenUnavailable(reason: "token_endpoint_http_\(response.status.code)", retryAfter: retryAfter)
            }
            return try tokenResponse(Data(buffer: bytes))
        }
    }

    /// A 2xx token response's token and lifetime (RFC 6749 section 5.1). Its `token_type` must
    /// be `Bearer` (any case, section 7.1), the only kind this client sends: a `mac` or `DPoP`
    /// token sent as a Bearer would be refused at the partner with 401, request after request.
    /// Absent, it is taken as Bearer, as providers that leave it out mean.
    static func tokenResponse(_ body: Data) throws -> (token: String, expiresIn: Double) {
        let document = try? JSONValue.parse(body, allowBOM: true)
        guard let token = document?["access_token"]?.stringValue, !token.isEmpty else {
            throw TokenUnavailable(reason: "token_response_without_access_token")
        }
        if let type = document?["token_type"], type.stringValue?.lowercased() != "bearer", type != .null {
            throw TokenUnavailable(reason: "token_response_unsupported_token_type")
        }
        return (token, expiresIn(document?["expires_in"]))
    }

    /// A token's `expires_in`: a number (RFC 6749 section 5.1), or a string holding one, as some
    /// providers send it (found from outside: `"6"` was taken for the default hour, and every
    /// refresh then cost a request refused with 401). Absent or unreadable: an hour.
    static func expiresIn(_ value: JSONValue?) -> Double {
        switch value {
        case .number(let seconds)?: return seconds
        case .string(let text)?: return Double(text.trimmingCharacters(in: .whitespaces)).flatMap { $0.isFinite ? $0 : nil } ?? 3600
        default: return 3600
        }
    }

    /// application/x-www-form-urlencoded (RFC 6749 appendix B).
    static func formEncode(_ text: String) -> String {
        let allowed = CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._*")
        return (text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text).replacingOccurrences(of: "%20", with: "+")
    }
}
