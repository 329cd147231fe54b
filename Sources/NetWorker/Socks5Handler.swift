import NIOCore
import NIOPosix
import Shared

/// Serves one SOCKS5 client: runs `Socks5Parser`, connects to the destination on the same event
/// loop, answers, then hands both channels to a `RelayHandler` pair.
final class Socks5Handler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var parser = Socks5Parser()
    private var isConnecting = false
    private let guardrails: DestinationGuard

    init(guardrails: DestinationGuard) { self.guardrails = guardrails }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !isConnecting else { return }
        var buffer = unwrapInboundIn(data)
        var action = parser.feed(buffer.readBytes(length: buffer.readableBytes) ?? [])
        while case .reply(let bytes) = action {
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: bytes)), promise: nil)
            action = parser.feed([])
        }
        switch action {
        case .needMore, .reply:
            break
        case .fail(let bytes, let reason):
            Log.debug("socks5: refused client: \(reason)")
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: bytes))).whenComplete { _ in
                context.close(promise: nil)
            }
        case .connect(let host, let port, let leftover):
            connect(context: context, host: host, port: port, leftover: leftover)
        }
    }

    private func connect(context: ChannelHandlerContext, host: String, port: UInt16, leftover: [UInt8]) {
        isConnecting = true
        if let refusal = guardrails.refusal(host: host, port: port) {
            Log.debug("socks5: refused \(host):\(port): \(refusal)")
            fail(context, Socks5Parser.reply(.notAllowed))
            return
        }
        let client = context.channel
        Upstream.connect(on: context.eventLoop, host: host, port: port).whenComplete { result in
            switch result {
            case .success(let upstream):
                client.writeAndFlush(client.allocator.buffer(bytes: Socks5Parser.reply(.succeeded)), promise: nil)
                if !leftover.isEmpty { upstream.writeAndFlush(upstream.allocator.buffer(bytes: leftover), promise: nil) }
                Upstream.relay(client: client, upstream: upstream, removing: self)
            case .failure(let error):
                Log.debug("socks5: connect to \(host):\(port) failed: \(error)")
                self.fail(context, Socks5Parser.reply(.connectionRefused))
            }
        }
    }

    private func fail(_ context: ChannelHandlerContext, _ reply: [UInt8]) {
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: reply))).whenComplete { _ in
            context.close(promise: nil)
        }
    }
}

/// Refuses destinations that would loop back into this proxy (ISTIO_COMPAT §2, "illegal ports").
struct DestinationGuard: Sendable {
    let proxyPorts: Set<UInt16>

    func refusal(host: String, port: UInt16) -> String? {
        let isLoopback = host.hasPrefix("127.") || host == "::1" || host == "0:0:0:0:0:0:0:1"
        if isLoopback && proxyPorts.contains(port) { return "loopback destination on a proxy port" }
        return nil
    }
}

/// Outbound connections and the relay between two channels.
enum Upstream {
    /// Connects to a numeric address (no resolver: nothing here reads /etc/hosts or DNS).
    static func connect(on eventLoop: EventLoop, host: String, port: UInt16) -> EventLoopFuture<Channel> {
        let address: NIOCore.SocketAddress
        do { address = try NIOCore.SocketAddress(ipAddress: host, port: Int(port)) } catch {
            return eventLoop.makeFailedFuture(error)
        }
        return ClientBootstrap(group: eventLoop)
            .channelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(10))
            .connect(to: address)
    }

    /// Replaces `handler` on the client with one side of a relay and puts the other on upstream.
    static func relay(client: Channel, upstream: Channel, removing handler: RemovableChannelHandler) {
        let (clientSide, upstreamSide) = RelayHandler.pair()
        upstream.pipeline.addHandler(upstreamSide).flatMap {
            client.pipeline.addHandler(clientSide)
        }.flatMap {
            client.pipeline.removeHandler(handler)
        }.whenFailure { _ in
            client.close(promise: nil)
            upstream.close(promise: nil)
        }
    }
}
