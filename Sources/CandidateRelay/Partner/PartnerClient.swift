import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// Sends one "create a candidate" request. The worker pool depends on this protocol only, so
/// tests can put any partner behind it; the real one is `HTTPPartnerClient`.
public protocol PartnerClient: Sendable {
    func createCandidate(payload: Data, idempotencyKey: String, bearerToken: String) async -> PartnerAnswer
}

/// `POST {base_url}/candidates` over AsyncHTTPClient.
public struct HTTPPartnerClient: PartnerClient {
    public static let userAgent = "candidate-relay/\(RelayVersion.current)"
    let httpClient: HTTPClient
    let baseURL: String
    /// Bounds the whole answer, body included (`partner.timeout_seconds`).
    let timeoutSeconds: Double
    /// The partner's answer body is read up to this size (a Candidate is a few kB).
    static let maxResponseBytes = 1 << 20

    public init(httpClient: HTTPClient, baseURL: String, timeoutSeconds: Double) {
        self.httpClient = httpClient
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        self.timeoutSeconds = timeoutSeconds
    }

    public func createCandidate(payload: Data, idempotencyKey: String, bearerToken: String) async -> PartnerAnswer {
        var request = HTTPClientRequest(url: baseURL + "/candidates")
        request.method = .POST
        request.headers.add(name: "Authorization", value: "Bearer \(bearerToken)")
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "Accept", value: "application/json")
        // No header would mean any coding is acceptable (RFC 9110 section 12.5.3), and the relay
        // decodes none: found from outside, a partner that gzipped its answers had its 201 read
        // as "no uid", the resend's 409 as no candidate_uid, and the event went dead.
        request.headers.add(name: "Accept-Encoding", value: "identity")
        request.headers.add(name: "User-Agent", value: Self.userAgent)
        request.headers.add(name: "Idempotency-Key", value: idempotencyKey)
        // Data as a collection: AsyncHTTPClient writes it in chunks instead of one more copy of
        // the whole payload (a 20 MB candidate is otherwise held twice while in flight).
        request.body = .bytes(payload)
        let client = httpClient
        let prepared = request
        let timeout = TimeAmount.milliseconds(Int64(timeoutSeconds * 1000))
        do {
            let answer = try await withDeadline(seconds: timeoutSeconds) { () async throws -> PartnerAnswer in
                let response = try await client.execute(prepared, timeout: timeout)
                let body = try await response.body.collect(upTo: Self.maxResponseBytes)
                let status = Int(response.status.code)
                let date = response.headers.first(name: "Date")
                // Only a 401's: an HTTP-date takes three formatters to parse (every answer has one).
                let offset = status == 401 ? date.flatMap(RetryAfter.httpDate).map { $0.timeIntervalSinceNow } : nil
                return .response(status: status, retryAfter: RetryAfter.longest(response.headers["Retry-After"], now: Date(), date: date),
                                 body: Data(buffer: body), clockOffset: offset)
            }
            return answer ?? .transportFailure(.timeout)
        } catch {
            return .transportFailure(Self.classify(error))
        }
    }

    /// Maps client errors to the retryable failure codes operators see in `last_error`.
    static func classify(_ error: any Error) -> TransportFailure {
        if let error = error as? HTTPClientError {
            switch error {
            case .readTimeout, .connectTimeout, .deadlineExceeded, .writeTimeout: return .timeout
            case .remoteConnectionClosed: return .connectionReset
            default: break
            }
        }
        if error is NIOConnectionError { return .connectionRefused }
        // Found from outside: both were `transport_error`, as if the partner had not answered.
        // An answer cut short by the connection's close is a reset, not a malformed answer (review).
        if let error = error as? HTTPParserError {
            switch error {
            case .invalidEOFState, .closedConnection: return .connectionReset
            default: return .invalidResponse
            }
        }
        if error is NIOTooManyBytesError { return .responseTooLarge }
        if let error = error as? IOError {
            switch error.errnoCode {
            case ECONNREFUSED: return .connectionRefused
            case ECONNRESET, EPIPE: return .connectionReset
            default: return .other
            }
        }
        if error is ChannelError { return .connectionReset }
        let text = String(describing: error).lowercased()
        if text.contains("ssl") || text.contains("tls") || text.contains("certificate") {
            // In the handshake (a certificate refused, a host name it does not cover, the peer
            // gone): nothing was sent. After it, the request may have reached the partner, as
            // after a reset (found from outside: garbage from the partner once the request was
            // out was "nothing sent", the resend went at once, and both created the candidate).
            let handshake = text.contains("handshake") || text.contains("certificate") || text.contains("hostname")
            return handshake ? .tls : .other
        }
        if text.contains("resolve") || text.contains("dns") || text.contains("lookup") { return .dns }
        if text.contains("refused") { return .connectionRefused }
        return .other
    }
}

/// The relay's version, sent as `User-Agent` and printed by `--version`.
public enum RelayVersion {
    public static let current = "0.1.0"
}
