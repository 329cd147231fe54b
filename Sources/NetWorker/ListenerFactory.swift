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
        let endpoints = endpoints
        let tracker = tracker
        let guardrails = guardrails
        let identities = identities
        let signer = signer
        let onFollowUp = onFollowUp
        let bootstrap = ServerBootstrap(group: group)
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .childChannelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                initialize(channel).flatMapErrorThrowing { error in
                    Log.warn("\(name): cannot set up a connection: \(error)")
                    throw error
                }
            }
        return bootstrap.withBoundSocket(fd.take())

        @Sendable func initialize(_ channel: Channel) -> EventLoopFuture<Void> {
                switch name {
                case "admin", "stats", "readiness":
                    let port: HTTPEndpoints.Port = name == "admin" ? .admin : (name == "stats" ? .stats : .readiness)
                    return channel.pipeline.configureHTTPServerPipeline(withErrorHandling: true).flatMap {
                        channel.pipeline.addHandler(HTTPServerHandler(port: port, endpoints: endpoints, onFollowUp: onFollowUp))
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
}
