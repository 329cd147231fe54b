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
    static func apply(_ bounds: Bounds, to bootstrap: ClientBootstrap) -> ClientBootstrap {
        bounds.keepaliveSocketOptions.reduce(bootstrap) { bootstrap, option in
            bootstrap.channelOption(ChannelOptions.Types.SocketOption(level: NIOBSDSocket.OptionLevel(rawValue: option.level),
                                                                      name: NIOBSDSocket.Option(rawValue: option.name)),
                                    value: SocketOptionValue(option.value))
        }
    }
}
