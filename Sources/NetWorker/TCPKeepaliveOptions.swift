import NIOCore
import NIOPosix
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// Upstream's socket options on every proxied socket (§18: KEEPALIVE_*, USER_TIMEOUT_ENABLED):
/// TCP keepalive, so a peer that vanished (a node gone, a NAT that forgot the flow) is noticed
/// on a connection that carries nothing, and optionally TCP_USER_TIMEOUT. Applied to the
/// connections the NetWorker makes (applications, passthrough, HBONE peers); accepted ones
/// inherit them from their listener, where the Supervisor sets them (`Bounds.applyToListener`).
enum TCPKeepaliveOptions {
    static func options(_ bounds: Bounds) -> [(ChannelOptions.Types.SocketOption, SocketOptionValue)] {
        guard let keepalive = bounds.tcpKeepalive else { return [] }
        var options: [(ChannelOptions.Types.SocketOption, SocketOptionValue)] = [
            (ChannelOptions.socketOption(.so_keepalive), 1),
            (ChannelOptions.tcpOption(NIOBSDSocket.Option(rawValue: TCP_KEEPIDLE)), SocketOptionValue(keepalive.idleSeconds)),
            (ChannelOptions.tcpOption(NIOBSDSocket.Option(rawValue: TCP_KEEPINTVL)), SocketOptionValue(keepalive.intervalSeconds)),
            (ChannelOptions.tcpOption(NIOBSDSocket.Option(rawValue: TCP_KEEPCNT)), SocketOptionValue(keepalive.probes)),
        ]
        if let userTimeout = bounds.tcpUserTimeoutMilliseconds {
            options.append((ChannelOptions.tcpOption(NIOBSDSocket.Option(rawValue: 18 /* TCP_USER_TIMEOUT */)), SocketOptionValue(userTimeout)))
        }
        return options
    }

    static func apply(_ bounds: Bounds, to bootstrap: ClientBootstrap) -> ClientBootstrap {
        options(bounds).reduce(bootstrap) { $0.channelOption($1.0, value: $1.1) }
    }

}
