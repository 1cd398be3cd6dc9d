import Foundation
import HTTPTypes
import NIOCore
import NIOEmbedded
import NIOHTTPTypes
import Synchronization
import Testing
@testable import CandidateRelay

/// A request body that trickles closes its connection; a slow but steady one, or one that
/// arrived, does not. On an embedded channel, whose clock only moves when told.
@Suite struct BodyDeadlineHandlerTests {
    final class Reports: Sendable {
        let count = Mutex(0)
    }

    final class Fixture {
        let reports = Reports()
        let channel: EmbeddedChannel

        init() throws {
            let reports = self.reports
            channel = EmbeddedChannel(handler: BodyDeadlineHandler(policy: BodyDeadlinePolicy(graceSeconds: 60, bytesPerSecond: 1024)) {
                reports.count.withLock { $0 += 1 }
            })
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        }

        var closedCount: Int { reports.count.withLock { $0 } }
        var isOpen: Bool { channel.isActive }

        static let headPart = HTTPRequestPart.head(HTTPRequest(method: .post, scheme: nil, authority: "relay", path: "/v1/candidates"))

        func head() throws { try channel.writeInbound(Self.headPart) }
        func body(_ bytes: Int) throws { try channel.writeInbound(HTTPRequestPart.body(ByteBuffer(repeating: 0x20, count: bytes))) }
        func end() throws { try channel.writeInbound(HTTPRequestPart.end(nil)) }
        func advance(seconds: Int64) { channel.embeddedEventLoop.advanceTime(by: .seconds(seconds)) }
        func finish() { _ = try? channel.finish(acceptAlreadyClosed: true) }

        /// Still open `seconds` from now, closed (and reported once) 2 s later.
        func expectCutOff(openFor seconds: Int64, sourceLocation: SourceLocation = #_sourceLocation) {
            advance(seconds: seconds)
            #expect(isOpen, sourceLocation: sourceLocation)
            advance(seconds: 2)
            #expect(!isOpen, sourceLocation: sourceLocation)
            #expect(closedCount == 1, sourceLocation: sourceLocation)
        }
    }

    /// A byte every 5 s: cut off once the first 60 s are over (its 11 bytes earned 11 ms more).
    @Test func aTricklingBodyIsCutOffAfterItsGrace() throws {
        let f = try Fixture()
        defer { f.finish() }
        try f.head()
        for _ in 0..<11 {
            f.advance(seconds: 5)
            try f.body(1)
        }
        f.expectCutOff(openFor: 4)  // open 59 s after the head, closed at 61 s
    }

    /// 2 KiB a second for five minutes (a slow link, above the 1 KiB/s floor), then the end:
    /// never cut off, nor afterwards while the connection is idle between requests.
    @Test func aSlowButSteadyBodyIsNotCutOff() throws {
        let f = try Fixture()
        defer { f.finish() }
        try f.head()
        for _ in 0..<300 {
            f.advance(seconds: 1)
            try f.body(2048)
        }
        try f.end()
        f.advance(seconds: 3600)
        #expect(f.isOpen)
        #expect(f.closedCount == 0)
    }

    /// 100 KiB at once, then nothing: the grace plus 100 s for what came. (The handler alone: in
    /// the daemon the idle timeout closes such a connection first, 60 s after its last part.)
    @Test func aBodyThatStallsGetsTimeForWhatItSent() throws {
        let f = try Fixture()
        defer { f.finish() }
        try f.head()
        try f.body(100 * 1024)
        f.expectCutOff(openFor: 159)
    }

    /// A request that arrives whole in one read, then another one later on the same connection:
    /// each is judged on its own, and a complete one is never cut off.
    @Test func completeRequestsAreNeverCutOff() throws {
        let f = try Fixture()
        defer { f.finish() }
        let pipeline = f.channel.pipeline.syncOperations
        pipeline.fireChannelRead(NIOAny(Fixture.headPart))
        pipeline.fireChannelRead(NIOAny(HTTPRequestPart.body(ByteBuffer(repeating: 0x20, count: 2048))))
        pipeline.fireChannelRead(NIOAny(HTTPRequestPart.end(nil)))
        pipeline.fireChannelReadComplete()
        f.advance(seconds: 3600)
        #expect(f.isOpen)
        // The second request's clock starts at its own head.
        try f.head()
        f.advance(seconds: 59)
        try f.end()
        f.advance(seconds: 3600)
        #expect(f.isOpen)
        #expect(f.closedCount == 0)
    }
}
