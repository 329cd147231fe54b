import NIOCore
import NIOHTTP1
import NIOPosix
import Shared

/// Adopts a listening socket from the fd broker into SwiftNIO and gives each accepted connection
/// the pipeline of its listener, after admitting it against the listener's connection cap.
struct ListenerFactory {
    let group: EventLoopGroup
    let endpoints: HTTPEndpoints
    let tracker: ConnectionTracker
    let guardrails: DestinationGuard
    let identities: IdentityTable
    let signer: SignerClient
    let bounds: Bounds
    let limiter: ConnectionLimiter
    let reporter: BoundReporter
    let authorization: InboundAuthorization
    let metrics: TrafficMetrics
    let pools: HBONEPools
    let onDemand: OnDemandLookups
    let hostnames: HostnameResolver
    let onFollowUp: @Sendable (HTTPEndpoints.FollowUp) -> Void

    /// Listeners served at once, before any mesh model: admin, stats and readiness.
    static let controlListeners: Set<String> = ["admin", "stats", "readiness"]

    /// Serves `fd` (already bound and listening). NIO owns the fd from here on. `pod`: the pod
    /// whose namespace the listener is in (in-pod mode); its connections are that pod's.
    func adopt(name: String, fd: OwnedFD, pod: String? = nil) -> EventLoopFuture<Channel> {
        let factory = self
        if name == "dns-udp" {
            guard let pod, let proxy = DNSProxy.shared else {
                return group.next().makeFailedFuture(ChannelError.operationUnsupported)
            }
            return DatagramBootstrap(group: group)
                .channelInitializer { $0.pipeline.addHandler(DNSDatagramHandler(proxy: proxy, pod: pod)) }
                .withBoundSocket(fd.take())
        }
        // Accepted connections inherit TCP_NODELAY and the keepalive options from the listener,
        // on which the Supervisor set them before it listened (`Bounds.applyToListener`), so
        // that a connection waiting in the backlog before this adoption has them too.
        return ServerBootstrap(group: group)
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                if let pod { PodDialer.shared?.register(channel, pod: pod) }
                return factory.admit(channel, for: name, pod: pod).flatMapErrorThrowing { error in
                    Log.warn("\(name): cannot set up a connection: \(error)")
                    throw error
                }
            }
            .withBoundSocket(fd.take())
    }


    /// The listener's cap first (issue #6): over it, the connection is closed at once and the
    /// bound reported; under it, the slot is held until the connection closes.
    private func admit(_ channel: Channel, for name: String, pod: String?) -> EventLoopFuture<Void> {
        var cap = Bounds.isHTTPListener(name) ? bounds.maxHTTPConnectionsPerListener : bounds.maxConnectionsPerListener
        var key = name
        if name == "dns-tcp", let pod {
            // Per pod: one pod's DNS connections never take another pod's slots.
            key = "dns-tcp \(pod)"
            cap = DNSProxy.maxTCPConnectionsPerPod
        }
        guard limiter.admit(key, cap: cap) else {
            reporter.reached(.connections, listener: name, peer: Self.peer(channel), detail: "\(cap) live connections")
            channel.close(promise: nil)
            return channel.eventLoop.makeSucceededVoidFuture()
        }
        let limiter = self.limiter
        channel.closeFuture.whenComplete { _ in limiter.release(key) }
        return configure(channel, for: name, pod: pod)
    }

    static func peer(_ channel: Channel) -> String {
        channel.remoteAddress.map { "\($0)" } ?? "?"
    }

    /// `ip:port`, or `[ipv6]:port`, as access logs write addresses.
    /// An IPv4 peer of a dual-stack listener (`::ffff:a.b.c.d`) is written as IPv4.
    /// (Byte checks: on String, `contains(":")` resolved to Foundation's substring search, a
    /// measurable part of each connection's CPU.)
    static func address(_ address: NIOCore.SocketAddress) -> String {
        guard var ip = address.ipAddress, let port = address.port else { return "\(address)" }
        if ip.utf8.starts(with: "::ffff:".utf8) && ip.utf8.contains(UInt8(ascii: ".")) { ip.removeFirst(7) }
        return ip.utf8.contains(UInt8(ascii: ":")) ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }

    private var routing: OutboundRouting { OutboundRouting(state: endpoints.state, identities: identities, onDemand: onDemand, names: hostnames,
                                                      guardrails: guardrails) }

    /// The certificate 15008 presents on `channel` (ISTIO_COMPAT §5.1): that of the workload
    /// owning the address the connection arrived on, as upstream presents the destination pod's.
    /// An address no workload owns, or a workload whose certificate is not here, is refused:
    /// presenting another workload's identity would let a client believe it reached that one.
    private func certificate(_ channel: Channel) -> Result<TLSContext, TLSHandler.Refusal> {
        let state = endpoints.state
        let address = channel.localAddress?.ipAddress
        guard let workload = state.workload(at: address, in: state.model) else {
            return .failure(.init(reason: "no workload of this node owns \(address ?? "?"), so there is no certificate to present"))
        }
        guard let identity = workload.identity else {
            return .failure(.init(reason: "workload \(workload.uid) has no identity (trust domain or service account unknown)"))
        }
        guard let context = identities.serverContext(for: identity) else {
            return .failure(.init(reason: "no certificate for \(identity) yet"))
        }
        return .success(context)
    }

    /// The pipeline of a connection accepted on the listener called `name`.
    private func configure(_ channel: Channel, for name: String, pod: String?) -> EventLoopFuture<Void> {
        switch name {
        case "dns-tcp":
            guard let pod, let proxy = DNSProxy.shared else { return channel.close() }
            return channel.pipeline.addHandlers([IdleStateHandler(allTimeout: .seconds(30)),
                                                 ByteToMessageHandler(DNSStreamDecoder()), DNSStreamHandler(proxy: proxy, pod: pod)])
        case "admin", "stats", "readiness":
            let port: HTTPEndpoints.Port = name == "admin" ? .admin : (name == "stats" ? .stats : .readiness)
            let handler = HTTPServerHandler(port: port, endpoints: endpoints, onFollowUp: onFollowUp)
            let guardHandler = RequestHeadGuard(listener: name, bounds: bounds, reporter: reporter)
            return channel.pipeline.addHandler(guardHandler).flatMap {
                channel.pipeline.configureHTTPServerPipeline(withErrorHandling: true)
            }.flatMap {
                channel.pipeline.addHandler(handler)
            }
        case "socks5":
            tracker.track(channel)
            return channel.pipeline.addHandler(Socks5Handler(guardrails: guardrails, bounds: bounds, reporter: reporter,
                                                             routing: routing, metrics: metrics, pools: pools))
        case "outbound", "inbound-plaintext":
            tracker.track(channel)
            return channel.pipeline.addHandler(PassthroughHandler(listenerName: name, guardrails: guardrails, bounds: bounds,
                                                                  reporter: reporter,
                                                                  authorization: authorization,
                                                                  routing: routing, metrics: metrics, pools: pools))
        case "inbound":
            tracker.track(channel)
            // An HBONE connection with no bytes either way for the idle timeout is closed (with
            // close_notify): nothing else would end a silent authenticated connection.
            let idle = bounds.idleMilliseconds
            let onIdle: @Sendable () -> Void = { [reporter] in
                reporter.reached(.idleTimeout, listener: name, peer: ListenerFactory.peer(channel), detail: "no bytes either way for \(idle) ms")
            }
            _ = channel.setOption(ChannelOptions.writeBufferWaterMark, value: HTTP2Connection.waterMark)
            // A certificate on its way (a NetWorker just replaced, a workload just arrived) is
            // waited for, within bounds, before the handshake: the channel is registered (and
            // read) only once this future completes, so nothing is lost meanwhile.
            // On demand (XDS_ON_DEMAND), a destination no resource holds is asked for first.
            let state = endpoints.state
            let local = channel.localAddress?.ipAddress
            let looked = routing.lookUp(host: local ?? "", client: nil, peer: channel.remoteAddress?.ipAddress, on: channel.eventLoop)
            let identities = self.identities
            let certificateHere = looked.flatMap { _ -> EventLoopFuture<Void> in
                let identity = state.workload(at: local, in: state.model)?.identity
                return identity.map { identities.waitForCertificate($0, on: channel.eventLoop) } ?? channel.eventLoop.makeSucceededVoidFuture()
            }
            return certificateHere.flatMap { channel.pipeline.addHandlers([
                IdleWatch(timeout: .milliseconds(idle), onIdle: onIdle),
                TLSHandler(role: .server(choose: certificate), signer: signer, bounds: bounds, reporter: reporter),
                HBONEServerHandler(authorization: authorization, metrics: metrics, proxyPorts: guardrails.proxyPorts,
                                   bounds: bounds, reporter: reporter),
            ]) }
        default:
            Log.warn("unknown listener \(name); closing connection")
            return channel.close()
        }
    }
}

/// The admin, stats and readiness ports take one small request per connection: its bytes are
/// counted before the HTTP decoder sees them (at most `Bounds.httpMaxHeadBytes`, as upstream's
/// 8 KiB buffer) and the connection is closed when the request has not been answered within
/// `httpHeadMilliseconds` (upstream's 2 s header timeout), so a slow or endless client holds a
/// slot for a bounded time only.
final class RequestHeadGuard: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer

    private let listener: String
    private let bounds: Bounds
    private let reporter: BoundReporter
    private var received = 0
    private var deadline: Scheduled<Void>?

    init(listener: String, bounds: Bounds, reporter: BoundReporter) {
        self.listener = listener
        self.bounds = bounds
        self.reporter = reporter
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let limit = bounds.httpHeadMilliseconds
        deadline = reporter.deadline(.requestHeadTimeout, on: context.channel, listener: listener, after: limit,
                                     detail: "no complete request within \(limit) ms")
        context.channel.closeFuture.whenComplete { [deadline] _ in deadline?.cancel() }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += unwrapInboundIn(data).readableBytes
        guard received <= Bounds.httpMaxHeadBytes else {
            reporter.reached(.requestHeadSize, listener: listener, peer: ListenerFactory.peer(context.channel),
                             detail: "request over \(Bounds.httpMaxHeadBytes) bytes")
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
    }

    /// The answer has begun: the request was read in time, and a slow reader of a long answer
    /// (/config_dump) is not cut off by the head deadline.
    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        deadline?.cancel()
        context.write(data, promise: promise)
    }
}
