#if canImport(Glibc)
import Glibc
#endif

/// The limits a NetWorker enforces on every connection (issue #6): a deadline for each phase, a
/// cap on connections per listener and a bound on every buffer, so that what a peer sends, or
/// does not send, can cost this process only a bounded amount of memory and time. Read once from
/// the configuration; the values are plain data so handlers can copy them.
public struct Bounds: Sendable, Equatable {
    /// The settings that configure these bounds (a NetWorker receives them, RoleSpec.settings).
    public static let settingNames = ["ZTUNNEL_HANDSHAKE_TIMEOUT", "ZTUNNEL_IDLE_TIMEOUT", "ZTUNNEL_MAX_CONNECTIONS",
                                      "ZTUNNEL_HBONE_KEEPALIVE", "HTTP2_STREAM_WINDOW_SIZE", "HTTP2_CONNECTION_WINDOW_SIZE",
                                      "HTTP2_FRAME_SIZE", "KEEPALIVE_ENABLED", "KEEPALIVE_TIME", "KEEPALIVE_INTERVAL",
                                      "KEEPALIVE_RETRIES", "USER_TIMEOUT_ENABLED"]

    /// From accept to the end of a TLS or SOCKS5 handshake, or to the upstream being connected
    /// on a captured connection.
    public var handshakeMilliseconds: Int64
    /// A relayed connection with no bytes in either direction for this long is closed.
    public var idleMilliseconds: Int64
    /// Connections each listener of each NetWorker serves at once; the next ones are closed at
    /// accept (the kernel's backlog and the peers' retries absorb bursts).
    public var maxConnectionsPerListener: Int
    /// The admin, stats and readiness ports: the request head must arrive within this (hyper's
    /// 2 s in the real ztunnel) and fit in `httpMaxHeadBytes`.
    public var httpHeadMilliseconds: Int64 = 2_000
    /// An HBONE connection sends a PING after this long and then as often (§5.2: 10 s); a PING
    /// unanswered for twice this long tears the connection down.
    public var keepaliveMilliseconds: Int64 = 10_000
    /// HBONE's HTTP/2 settings (§5.2, upstream's HTTP2_* variables): each stream's and the
    /// connection's receive window, and the largest frame a peer may send.
    public var http2StreamWindow: UInt32 = 4 << 20
    public var http2ConnectionWindow: UInt32 = 16 << 20
    public var http2FrameSize: UInt32 = 1 << 20
    /// TCP keepalive on every proxied socket (upstream's KEEPALIVE_*: idle 180 s, probes every
    /// 180 s, 9 of them), nil when KEEPALIVE_ENABLED is false; with USER_TIMEOUT_ENABLED, also
    /// TCP_USER_TIMEOUT = idle + probes × interval, so unacknowledged data gives up as late.
    public var tcpKeepalive: TCPKeepalive? = TCPKeepalive(idleSeconds: 180, intervalSeconds: 180, probes: 9)
    public var tcpUserTimeoutMilliseconds: Int32?
    public static let httpMaxHeadBytes = 8 * 1024
    /// Those ports serve few clients (a prober, Prometheus, an operator): a small cap of their own.
    public var maxHTTPConnectionsPerListener = 256
    /// Bytes a captured or SOCKS5 client may send before its upstream is connected; reading stops
    /// at this bound until the upstream can take them.
    public static let earlyDataBytes = 64 * 1024
    /// Bytes of TLS records taken from a client while its handshake waits (for a signature, say):
    /// a handshake is a few KiB; more is refused.
    public static let tlsHandshakeInputBytes = 64 * 1024

    public init(handshakeMilliseconds: Int64, idleMilliseconds: Int64, maxConnectionsPerListener: Int) {
        self.handshakeMilliseconds = handshakeMilliseconds
        self.idleMilliseconds = idleMilliseconds
        self.maxConnectionsPerListener = maxConnectionsPerListener
    }

    public init(_ configuration: Configuration) {
        self.init(handshakeMilliseconds: configuration.milliseconds("ZTUNNEL_HANDSHAKE_TIMEOUT"),
                  idleMilliseconds: configuration.milliseconds("ZTUNNEL_IDLE_TIMEOUT"),
                  maxConnectionsPerListener: configuration.int("ZTUNNEL_MAX_CONNECTIONS"))
        keepaliveMilliseconds = configuration.milliseconds("ZTUNNEL_HBONE_KEEPALIVE")
        http2StreamWindow = UInt32(configuration.int("HTTP2_STREAM_WINDOW_SIZE"))
        http2ConnectionWindow = UInt32(configuration.int("HTTP2_CONNECTION_WINDOW_SIZE"))
        http2FrameSize = UInt32(configuration.int("HTTP2_FRAME_SIZE"))
        if configuration.bool("KEEPALIVE_ENABLED") {
            let idle = Int32(clamping: max(1, configuration.milliseconds("KEEPALIVE_TIME") / 1000))
            let interval = Int32(clamping: max(1, configuration.milliseconds("KEEPALIVE_INTERVAL") / 1000))
            let probes = Int32(clamping: configuration.int("KEEPALIVE_RETRIES"))
            tcpKeepalive = TCPKeepalive(idleSeconds: idle, intervalSeconds: interval, probes: probes)
            if configuration.bool("USER_TIMEOUT_ENABLED") {
                tcpUserTimeoutMilliseconds = Int32(clamping: (Int64(idle) + Int64(probes) * Int64(interval)) * 1000)
            }
        } else {
            tcpKeepalive = nil
        }
    }

    /// The socket options (level, name, value) of `tcpKeepalive` and `tcpUserTimeoutMilliseconds`,
    /// none when keepalive is off: set by the Supervisor on proxy listeners (accepted connections
    /// inherit them) and by the NetWorker on the connections it makes.
    public var keepaliveSocketOptions: [(level: Int32, name: Int32, value: Int32)] {
        guard let keepalive = tcpKeepalive else { return [] }
        var options = [(SOL_SOCKET, SO_KEEPALIVE, Int32(1)), (Int32(IPPROTO_TCP), TCP_KEEPIDLE, keepalive.idleSeconds),
                       (Int32(IPPROTO_TCP), TCP_KEEPINTVL, keepalive.intervalSeconds), (Int32(IPPROTO_TCP), TCP_KEEPCNT, keepalive.probes)]
        if let userTimeout = tcpUserTimeoutMilliseconds { options.append((Int32(IPPROTO_TCP), 18 /* TCP_USER_TIMEOUT */, userTimeout)) }
        return options.map { (level: $0.0, name: $0.1, value: $0.2) }
    }

    /// The admin, stats and readiness listeners serve HTTP and proxy nothing: their own
    /// connection cap, no TCP keepalive.
    public static func isHTTPListener(_ name: String) -> Bool { ["admin", "stats", "readiness"].contains(name) }

}

/// TCP keepalive's three numbers (SO_KEEPALIVE with TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT).
public struct TCPKeepalive: Sendable, Equatable {
    public var idleSeconds: Int32
    public var intervalSeconds: Int32
    public var probes: Int32

    public init(idleSeconds: Int32, intervalSeconds: Int32, probes: Int32) {
        self.idleSeconds = idleSeconds
        self.intervalSeconds = intervalSeconds
        self.probes = probes
    }
}
