import NIOCore
import NIOHTTP1

/// Two rules of HTTP/1.x that need what Hummingbird's conversion to HTTPTypes drops (the
/// request's version, the `Host` lines as sent), checked before that conversion (found from
/// outside):
/// - An HTTP/1.0 request without `keep-alive` ends its connection (RFC 9112 §9.3). Hummingbird
///   and the ingest handler took it for HTTP/1.1's keep-alive: a 1.0 client that reads its answer
///   until the close waited a minute, the idle timeout, and held a connection meanwhile. It is
///   said here in the terms both read: `Connection: close`.
/// - An HTTP/1.1 request without `Host`, and any request with more than one, is a 400 (RFC 9112
///   §3.2): two `Host` lines are how a request means one thing to a proxy in front and another
///   here. It is passed on as a parse error, which is answered as every malformed request is
///   (400, then close, after the answers owed before it); the rest of the connection's input is
///   dropped.
/// - A request whose `Transfer-Encoding` is anything but `chunked` alone is refused the same
///   way (found from outside: `gzip, chunked` with a plain body was stored, and a proxy in front
///   that applies the codings it is told of reads another body than the one stored). The relay
///   decodes no transfer coding but chunked (RFC 9112 §6.1 allows 501; a 400 and a close, as
///   for every request whose body cannot be read as sent, tells the sender as much). So is an
///   HTTP/1.0 request with any `Transfer-Encoding` (RFC 9112 §6.1: its framing is faulty; it
///   was read as chunked and the connection kept).
/// - A request asking to switch protocols (`Upgrade` named in `Connection`: curl's `--http2`
///   on an `http://` URL, Java's `HttpClient` by default) is answered as HTTP/1.1, as RFC 9110
///   §7.8 allows, and then ends its connection. SwiftNIO's parser reads nothing more of a
///   connection after such a request (it leaves the rest to an upgrader, and there is none):
///   found from outside, the next request on it waited a minute for the idle timeout, unanswered.
/// - `CONNECT` is refused the same way (400, then close): an origin server has no tunnel to
///   open, and the parser stops after it as after an upgrade.
final class RequestHeadRules: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart

    private var refused = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !refused else { return }
        guard case .head(var head) = unwrapInboundIn(data) else {
            context.fireChannelRead(data)
            return
        }
        let hosts = head.headers["host"].count
        let codings = head.headers[canonicalForm: "transfer-encoding"]
        if hosts > 1 || (hosts == 0 && head.version != .http1_0) || !Self.onlyChunked(codings)
            || (head.version == .http1_0 && !codings.isEmpty) || head.method == .CONNECT {
            refused = true
            context.fireErrorCaught(HTTPParserError.invalidHeaderToken)
            return
        }
        // Any request that ends its connection (RFC 9112 §9.6), however it says so: Hummingbird
        // closes only for a `Connection` field that is exactly `close` (found from outside:
        // `Connection: Close`, `keep-alive, close` or two fields left the connection open, and a
        // request pipelined after it got a 400 instead of nothing).
        guard !head.isKeepAlive || Self.asksUpgrade(head.headers) else {
            context.fireChannelRead(data)
            return
        }
        head.headers.replaceOrAdd(name: "connection", value: "close")
        context.fireChannelRead(wrapInboundOut(.head(head)))
    }

    /// True when `Connection` names `upgrade`: what makes SwiftNIO's parser stop after the
    /// request (an `Upgrade` field alone does not).
    static func asksUpgrade(_ headers: HTTPHeaders) -> Bool {
        headers[canonicalForm: "connection"].contains { $0.lowercased() == "upgrade" }
    }

    /// True when the `Transfer-Encoding` fields name no coding, or `chunked` once and nothing
    /// else (`headers[canonicalForm:]` splits the fields' lists and trims them).
    static func onlyChunked(_ codings: [Substring]) -> Bool {
        codings.isEmpty || (codings.count == 1 && codings[0].lowercased() == "chunked")
    }
}
