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

    /// An ingest handler on a thread-safe test channel, behind a read counter, with SQLite's
    /// writer queue held (`release` lets it go): a webhook's commit waits until then.
    struct Stalled {
        let channel: NIOAsyncTestingChannel
        let reads: ReadCounter
        let release: @Sendable () -> Void
        let writer: Task<Void, any Error>

        /// Reads that reached the counter for one `read()` from the pipeline's tail.
        func read() async throws -> Int {
            let before = reads.count.load(ordering: .relaxed)
            let channel = channel
            try await channel.testingEventLoop.executeInContext { channel.pipeline.read() }
            return reads.count.load(ordering: .relaxed) - before
        }
    }

    static func stalled(_ f: IngestTests.Fixture) async throws -> Stalled {
        let gate = DispatchSemaphore(value: 0)
        let holding = Atomic<Bool>(false)
        let writer = Task { try await f.outbox.write { _ in holding.store(true, ordering: .relaxed); gate.wait() } }
        #expect(await eventually(timeout: 10, interval: 0.001) { holding.load(ordering: .relaxed) })
        let reads = ReadCounter()
        let channel = NIOAsyncTestingChannel()
        let ingest = f.handler
        try await channel.testingEventLoop.executeInContext {
            try channel.pipeline.syncOperations.addHandlers([reads, IngestChannelHandler(ingest: ingest, serverName: "candidate-relay")])
        }
        return Stalled(channel: channel, reads: reads, release: { gate.signal() }, writer: writer)
    }

    static let valid = #"{"position_uid":"11.11","partner_candidate_id":"c-1","first_name":"Ada","last_name":"Person","email":"ada@example.com"}"#

    /// While a webhook is stored and the client sent nothing after it, reads go on (stopping and
    /// starting them again for every webhook cost two `epoll_ctl` calls per request); once the
    /// client pipelines something, no more is read until its turn, then reading resumes.
    @Test func readsGoOnWhileAWebhookIsStoredUntilSomethingIsHeld() async throws {
        let f = try IngestTests.fixture()
        defer { f.dir.cleanup() }
        let t = try await Self.stalled(f)
        for part in Self.webhook(Self.valid) { try await t.channel.writeInbound(part) }
        // Being stored, nothing after it: the read goes through.
        #expect(try await t.read() == 1)
        // The client pipelines the next webhook's head: held, and reads wait.
        try await t.channel.writeInbound(Self.webhook(Self.valid)[0])
        #expect(try await t.read() == 0)
        #expect(try await t.channel.readOutbound(as: HTTPResponsePart.self) == nil)

        t.release()
        try await t.writer.value
        // The first answer goes out, then the held head is taken up and the held read made.
        let head = try await t.channel.waitForOutboundWrite(as: HTTPResponsePart.self)
        guard case .head(let response) = head else {
            Issue.record("expected the answer's head, got \(head)")
            return
        }
        #expect(response.status.code == 202)
        #expect(await eventually(timeout: 10, interval: 0.002) { t.reads.count.load(ordering: .relaxed) == 2 })
        _ = try? await t.channel.finish()
    }

    /// A webhook after which the connection closes (`Connection: close`): nothing more is read
    /// while it is stored, as anything read would only be dropped (review).
    @Test func aWebhookBeforeACloseReadsNoMore() async throws {
        let f = try IngestTests.fixture()
        defer { f.dir.cleanup() }
        let t = try await Self.stalled(f)
        var parts = Self.webhook(Self.valid)
        if case .head(var head) = parts[0] {
            head.headerFields[.connection] = "close"
            parts[0] = .head(head)
        }
        for part in parts { try await t.channel.writeInbound(part) }
        #expect(try await t.read() == 0)
        t.release()
        try await t.writer.value
        let head = try await t.channel.waitForOutboundWrite(as: HTTPResponsePart.self)
        guard case .head(let response) = head else {
            Issue.record("expected the answer's head, got \(head)")
            return
        }
        #expect(response.status.code == 202)
        _ = try? await t.channel.finish()
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
