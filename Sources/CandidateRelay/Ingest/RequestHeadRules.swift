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
        if hosts > 1 || (hosts == 0 && head.version != .http1_0) {
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
}
