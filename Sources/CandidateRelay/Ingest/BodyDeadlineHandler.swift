import Foundation
import Logging
import NIOCore
import NIOHTTPTypes

/// How slowly a request may arrive (`BodyDeadlineHandler`). Fixed in the daemon; the tests
/// shorten it.
public struct BodyDeadlinePolicy: Sendable {
    /// From a request's head, before any rate is asked of its body.
    public var graceSeconds: Int64
    /// Each byte of body received adds 1/`bytesPerSecond` s to the request's time.
    public var bytesPerSecond: Int64

    public init(graceSeconds: Int64 = 60, bytesPerSecond: Int64 = 1024) {
        precondition(graceSeconds >= 0 && graceSeconds <= 86_400 && bytesPerSecond > 0, "a body deadline needs a grace of 0 to 86,400 s and a positive rate")
        self.graceSeconds = graceSeconds
        self.bytesPerSecond = bytesPerSecond
    }
}

/// A request's body must keep coming: the connection is closed when a request is not complete
/// `graceSeconds` after its head, plus one second for every `bytesPerSecond` bytes of body
/// received. A client on a slow link is not cut off (1 KiB/s after the first minute), one that
/// trickles is.
///
/// Found from outside: the idle timeout (60 s) counts request parts, and every read of a body is
/// one, so a body sent a byte every few seconds kept its connection open for as long as the
/// sender liked (still open after 150 s in a probe from outside, for a declared 100,000 bytes).
/// Enough such connections, without a valid signature (that is checked once the body is in),
/// held every place under the connection cap, and no webhook got in. Headers that trickle were
/// already closed by the idle timeout: a head is a single part. A request that stops altogether
/// is closed by whichever comes first, this deadline or the idle timeout (60 s after its last
/// part), so the log line says "too slowly or stopped".
///
/// This stops trickling bodies only: a client can still keep a connection by completing a tiny
/// request every 59 s. A limit per client address belongs in the proxy in front (operations.md).
///
/// Every request on the connection is watched, the webhook and the router's alike. A request
/// that arrives in one read (a webhook of a few KB usually does) sets no timer.
final class BodyDeadlineHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart

    private let policy: BodyDeadlinePolicy
    /// Called when a connection is closed for a body too slow (the log line, throttled).
    private let report: @Sendable () -> Void
    /// When the request being received must be complete; nil between requests.
    private var deadline: NIODeadline?
    private var timer: Scheduled<Void>?

    init(policy: BodyDeadlinePolicy, report: @escaping @Sendable () -> Void) {
        self.policy = policy
        self.report = report
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            deadline = context.eventLoop.now + .seconds(policy.graceSeconds)
        case .body(let buffer):
            deadline = deadline.map { $0 + .nanoseconds(Int64(buffer.readableBytes) * 1_000_000_000 / policy.bytesPerSecond) }
        case .end:
            deadline = nil
            timer?.cancel()
            timer = nil
        }
        context.fireChannelRead(data)
    }

    /// A request still incomplete at the end of a read is watched from now on.
    func channelReadComplete(context: ChannelHandlerContext) {
        if deadline != nil && timer == nil { watch(context: context) }
        context.fireChannelReadComplete()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        deadline = nil
    }

    /// Wakes at the deadline as it is now; the body received meanwhile may have moved it on
    /// (then it waits again, rather than rescheduling at every read).
    private func watch(context: ChannelHandlerContext) {
        guard let due = deadline else { return }
        timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: due) { [self] in
            timer = nil
            guard let current = deadline else { return }
            if current > context.eventLoop.now {
                watch(context: context)
            } else {
                deadline = nil
                report()
                // Through the whole pipeline: the ingest handler holds a close while it stores a
                // webhook, so that an event committed still gets its answer.
                context.channel.close(promise: nil)
            }
        }
    }
}

/// `ingest.body_too_slow`, at most once a minute for the whole server, with the number left out.
struct SlowBodyLog: Sendable {
    let logger: Logger
    let policy: BodyDeadlinePolicy
    private let throttle = LogThrottle(seconds: 60)

    init(logger: Logger, policy: BodyDeadlinePolicy) {
        self.logger = logger
        self.policy = policy
    }

    func report() {
        guard let suppressed = throttle.admit(now: Date()) else { return }
        logger.event(.warning, "ingest.body_too_slow",
                     "closed a connection whose request arrived too slowly or stopped (not complete \(policy.graceSeconds) s after its head plus 1 s per \(policy.bytesPerSecond) bytes of body)",
                     LogFields(numbers: ["suppressed": Double(suppressed)]))
    }
}
