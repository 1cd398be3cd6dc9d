import CandidateRelayTesting
import Foundation
import HTTPTypes
import NIOCore
import NIOEmbedded
import NIOHTTPTypes
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
}
