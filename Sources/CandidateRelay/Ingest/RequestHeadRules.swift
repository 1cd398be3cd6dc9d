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
///   for every request whose body cannot be read as sent, tells the sender as much).
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
        if hosts > 1 || (hosts == 0 && head.version != .http1_0) || !Self.onlyChunked(head.headers[canonicalForm: "transfer-encoding"]) {
            refused = true
            context.fireErrorCaught(HTTPParserError.invalidHeaderToken)
            return
        }
        guard head.version == .http1_0, !head.isKeepAlive else {
            context.fireChannelRead(data)
            return
        }
        head.headers.replaceOrAdd(name: "connection", value: "close")
        context.fireChannelRead(wrapInboundOut(.head(head)))
    }

    /// True when the `Transfer-Encoding` fields name no coding, or `chunked` once and nothing
    /// else (`headers[canonicalForm:]` splits the fields' lists and trims them).
    static func onlyChunked(_ codings: [Substring]) -> Bool {
        codings.isEmpty || (codings.count == 1 && codings[0].lowercased() == "chunked")
    }
}
