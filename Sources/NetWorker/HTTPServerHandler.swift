import NIOCore
import NIOHTTP1

/// Moves one HTTP/1.1 request to `HTTPEndpoints` and its reply back, then closes the connection.
/// Request bodies are read and discarded; no endpoint takes one.
final class HTTPServerHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let port: HTTPEndpoints.Port
    private let endpoints: HTTPEndpoints
    private let onFollowUp: @Sendable (HTTPEndpoints.FollowUp) -> Void
    private var head: HTTPRequestHead?

    init(port: HTTPEndpoints.Port, endpoints: HTTPEndpoints, onFollowUp: @escaping @Sendable (HTTPEndpoints.FollowUp) -> Void) {
        self.port = port
        self.endpoints = endpoints
        self.onFollowUp = onFollowUp
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let requestHead):
            head = requestHead
        case .body:
            break
        case .end:
            guard let requestHead = head else { return }
            head = nil
            let reply = endpoints.respond(port: port, method: requestHead.method.rawValue, uri: requestHead.uri,
                                          accept: requestHead.headers["accept"].joined(separator: ","))
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: reply.contentType)
            headers.add(name: "Content-Length", value: String(reply.body.utf8.count))
            headers.add(name: "Connection", value: "close")
            let responseHead = HTTPResponseHead(version: requestHead.version,
                                                status: HTTPResponseStatus(statusCode: reply.status, reasonPhrase: reply.reason),
                                                headers: headers)
            context.write(wrapOutboundOut(.head(responseHead)), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: reply.body)))), promise: nil)
            let followUp = reply.followUp
            let notify = onFollowUp
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
                if followUp != .none { notify(followUp) }
            }
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Malformed HTTP from a client: drop that client, nothing else.
        context.close(promise: nil)
    }
}
