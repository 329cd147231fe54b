import NIOCore
import NIOPosix
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// Captured plaintext on 15001 (outbound) and 15006 (inbound plaintext) for destinations outside
/// the mesh: reads the original destination (SO_ORIGINAL_DST, set by the REDIRECT rule), refuses
/// loops, connects, and relays. Bytes that arrive before the upstream connects are kept and sent
/// first. Mesh destinations (HBONE) are not routed yet: with no workloads known, every
/// destination is outside the mesh.
final class PassthroughHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let guardrails: DestinationGuard
    private let listenerName: String
    private var early: [ByteBuffer] = []

    init(listenerName: String, guardrails: DestinationGuard) {
        self.listenerName = listenerName
        self.guardrails = guardrails
    }

    func channelActive(context: ChannelHandlerContext) {
        let channel = context.channel
        guard let provider = channel as? SocketOptionProvider else {
            context.close(promise: nil)
            return
        }
        let originalDst: EventLoopFuture<sockaddr_in> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(IPPROTO_IP), name: SocketOptionName(80))  // SO_ORIGINAL_DST
        originalDst.whenComplete { result in
            guard case .success(var address) = result else {
                Log.debug("\(self.listenerName): no original destination (not redirected); closing")
                channel.close(promise: nil)
                return
            }
            var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
            inet_ntop(AF_INET, &address.sin_addr, &text, socklen_t(INET_ADDRSTRLEN))
            let host = String(cString: text)
            let port = UInt16(bigEndian: address.sin_port)
            if let local = channel.localAddress, local.port == Int(port), local.ipAddress == host || host.hasPrefix("127.") {
                Log.debug("\(self.listenerName): connection addressed to the listener itself; refusing the loop")
                channel.close(promise: nil)
                return
            }
            if let refusal = self.guardrails.refusal(host: host, port: port) {
                Log.debug("\(self.listenerName): refused \(host):\(port): \(refusal)")
                channel.close(promise: nil)
                return
            }
            self.connect(channel: channel, host: host, port: port)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        early.append(unwrapInboundIn(data))
    }

    private func connect(channel: Channel, host: String, port: UInt16) {
        Upstream.connect(on: channel.eventLoop, host: host, port: port).whenComplete { result in
            switch result {
            case .success(let upstream):
                for buffer in self.early { upstream.write(buffer, promise: nil) }
                self.early.removeAll()
                upstream.flush()
                Upstream.relay(client: channel, upstream: upstream, removing: self)
            case .failure(let error):
                Log.debug("\(self.listenerName): connect to \(host):\(port) failed: \(error)")
                channel.close(promise: nil)
            }
        }
    }
}
