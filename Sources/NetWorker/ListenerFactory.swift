import NIOCore
import NIOHTTP1
import NIOPosix
import Shared

/// Adopts a listening socket from the fd broker into SwiftNIO and gives each accepted connection
/// the pipeline of its listener.
struct ListenerFactory {
    let group: EventLoopGroup
    let endpoints: HTTPEndpoints
    let tracker: ConnectionTracker
    let guardrails: DestinationGuard
    let identities: IdentityTable
    let signer: SignerClient
    let onFollowUp: @Sendable (HTTPEndpoints.FollowUp) -> Void

    /// Serves `fd` (already bound and listening). NIO owns the fd from here on.
    func adopt(name: String, fd: OwnedFD) -> EventLoopFuture<Channel> {
        let factory = self
        return ServerBootstrap(group: group)
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .childChannelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                factory.configure(channel, for: name).flatMapErrorThrowing { error in
                    Log.warn("\(name): cannot set up a connection: \(error)")
                    throw error
                }
            }
            .withBoundSocket(fd.take())
    }

    /// The pipeline of a connection accepted on the listener called `name`.
    private func configure(_ channel: Channel, for name: String) -> EventLoopFuture<Void> {
        switch name {
        case "admin", "stats", "readiness":
            let port: HTTPEndpoints.Port = name == "admin" ? .admin : (name == "stats" ? .stats : .readiness)
            let handler = HTTPServerHandler(port: port, endpoints: endpoints, onFollowUp: onFollowUp)
            return channel.pipeline.configureHTTPServerPipeline(withErrorHandling: true).flatMap {
                channel.pipeline.addHandler(handler)
            }
        case "socks5":
            tracker.track(channel)
            return channel.pipeline.addHandler(Socks5Handler(guardrails: guardrails))
        case "outbound", "inbound-plaintext":
            tracker.track(channel)
            return channel.pipeline.addHandler(PassthroughHandler(listenerName: name, guardrails: guardrails))
        case "inbound":
            tracker.track(channel)
            return channel.pipeline.addHandler(TLSServerHandler(identities: identities, signer: signer))
        default:
            Log.warn("unknown listener \(name); closing connection")
            return channel.close()
        }
    }
}
