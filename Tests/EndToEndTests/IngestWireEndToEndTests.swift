import CandidateRelay
import CandidateRelayTesting
import Foundation
import Synchronization
import Testing

/// The webhook as the wire carries it, answered by the ingest channel handler on the event
/// loop: pipelined requests answered in order, `Expect: 100-continue`, refusals before the body
/// that close the connection, `Connection: close`, a half-closed client, bytes after a request
/// that are not HTTP.
@Suite(.serialized) struct IngestWireEndToEndTests {
    static func post(_ body: String, key: String? = nil, path: String = "/v1/candidates", extra: String = "") -> String {
        "POST \(path) HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n"
            + (key.map { "Idempotency-Key: \($0)\r\n" } ?? "") + extra + "\r\n" + body
    }

    static let healthz = "GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n"

    static func candidate(_ id: String) -> String { Candidates.json(partnerID: id) }

    static func storedCount(_ relay: RelayHarness) async throws -> Int {
        try await relay.application.outbox.status(now: Date()).counts.values.reduce(0, +)
    }

    @Test func pipelinedRequestsAreAnsweredInTheirOrder() async throws {
        let relay = try await RelayHarness()
        defer { Task { await relay.stop() } }
        let connection = try RawHTTPConnection(port: relay.port)
        // One write: webhook, router, webhook, router (404), the first webhook again (a replay).
        connection.send(Self.post(Self.candidate("wire-1"), key: "k1") + Self.healthz + Self.post(Self.candidate("wire-2"), key: "k2")
                        + "GET /v1/candidates/evt_missing HTTP/1.1\r\nHost: relay\r\n\r\n" + Self.post(Self.candidate("wire-1"), key: "k1"))
        var answers: [RawHTTPConnection.Answer] = []
        for _ in 0..<5 { if let answer = await connection.readAnswer() { answers.append(answer) } }
        try #require(answers.map(\.status) == [202, 200, 202, 404, 200])
        #expect(answers[1].json["status"] as? String == "ok")
        #expect(answers[0].json["partner_candidate_id"] as? String == "wire-1")
        #expect(answers[2].json["partner_candidate_id"] as? String == "wire-2")
        #expect(answers[4].json["duplicate"] as? Bool == true)
        #expect(answers[4].json["id"] as? String == answers[0].json["id"] as? String)
        #expect(answers[0].headers["content-type"] == "application/json")
        #expect(answers[0].headers["location"] == "/v1/candidates/\(answers[0].json["id"] as? String ?? "")")
        #expect(answers[0].headers["date"] != nil && answers[0].headers["server"] == "candidate-relay")

        // The router first, then a webhook behind it, then the router again.
        let second = try RawHTTPConnection(port: relay.port)
        second.send(Self.healthz + Self.post(Self.candidate("wire-3"), key: "k3") + Self.healthz)
        var statuses: [Int] = []
        for _ in 0..<3 { if let answer = await second.readAnswer() { statuses.append(answer.status) } }
        #expect(statuses == [200, 202, 200])
        #expect(try await Self.storedCount(relay) == 3)
    }

    /// Found from outside: unsigned bodies were held whole (up to 25 MB each, any number of
    /// connections) only to fail the signature at their end. A head no body can make authentic
    /// is refused at once, and the bodies being read share one budget.
    @Test func aHeadThatCannotBeAuthenticIsRefusedBeforeItsBodyAndBodiesShareABudget() async throws {
        let secret = Secret("whsec_" + Data("wire-inbound-secret-0123456789".utf8).base64EncodedString(), source: "test")
        let relay = try await RelayHarness { config in
            config.ingest.allowUnauthenticated = false
            config.ingest.signingSecrets = [secret]
            config.ingest.maxBodyBytes = 30_000_000  // the budget: 64 MiB
        }
        defer { Task { await relay.stop() } }
        let shaped = "v1," + Data(count: 32).base64EncodedString()
        func head(length: Int, timestamp: Int64, id: String, path: String = "/v1/candidates") -> String {
            "POST \(path) HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: \(length)\r\n"
                + "webhook-id: \(id)\r\nwebhook-timestamp: \(timestamp)\r\nwebhook-signature: \(shaped)\r\n\r\n"
        }
        let now = Int64(Date().timeIntervalSince1970)
        // Out of tolerance: 401 while 1 MB of its body is still to come.
        let stale = try RawHTTPConnection(port: relay.port)
        stale.send(head(length: 1_000_000, timestamp: 1, id: "w-stale") + "{\"first_name\":")
        #expect(await stale.readAnswer()?.status == 401)
        // No signature of an HMAC's length: the same.
        let unshaped = try RawHTTPConnection(port: relay.port)
        unshaped.send(head(length: 1_000_000, timestamp: now, id: "w-short").replacingOccurrences(of: shaped, with: "v1,AAAA") + "{")
        #expect(await unshaped.readAnswer()?.status == 401)

        // Well-formed heads wait for their bodies (only the body can prove them), and what
        // arrives counts against the budget. Two bodies of 29 MB on their way take most of it;
        // a third large one is 503 (a declared length alone takes nothing: three heads that
        // sent nothing could hold it all).
        let first = try RawHTTPConnection(port: relay.port)
        first.send(head(length: 30_000_000, timestamp: now, id: "w-1") + String(repeating: " ", count: 29_000_000))
        let second = try RawHTTPConnection(port: relay.port)
        second.send(head(length: 30_000_000, timestamp: now, id: "w-2") + String(repeating: " ", count: 29_000_000))
        let third = try RawHTTPConnection(port: relay.port)
        third.send(head(length: 30_000_000, timestamp: now, id: "w-3") + String(repeating: " ", count: 16_000_000))
        let refused = await third.readAnswer()
        #expect(refused?.status == 503)
        #expect(refused?.headers["retry-after"] == "1")
        // The same path spelled as the router also takes it (found from outside: a trailing
        // slash, read by the router, held twelve 24 MB bodies past the budget).
        for path in ["/v1/candidates/", "//v1/candidates", "/v1/accounts/default/candidates/"] {
            let variant = try RawHTTPConnection(port: relay.port)
            variant.send(head(length: 30_000_000, timestamp: now, id: "w-\(path)", path: path) + String(repeating: " ", count: 16_000_000))
            let answer = await variant.readAnswer()
            #expect(answer?.status == 503, "\(path)")
            variant.close()
        }
        // A webhook of the usual size is never refused for the budget.
        let body = Self.candidate("while-the-budget-is-full")
        let secretKey = try #require(WebhookSecret(secret))
        func signed(_ body: String, id: String) -> String {
            let signature = WebhookVerifier.sign(id: id, timestamp: now, body: Data(body.utf8), secret: secretKey)
            return Self.post(body, extra: "webhook-id: \(id)\r\nwebhook-timestamp: \(now)\r\nwebhook-signature: \(signature)\r\n")
        }
        let small = try RawHTTPConnection(port: relay.port)
        small.send(signed(body, id: "w-4"))
        #expect(await small.readAnswer()?.status == 202)
        // Their connections gone, their share comes back: a large body is read to its end again
        // (and refused there for its signature, not for the budget).
        first.close()
        second.close()
        let readAgain = await eventually(timeout: 10) {
            guard let connection = try? RawHTTPConnection(port: relay.port) else { return false }
            connection.send(head(length: 16_000_000, timestamp: now, id: "w-5") + String(repeating: " ", count: 16_000_000))
            return await connection.readAnswer()?.status == 401
        }
        #expect(readAgain)
    }

    @Test func expectContinueGetsAHundredBeforeTheBody() async throws {
        let relay = try await RelayHarness()
        defer { Task { await relay.stop() } }
        let connection = try RawHTTPConnection(port: relay.port)
        let body = Self.candidate("wire-continue")
        connection.send("POST /v1/candidates HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
                        + "Content-Length: \(body.utf8.count)\r\nExpect: 100-continue\r\n\r\n")
        #expect(await connection.readAnswer()?.status == 100)
        connection.send(body)
        #expect(await connection.readAnswer()?.status == 202)
        // The connection is still good for the next request.
        connection.send(Self.healthz)
        #expect(await connection.readAnswer()?.status == 200)
        // Another spelling of the path is the same webhook, with its 100 (the router sends none).
        let other = Self.candidate("wire-continue-slash")
        connection.send("POST /v1/candidates/ HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
                        + "Content-Length: \(other.utf8.count)\r\nExpect: 100-continue\r\n\r\n")
        #expect(await connection.readAnswer()?.status == 100)
        connection.send(other)
        #expect(await connection.readAnswer()?.status == 202)
    }

    /// A refusal before the end of the body is answered at once; the rest of the body is read
    /// and dropped (closing with unread bytes would reset the connection before the client read
    /// the answer), and the connection serves the next request. A client waiting for
    /// `100 Continue` sends no body: its connection closes after the answer.
    @Test func refusalsBeforeTheEndOfTheBodyStoreNothingAndKeepTheConnection() async throws {
        let relay = try await RelayHarness { $0.ingest.maxBodyBytes = 1_000 }
        defer { Task { await relay.stop() } }
        let oversized = String(repeating: "a", count: 5_000)
        // A declared length over the limit, the body sent anyway.
        let declared = try RawHTTPConnection(port: relay.port)
        declared.send("POST /v1/candidates HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n" + oversized)
        let tooLarge = await declared.readAnswer()
        #expect(tooLarge?.status == 413)
        #expect(tooLarge?.json["error"] as? String == "payload_too_large")
        #expect(tooLarge?.headers["connection"] == nil)
        declared.send(Self.healthz)
        #expect(await declared.readAnswer()?.status == 200)

        // The same, waiting for 100 Continue: 413 instead, and the connection closes.
        let waiting = try RawHTTPConnection(port: relay.port)
        waiting.send("POST /v1/candidates HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n"
                     + "Expect: 100-continue\r\n\r\n")
        let refused = await waiting.readAnswer()
        #expect(refused?.status == 413)
        #expect(refused?.headers["connection"] == "close")
        #expect(await waiting.isClosedByServer())
        // Past Int.max too (the parser takes up to 2^64 − 1): 413 at the head, not 100 Continue.
        for length in ["9223372036854775808", "18446744073709551615"] {
            let huge = try RawHTTPConnection(port: relay.port)
            huge.send("POST /v1/candidates HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: \(length)\r\n"
                      + "Expect: 100-continue\r\n\r\n")
            #expect(await huge.readAnswer()?.status == 413, "\(length)")
        }

        // A chunked body that grows past the limit: 413 at the chunk that crosses it.
        let chunked = try RawHTTPConnection(port: relay.port)
        let chunk = String(repeating: "a", count: 600)
        chunked.send("POST /v1/candidates HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + "258\r\n\(chunk)\r\n258\r\n\(chunk)\r\n")
        #expect(await chunked.readAnswer()?.status == 413)
        chunked.send("258\r\n\(chunk)\r\n0\r\n\r\n" + Self.healthz)
        #expect(await chunked.readAnswer()?.status == 200)

        // An unknown account: 404 before the body is looked at.
        let unknown = try RawHTTPConnection(port: relay.port)
        unknown.send(Self.post(Self.candidate("wire-nobody"), path: "/v1/accounts/nobody/candidates") + Self.post(Self.candidate("wire-ok")))
        let notFound = await unknown.readAnswer()
        #expect(notFound?.status == 404)
        #expect(notFound?.json["error"] as? String == "unknown_account")
        #expect(await unknown.readAnswer()?.status == 202)
        #expect(try await Self.storedCount(relay) == 1)
    }

    @Test func connectionCloseAndAHalfClosedClientStillGetTheirAnswer() async throws {
        let relay = try await RelayHarness()
        defer { Task { await relay.stop() } }
        let closing = try RawHTTPConnection(port: relay.port)
        closing.send(Self.post(Self.candidate("wire-close"), extra: "Connection: close\r\n"))
        let answer = await closing.readAnswer()
        #expect(answer?.status == 202)
        #expect(answer?.headers["connection"] == "close")
        #expect(await closing.isClosedByServer())
        // `close` as one of a list is a close too.
        let listed = try RawHTTPConnection(port: relay.port)
        listed.send(Self.post(Self.candidate("wire-close-listed"), extra: "Connection: keep-alive, close\r\n"))
        #expect(await listed.readAnswer()?.headers["connection"] == "close")
        #expect(await listed.isClosedByServer())

        // The client sends its request and closes its sending half at once.
        let halfClosed = try RawHTTPConnection(port: relay.port)
        halfClosed.send(Self.post(Self.candidate("wire-half")))
        halfClosed.closeSending()
        #expect(await halfClosed.readAnswer()?.status == 202)
        #expect(try await Self.storedCount(relay) == 3)
    }

    /// HTTP/1.0 without `keep-alive` ends the connection after its answer (RFC 9112 §9.3): a
    /// client that reads until the close waited for the idle timeout before (found from outside).
    @Test func anHTTP10RequestWithoutKeepAliveIsAnsweredThenClosed() async throws {
        let relay = try await RelayHarness()
        defer { Task { await relay.stop() } }
        let http10 = { (request: String) in request.replacingOccurrences(of: " HTTP/1.1\r\n", with: " HTTP/1.0\r\n") }
        let webhook = try RawHTTPConnection(port: relay.port, timeoutSeconds: 5)
        webhook.send(http10(Self.post(Self.candidate("http10-webhook"))))
        #expect(await webhook.readAnswer()?.status == 202)
        #expect(await webhook.isClosedByServer())
        let router = try RawHTTPConnection(port: relay.port, timeoutSeconds: 5)
        router.send(http10(Self.healthz))
        #expect(await router.readAnswer()?.status == 200)
        #expect(await router.isClosedByServer())
        // With `keep-alive` it stays open for the next request.
        let kept = try RawHTTPConnection(port: relay.port, timeoutSeconds: 5)
        kept.send(http10(Self.post(Self.candidate("http10-kept"), extra: "Connection: keep-alive\r\n")))
        #expect(await kept.readAnswer()?.status == 202)
        kept.send(http10(Self.healthz).replacingOccurrences(of: "\r\n\r\n", with: "\r\nConnection: keep-alive\r\n\r\n"))
        #expect(await kept.readAnswer()?.status == 200)
        #expect(try await Self.storedCount(relay) == 2)
        // HTTP/1.1 asking to close, in any spelling (found from outside: only `close` itself closed
        // on the router's routes; the others stayed open, and a webhook pipelined after got a 400):
        // answered, closed, nothing after it processed.
        for connection in ["Connection: CLOSE\r\n", "Connection: keep-alive, close\r\n", "Connection: keep-alive\r\nConnection: Close\r\n"] {
            let closing = try RawHTTPConnection(port: relay.port, timeoutSeconds: 5)
            closing.send(Self.healthz.replacingOccurrences(of: "\r\n\r\n", with: "\r\n" + connection + "\r\n")
                         + Self.post(Self.candidate("after-close")))
            #expect(await closing.readAnswer()?.status == 200, "\(connection)")
            #expect(await closing.isClosedByServer(), "\(connection)")
        }
        #expect(try await Self.storedCount(relay) == 2)
    }

    /// HTTP/1.1 without `Host`, or any request with two, is a 400 (RFC 9112 §3.2), answered in
    /// its turn after what was pipelined before it; nothing of it is stored.
    @Test func aRequestWithoutHostOrWithTwoIsRefused() async throws {
        let relay = try await RelayHarness()
        defer { Task { await relay.stop() } }
        let twoHosts = try RawHTTPConnection(port: relay.port, timeoutSeconds: 5)
        twoHosts.send(Self.post(Self.candidate("host-ok")) + Self.post(Self.candidate("host-two"), extra: "Host: other\r\n")
                      + Self.post(Self.candidate("host-after")))
        #expect(await twoHosts.readAnswer()?.status == 202)
        #expect(await twoHosts.readAnswer()?.status == 400)
        #expect(await twoHosts.isClosedByServer())
        let noHost = try RawHTTPConnection(port: relay.port, timeoutSeconds: 5)
        noHost.send(Self.healthz.replacingOccurrences(of: "Host: relay\r\n", with: ""))
        #expect(await noHost.readAnswer()?.status == 400)
        #expect(await noHost.isClosedByServer())
        let noHostWebhook = try RawHTTPConnection(port: relay.port, timeoutSeconds: 5)
        noHostWebhook.send(Self.post(Self.candidate("host-none")).replacingOccurrences(of: "Host: relay\r\n", with: ""))
        #expect(await noHostWebhook.readAnswer()?.status == 400)
        // HTTP/1.0 has no Host to require.
        let http10 = try RawHTTPConnection(port: relay.port, timeoutSeconds: 5)
        http10.send("GET /healthz HTTP/1.0\r\n\r\n")
        #expect(await http10.readAnswer()?.status == 200)
        #expect(try await Self.storedCount(relay) == 1)
    }

    /// A `Transfer-Encoding` other than `chunked` alone is a 400 and a close, nothing stored
    /// (found from outside: `gzip, chunked` with a plain body was stored; a proxy in front that
    /// applies the codings it is told of reads another body). `chunked` alone, in any case, is
    /// read as before.
    @Test func aTransferCodingOtherThanChunkedIsRefused() async throws {
        let relay = try await RelayHarness()
        defer { Task { await relay.stop() } }
        func chunked(_ id: String, _ fields: String) -> String {
            let body = Self.candidate(id)
            return "POST /v1/candidates HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n\(fields)\r\n"
                + String(body.utf8.count, radix: 16) + "\r\n" + body + "\r\n0\r\n\r\n"
        }
        let refused = ["Transfer-Encoding: gzip, chunked\r\n", "Transfer-Encoding: identity, chunked\r\n",
                       "Transfer-Encoding: foo,chunked\r\n", "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"]
        for (n, fields) in refused.enumerated() {
            let connection = try RawHTTPConnection(port: relay.port, timeoutSeconds: 5)
            connection.send(Self.post(Self.candidate("te-before-\(n)")) + chunked("te-\(n)", fields))
            #expect(await connection.readAnswer()?.status == 202, "\(fields)")
            #expect(await connection.readAnswer()?.status == 400, "\(fields)")
            #expect(await connection.isClosedByServer(), "\(fields)")
        }
        #expect(try await Self.storedCount(relay) == refused.count)
        for (n, fields) in ["Transfer-Encoding: chunked\r\n", "Transfer-Encoding: Chunked\r\n"].enumerated() {
            let connection = try RawHTTPConnection(port: relay.port, timeoutSeconds: 5)
            connection.send(chunked("te-ok-\(n)", fields))
            #expect(await connection.readAnswer()?.status == 202, "\(fields)")
        }
        #expect(try await Self.storedCount(relay) == refused.count + 2)
    }

    /// A request asking to switch protocols (curl's `--http2` on `http://`, Java's `HttpClient`)
    /// is answered as HTTP/1.1 and its connection then closed (found from outside: SwiftNIO's
    /// parser reads nothing after it, and the next request on the connection waited a minute for
    /// the idle timeout, unanswered). `CONNECT` and an HTTP/1.0 request with a
    /// `Transfer-Encoding` (faulty framing, RFC 9112 §6.1) are 400 and a close, nothing stored.
    @Test func anUpgradeIsAnsweredThenClosedAndConnectOrAnHTTP10TransferCodingIsRefused() async throws {
        let relay = try await RelayHarness()
        defer { Task { await relay.stop() } }
        let h2c = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
        let webhook = try RawHTTPConnection(port: relay.port, timeoutSeconds: 5)
        webhook.send(Self.post(Self.candidate("upgrade-webhook"), extra: h2c) + Self.post(Self.candidate("upgrade-after")))
        #expect(await webhook.readAnswer()?.status == 202)
        #expect(await webhook.isClosedByServer())
        let router = try RawHTTPConnection(port: relay.port, timeoutSeconds: 5)
        router.send(Self.healthz.replacingOccurrences(of: "\r\n\r\n", with: "\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n") + Self.healthz)
        #expect(await router.readAnswer()?.status == 200)
        #expect(await router.isClosedByServer())
        // Nothing was read after the upgrade's request: the webhook behind it is not stored.
        #expect(try await Self.storedCount(relay) == 1)

        let connect = try RawHTTPConnection(port: relay.port, timeoutSeconds: 5)
        connect.send("CONNECT relay:443 HTTP/1.1\r\nHost: relay:443\r\n\r\n")
        #expect(await connect.readAnswer()?.status == 400)
        #expect(await connect.isClosedByServer())
        let body = Self.candidate("http10-chunked")
        let http10Chunked = try RawHTTPConnection(port: relay.port, timeoutSeconds: 5)
        http10Chunked.send("POST /v1/candidates HTTP/1.0\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
                           + "Transfer-Encoding: chunked\r\n\r\n" + String(body.utf8.count, radix: 16) + "\r\n" + body + "\r\n0\r\n\r\n")
        #expect(await http10Chunked.readAnswer()?.status == 400)
        #expect(await http10Chunked.isClosedByServer())
        #expect(try await Self.storedCount(relay) == 1)
    }

    /// A framing error after a webhook, then the client's half-close: the webhook's 202, then
    /// the 400, then the close (found from outside: the 400 was lost, only the 202 came).
    @Test func aMalformedRequestAfterAWebhookIsAnsweredBeforeAHalfClose() async throws {
        let relay = try await RelayHarness()
        defer { Task { await relay.stop() } }
        for tail in [Self.post(Self.candidate("framing-1")), Self.healthz] {
            let connection = try RawHTTPConnection(port: relay.port, timeoutSeconds: 5)
            connection.send(tail + "GARBAGE\r\n\r\n")
            connection.closeSending()
            var statuses: [Int] = []
            for _ in 0..<2 { if let answer = await connection.readAnswer() { statuses.append(answer.status) } }
            #expect(statuses.last == 400, "\(statuses)")
            #expect(statuses.count == 2, "\(statuses)")
        }
    }

    /// Pipelined webhooks and router requests, then the client's half-close, in one write: the
    /// end of input reaches the router after the requests before it, so every request is
    /// answered (the router used to see it first and close: a stored webhook went unanswered,
    /// and its sender would retry it).
    @Test func aHalfCloseAfterPipelinedWebhooksWaitsForEveryAnswer() async throws {
        let relay = try await RelayHarness()
        defer { Task { await relay.stop() } }
        let connection = try RawHTTPConnection(port: relay.port)
        connection.send(Self.post(Self.candidate("half-1")) + Self.post(Self.candidate("half-2")) + Self.healthz
                        + Self.post(Self.candidate("half-3")) + Self.healthz)
        connection.closeSending()
        var statuses: [Int] = []
        for _ in 0..<5 { if let answer = await connection.readAnswer() { statuses.append(answer.status) } }
        #expect(statuses == [202, 202, 200, 202, 200])
        #expect(await connection.isClosedByServer())
        #expect(try await Self.storedCount(relay) == 3)
    }

    /// A stop while a webhook's body is still coming (a stalled or slow sender): the webhook is
    /// answered 503 at once, nothing is stored, and the stop does not wait for the rest of the
    /// body — nor for a slow body on a path the router answers (closed a few seconds later).
    @Test func aStopDoesNotWaitForABodyStillComing() async throws {
        let relay = try await RelayHarness()
        defer { Task { await relay.stop() } }
        let webhook = try RawHTTPConnection(port: relay.port)
        webhook.send("POST /v1/candidates HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
        let routed = try RawHTTPConnection(port: relay.port)
        routed.send("POST /v1/candidates/ HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
        // Both heads are read before the stop begins (if not, the connection is idle, closes
        // without an answer, and the expectations below fail).
        try await Task.sleep(for: .milliseconds(300))
        let stopped = StopTask { await relay.shutdownAndWait() }
        let answer = await webhook.readAnswer()
        #expect(answer?.status == 503)
        #expect(answer?.json["error"] as? String == "unavailable")
        #expect(answer?.headers["connection"] == "close")
        // Neither sender stops sending nor closes: the stop must end on its own. (Before, it
        // waited for the bodies for ever; 30 s is a bound for a hang, not a speed goal.)
        let trickle = Task {
            while !Task.isCancelled {
                webhook.send(" ")
                routed.send(" ")
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
        let ended = await eventually(timeout: 30, interval: 0.1) { stopped.isFinished }
        trickle.cancel()
        #expect(ended, "the stop waited for the senders")
        webhook.close()
        routed.close()
        await stopped.value
        let outbox = try Outbox(path: relay.application.configuration.storage.path)
        #expect(try await outbox.status(now: Date()).counts.values.reduce(0, +) == 0)
    }

    /// A body that trickles (a byte every 100 ms, here against a 1 s grace and 1 KiB/s) gets
    /// its connection closed, logged once; the daemon goes on taking webhooks. In the daemon the
    /// grace is 60 s: before, the idle timeout counted body reads as activity and such a
    /// connection stayed open for as long as its sender liked.
    @Test func aBodyThatTricklesLosesItsConnection() async throws {
        let relay = try await RelayHarness(bodyDeadline: BodyDeadlinePolicy(graceSeconds: 1, bytesPerSecond: 1024))
        defer { Task { await relay.stop() } }
        let slow = try RawHTTPConnection(port: relay.port)
        slow.send("POST /v1/candidates HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
        let trickle = Task {
            while !Task.isCancelled {
                slow.send(" ")
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
        // The connection's own receive timeout (10 s) bounds a hang: a close is what it waits for.
        #expect(await slow.isClosedByServer())
        trickle.cancel()
        slow.close()
        #expect(relay.logs.events("ingest.body_too_slow").count == 1)
        #expect(try await relay.post(Candidates.json(partnerID: "after-trickle")) != nil)
    }

    /// An idempotency key whose bytes are not UTF-8 is refused (422 `invalid_characters`): the
    /// HTTP/1 decoder turns each bad byte into U+FFFD, and `a\xffb` and `a\xfeb` were one key
    /// (a false 409, or a new event answered as a replay). U+FFFD itself is refused with them.
    @Test func anIdempotencyKeyThatIsNotUTF8IsRefused() async throws {
        let relay = try await RelayHarness()
        defer { Task { await relay.stop() } }
        let connection = try RawHTTPConnection(port: relay.port)
        for (n, key) in [Data([0x61, 0xFF, 0x62]), Data([0x61, 0xFE, 0x62])].enumerated() {
            let body = Self.candidate("bad-key-\(n)")
            var request = Data("POST /v1/candidates HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nIdempotency-Key: ".utf8)
            request.append(key)
            request.append(Data("\r\n\r\n\(body)".utf8))
            connection.send(request)
            let answer = await connection.readAnswer()
            #expect(answer?.status == 422)
            #expect(answer?.json["error"] as? String == "invalid_characters")
            let details = answer?.json["details"] as? [[String: String]]
            #expect(details == [["field": "Idempotency-Key", "problem": "invalid_characters"]])
            #expect(answer?.json["message"] as? String == "the Idempotency-Key header is not valid UTF-8")
        }
        connection.send(Self.post(Self.candidate("fffd-key"), key: "a\u{FFFD}b"))
        #expect(await connection.readAnswer()?.status == 422)
        connection.send(Self.post(Self.candidate("ok-key"), key: "a\u{E9}b"))
        #expect(await connection.readAnswer()?.status == 202)
        #expect(try await Self.storedCount(relay) == 1)
    }

    /// The key header twice is refused (422 `repeated`): read as one value, `a` and `b` became
    /// the key `a, b`, which a single header of that value would replay.
    @Test func aRepeatedKeyHeaderIsRefused() async throws {
        let relay = try await RelayHarness()
        defer { Task { await relay.stop() } }
        let connection = try RawHTTPConnection(port: relay.port)
        connection.send(Self.post(Self.candidate("twice"), extra: "Idempotency-Key: a\r\nIdempotency-Key: b\r\n"))
        let answer = await connection.readAnswer()
        #expect(answer?.status == 422)
        #expect(answer?.json["details"] as? [[String: String]] == [["field": "Idempotency-Key", "problem": "repeated"]])
        #expect(answer?.json["message"] as? String == "the Idempotency-Key header is sent more than once: one key per request")
        // One header whose value holds ", " is one key.
        connection.send(Self.post(Self.candidate("once"), key: "a, b"))
        #expect(await connection.readAnswer()?.status == 202)
        connection.send(Self.post(Self.candidate("once"), key: "a, b"))
        #expect(await connection.readAnswer()?.status == 200)
        #expect(try await Self.storedCount(relay) == 1)
    }

    /// A key over 1,024 bytes is refused: it was stored, and indexed, for the retention.
    @Test func aKeyOverTheLimitIsRefused() async throws {
        let relay = try await RelayHarness()
        defer { Task { await relay.stop() } }
        let connection = try RawHTTPConnection(port: relay.port)
        connection.send(Self.post(Self.candidate("long-key"), key: String(repeating: "k", count: 1_025)))
        let answer = await connection.readAnswer()
        #expect(answer?.status == 422)
        #expect(answer?.json["details"] as? [[String: String]] == [["field": "Idempotency-Key", "problem": "string_size_limit"]])
        #expect(answer?.json["message"] as? String == "the Idempotency-Key header is longer than 1024 bytes")
        connection.send(Self.post(Self.candidate("long-key"), key: String(repeating: "k", count: 1_024)))
        #expect(await connection.readAnswer()?.status == 202)
        #expect(try await Self.storedCount(relay) == 1)
    }

    @Test func bytesThatAreNotHTTPAfterAWebhookGetA400AfterItsAnswer() async throws {
        let relay = try await RelayHarness()
        defer { Task { await relay.stop() } }
        let connection = try RawHTTPConnection(port: relay.port)
        connection.send(Self.post(Self.candidate("wire-garbage")) + "NOT HTTP AT ALL\r\n\r\n")
        #expect(await connection.readAnswer()?.status == 202)
        #expect(await connection.readAnswer()?.status == 400)
        #expect(await connection.isClosedByServer())
        #expect(try await Self.storedCount(relay) == 1)
    }
}

/// A task whose end can be polled.
final class StopTask: Sendable {
    private final class Flag: Sendable {
        let done = Mutex(false)
    }
    private let flag = Flag()
    private let task: Task<Void, Never>

    init(_ body: @escaping @Sendable () async -> Void) {
        let flag = self.flag
        task = Task {
            await body()
            flag.done.withLock { $0 = true }
        }
    }

    var isFinished: Bool { flag.done.withLock { $0 } }
    var value: Void { get async { await task.value } }
}
