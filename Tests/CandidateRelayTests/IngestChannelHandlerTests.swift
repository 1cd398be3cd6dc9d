import CandidateRelayTesting
import Foundation
import HTTPTypes
import NIOCore
import NIOEmbedded
import NIOHTTPTypes
import Synchronization
import Testing
@testable import CandidateRelay

/// The ingest channel handler on an embedded channel: what it does with the connection's
/// writability. (Its answers on the wire are in `IngestWireEndToEndTests`.)
@Suite struct IngestChannelHandlerTests {
    static func webhook(_ body: String) -> [HTTPRequestPart] {
        let head = HTTPRequest(method: .post, scheme: nil, authority: "relay", path: "/v1/candidates",
                               headerFields: [.contentType: "application/json", .contentLength: String(body.utf8.count)])
        return [.head(head), .body(ByteBuffer(string: body)), .end(nil)]
    }

    /// Statuses of the answers written so far.
    static func answers(_ channel: EmbeddedChannel) throws -> [Int] {
        var statuses: [Int] = []
        while let part = try channel.readOutbound(as: HTTPResponsePart.self) {
            if case .head(let response) = part { statuses.append(response.status.code) }
        }
        return statuses
    }

    /// A client that pipelines webhooks and reads no answers: once the connection takes no more
    /// output, the next webhook waits (nothing read, nothing stored) until it does again.
    @Test func anUnwritableConnectionHoldsTheNextWebhook() throws {
        let f = try IngestTests.fixture()
        defer { f.dir.cleanup() }
        let channel = EmbeddedChannel(handler: IngestChannelHandler(ingest: f.handler, serverName: "candidate-relay"))
        // Two webhooks that fail validation (422): answered on the loop, without the outbox.
        // The second arrives while the first is being answered, and is held.
        let invalid = #"{"position_uid":"11.11","first_name":"","last_name":"Person"}"#
        for part in Self.webhook(invalid) + Self.webhook(invalid) { try channel.writeInbound(part) }
        // Then the client stops reading: the connection takes no more output.
        channel.isWritable = false
        channel.pipeline.fireChannelWritabilityChanged()
        channel.embeddedEventLoop.run()
        let first = try Self.answers(channel)
        #expect(first == [422], "\(first)")  // the first; the second waits for the client
        channel.isWritable = true
        channel.pipeline.fireChannelWritabilityChanged()
        channel.embeddedEventLoop.run()
        let second = try Self.answers(channel)
        #expect(second == [422], "\(second)")
        _ = try channel.finish()
    }

    /// An ingest handler on a thread-safe test channel, behind a read counter.
    static func channel(_ f: IngestTests.Fixture) async throws -> (NIOAsyncTestingChannel, ReadCounter) {
        let reads = ReadCounter()
        let channel = NIOAsyncTestingChannel()
        let ingest = f.handler
        try await channel.testingEventLoop.executeInContext {
            try channel.pipeline.syncOperations.addHandlers([reads, IngestChannelHandler(ingest: ingest, serverName: "candidate-relay")])
        }
        return (channel, reads)
    }

    static let valid = #"{"position_uid":"11.11","partner_candidate_id":"c-1","first_name":"Ada","last_name":"Person","email":"ada@example.com"}"#

    /// While a webhook is stored and the client sent nothing after it, reads go on (stopping and
    /// starting them again for every webhook cost two `epoll_ctl` calls per request); once the
    /// client pipelines something, no more is read until its turn, then reading resumes.
    @Test func readsGoOnWhileAWebhookIsStoredUntilSomethingIsHeld() async throws {
        let f = try IngestTests.fixture()
        defer { f.dir.cleanup() }
        let (channel, reads) = try await Self.channel(f)
        let parts = Self.webhook(Self.valid)
        // All in one turn of the event loop: the commit's answer, which comes back through the
        // loop, cannot be written in between, so the webhook is still being stored.
        let counts = try await channel.testingEventLoop.executeInContext { () -> (Int, Int) in
            for part in parts { channel.pipeline.fireChannelRead(NIOAny(part)) }
            channel.pipeline.fireChannelReadComplete()
            // Being stored, nothing after it: the read goes through.
            channel.pipeline.read()
            let whileStored = reads.count.load(ordering: .relaxed)
            // The client pipelines the next webhook's head: held, and reads wait.
            channel.pipeline.fireChannelRead(NIOAny(parts[0]))
            channel.pipeline.read()
            return (whileStored, reads.count.load(ordering: .relaxed) - whileStored)
        }
        #expect(counts == (1, 0))
        // The first answer goes out, then the held head is taken up and the held read made.
        let head = try await channel.waitForOutboundWrite(as: HTTPResponsePart.self)
        guard case .head(let response) = head else {
            Issue.record("expected the answer's head, got \(head)")
            return
        }
        #expect(response.status.code == 202)
        #expect(await eventually(timeout: 10, interval: 0.002) { reads.count.load(ordering: .relaxed) == 2 })
        _ = try? await channel.finish()
    }

    /// A webhook after which the connection closes (`Connection: close`): nothing more is read
    /// while it is stored, as anything read would only be dropped (review).
    @Test func aWebhookBeforeACloseReadsNoMore() async throws {
        let f = try IngestTests.fixture()
        defer { f.dir.cleanup() }
        let (channel, reads) = try await Self.channel(f)
        var parts = Self.webhook(Self.valid)
        if case .head(var head) = parts[0] {
            head.headerFields[.connection] = "close"
            parts[0] = .head(head)
        }
        let sent = parts
        let whileStored = try await channel.testingEventLoop.executeInContext { () -> Int in
            for part in sent { channel.pipeline.fireChannelRead(NIOAny(part)) }
            channel.pipeline.fireChannelReadComplete()
            channel.pipeline.read()
            return reads.count.load(ordering: .relaxed)
        }
        #expect(whileStored == 0)
        let head = try await channel.waitForOutboundWrite(as: HTTPResponsePart.self)
        guard case .head(let response) = head else {
            Issue.record("expected the answer's head, got \(head)")
            return
        }
        #expect(response.status.code == 202)
        _ = try? await channel.finish()
    }
}

extension IngestChannelHandlerTests {
    /// Found from outside: a client pipelining `GET /metrics` and reading nothing had ~1,300
    /// requests read ahead (~1.4 MB a connection). Reads wait once the router owes
    /// `routerReadAhead` answers, and go on as they are written.
    @Test func readsWaitWhileTheRouterOwesManyAnswers() async throws {
        let f = try IngestTests.fixture()
        defer { f.dir.cleanup() }
        let (channel, reads) = try await Self.channel(f)
        let counts = try await channel.testingEventLoop.executeInContext { () -> [Int] in
            let get = HTTPRequest(method: .get, scheme: nil, authority: "relay", path: "/healthz")
            for _ in 0..<(IngestChannelHandler.routerReadAhead - 1) {
                channel.pipeline.fireChannelRead(NIOAny(HTTPRequestPart.head(get)))
                channel.pipeline.fireChannelRead(NIOAny(HTTPRequestPart.end(nil)))
            }
            channel.pipeline.read()
            var counts = [reads.count.load(ordering: .relaxed)]  // one short of the bound: read
            channel.pipeline.fireChannelRead(NIOAny(HTTPRequestPart.head(get)))
            channel.pipeline.fireChannelRead(NIOAny(HTTPRequestPart.end(nil)))
            channel.pipeline.read()
            counts.append(reads.count.load(ordering: .relaxed))  // at the bound: held
            channel.pipeline.write(NIOAny(HTTPResponsePart.head(HTTPResponse(status: .ok))), promise: nil)
            channel.pipeline.write(NIOAny(HTTPResponsePart.end(nil)), promise: nil)
            counts.append(reads.count.load(ordering: .relaxed))  // one answered: the held read made
            return counts
        }
        #expect(counts == [1, 1, 2], "\(counts)")
        _ = try? await channel.finish()
    }

    /// Found from outside: a connection whose client read none of its answers was held for good
    /// (the idle timeout does not run while an answer is being written). Closed once it has taken
    /// no output for `stalledOutputSeconds`; one that takes output again in time stays.
    @Test func aConnectionThatTakesNoOutputIsClosed() throws {
        let f = try IngestTests.fixture()
        defer { f.dir.cleanup() }
        let channel = EmbeddedChannel(handler: IngestChannelHandler(ingest: f.handler, serverName: "candidate-relay"))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        func writable(_ value: Bool) {
            channel.isWritable = value
            channel.pipeline.fireChannelWritabilityChanged()
        }
        writable(false)
        channel.embeddedEventLoop.advanceTime(by: .seconds(IngestChannelHandler.stalledOutputSeconds - 1))
        writable(true)
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        #expect(channel.isActive)
        writable(false)
        channel.embeddedEventLoop.advanceTime(by: .seconds(IngestChannelHandler.stalledOutputSeconds))
        #expect(!channel.isActive)
    }
}

/// Counts the reads that reach it (placed before the handler under test, toward the socket).
final class ReadCounter: ChannelOutboundHandler, Sendable {
    typealias OutboundIn = Any
    let count = Atomic<Int>(0)

    func read(context: ChannelHandlerContext) {
        count.add(1, ordering: .relaxed)
        context.read()
    }
}
