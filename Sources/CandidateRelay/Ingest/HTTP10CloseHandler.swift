import NIOCore
import NIOHTTP1

/// An HTTP/1.0 request without `keep-alive` ends its connection (RFC 9112 §9.3). Hummingbird
/// converts requests to HTTPTypes, which carry no version: both it and the ingest handler took
/// such a request for HTTP/1.1's keep-alive and left the connection open. A 1.0 client that reads
/// its answer until the close (found from outside) waited a minute, the idle timeout, and held a
/// connection meanwhile. Sits before the conversion and says it in the terms both read:
/// `Connection: close`.
final class HTTP10CloseHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(var head) = unwrapInboundIn(data), head.version == .http1_0, !head.isKeepAlive else {
            context.fireChannelRead(data)
            return
        }
        head.headers.replaceOrAdd(name: "connection", value: "close")
        context.fireChannelRead(wrapInboundOut(.head(head)))
    }
}
