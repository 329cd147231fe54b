import Mesh
import NIOCore
import NIOPosix
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// Captured plaintext on 15001 (outbound) and 15006 (inbound plaintext) for destinations outside
/// the mesh: reads the original destination (SO_ORIGINAL_DST, set by the REDIRECT rule), refuses
/// loops, connects, and relays. Mesh destinations (HBONE) are not routed yet: with no workloads
/// known, every destination is outside the mesh.
///
/// Bounds (issue #6): the upstream must be connected within `Bounds.handshakeMilliseconds`;
/// until then no more is read from the client (its bytes wait in the kernel) and what had already
/// arrived is kept, up to `Bounds.earlyDataBytes`, and sent first. Nothing is dropped.
final class PassthroughHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer

    private let guardrails: DestinationGuard
    private let listenerName: String
    private let bounds: Bounds
    private let reporter: BoundReporter
    private let authorization: InboundAuthorization?
    private let routing: OutboundRouting?
    private let metrics: TrafficMetrics?
    private let pools: HBONEPools?
    /// The inbound connection's metrics and access-log line, once it is authorized.
    private var record: ConnectionRecord?
    private var early: [ByteBuffer] = []
    private var earlyBytes = 0
    private var heldRead = false
    private var clientInputClosed = false
    private var isRelaying = false
    private var deadline: Scheduled<Void>?

    init(listenerName: String, guardrails: DestinationGuard, bounds: Bounds, reporter: BoundReporter,
         authorization: InboundAuthorization? = nil, routing: OutboundRouting? = nil, metrics: TrafficMetrics? = nil,
         pools: HBONEPools? = nil) {
        self.metrics = metrics
        self.pools = pools
        self.authorization = authorization
        self.routing = routing
        self.listenerName = listenerName
        self.guardrails = guardrails
        self.bounds = bounds
        self.reporter = reporter
    }

    func channelActive(context: ChannelHandlerContext) {
        let channel = context.channel
        let limit = bounds.handshakeMilliseconds
        deadline = reporter.deadline(.handshakeTimeout, on: channel, listener: listenerName, after: limit,
                                     detail: "upstream not connected within \(limit) ms")
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
            guard self.listenerName == "inbound-plaintext", let routing = self.routing else {
                self.proceed(channel: channel, host: host, port: port)
                return
            }
            // XDS_ON_DEMAND: an inbound destination no resource holds is asked for first.
            routing.lookUp(host: host, client: nil, peer: channel.remoteAddress?.ipAddress, on: channel.eventLoop).whenSuccess { admitted in
                guard channel.isActive else { return }
                guard admitted else {
                    Log.info("inbound-plaintext: connection refused", [("src", ListenerFactory.peer(channel)), ("dst", "\(host):\(port)"),
                                                                      ("reason", "too many on-demand lookups waiting")])
                    channel.close(promise: nil)
                    return
                }
                self.proceed(channel: channel, host: host, port: port)
            }
        }
        context.fireChannelActive()
    }

    /// After the checks on the original destination: authorization (inbound), routing
    /// (outbound), then the upstream connection.
    private func proceed(channel: Channel, host: String, port: UInt16) {
        guard self.isAuthorized(channel: channel, host: host, port: port) else {
            channel.close(promise: nil)
            return
        }
        guard self.listenerName == "outbound", let routing = self.routing else {
            self.connect(channel: channel, host: host, port: port)
            return
        }
        routing.resolve(host: host, port: port, client: channel.remoteAddress?.ipAddress, on: channel.eventLoop).whenSuccess { resolution in
            guard channel.isActive else { return }
            switch resolution {
            case .connect(let routedHost, let routedPort, let via, let routed):
                Log.debug("outbound: \(host):\(port) via \(via) to \(routedHost):\(routedPort)")
                if let metrics = self.metrics {
                    self.record = routed.record(metrics: metrics, client: channel.remoteAddress.map(ListenerFactory.address) ?? "?",
                                                upstream: "\(routedHost):\(routedPort)")
                }
                self.connect(channel: channel, host: routedHost, port: routedPort)
            case .resolveName(let pending):  // resolved inside `resolve(on:)`; never seen here
                Log.warn("outbound: a hostname workload reached the handler unresolved", [("workload", pending.workloadUid)])
                channel.close(promise: nil)
            case .tunnel(let tunnel):
                Log.debug("outbound: \(host):\(port) through HBONE to \(tunnel.address):\(tunnel.port)")
                if let metrics = self.metrics { self.record = tunnel.record(metrics: metrics, client: channel) }
                self.tunnel(channel: channel, tunnel)
            case .refuse(let reason), .noCertificate(_, let reason, _):
                Log.info("outbound: connection refused", [("src", ListenerFactory.peer(channel)), ("dst", "\(host):\(port)"),
                                                         ("reason", reason)])
                channel.close(promise: nil)
            }
        }
    }

    /// Inbound plaintext is authorized with no source identity (ISTIO_COMPAT §11): it is
    /// registered first (so a policy change racing this decision still re-checks it), then
    /// decided; a refusal, an unknown destination included, names its reason. Outbound captures
    /// are not checked here (the destination's own proxy authorizes).
    private func isAuthorized(channel: Channel, host: String, port: UInt16) -> Bool {
        guard listenerName == "inbound-plaintext", let authorization else { return true }
        let source = channel.remoteAddress?.ipAddress
        authorization.live?.register(.init(channel: channel, listener: listenerName, source: source ?? "?", destination: host,
                                           port: port, identity: nil))
        switch authorization.check(source: source, destination: host, port: port, identity: nil) {
        case .allowed(let workload):
            record = inboundRecord(channel: channel, source: source, destination: workload, host: host, port: port)
            return true
        case .denied(let reason, let policy, let workload):
            if let workload {
                inboundRecord(channel: channel, source: source, destination: workload, host: host, port: port)?
                    .finish(error: "denied by \(policy ?? "policy"): \(reason)", responseFlags: "DENY")
            }
            Log.info("\(listenerName): connection denied", [("src", ListenerFactory.peer(channel)), ("dst", "\(host):\(port)"),
                                                             ("workload", workload?.uid ?? "none"), ("policy", policy ?? "none"),
                                                             ("reason", reason)])
            return false
        }
    }

    /// Inbound plaintext's record: no identity either way on the wire (§15.2-15.3).
    private func inboundRecord(channel: Channel, source: String?, destination: Workload, host: String,
                               port: UInt16) -> ConnectionRecord? {
        guard let metrics, let authorization else { return nil }
        return authorization.record(metrics: metrics, source: source,
                                    sourceAddress: channel.remoteAddress.map(ListenerFactory.address) ?? "?", peer: nil,
                                    destination: destination, destinationAddress: "\(host):\(port)", hboneAddress: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        context.fireChannelInactive()
    }

    /// NIO reads to the end on EOF even while reads are held: a client that half-closes while
    /// the upstream connects has its EOF passed on once the relay is up (issue #6 review: it was
    /// dropped, and the relay waited for the idle timeout).
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event, !isRelaying {
            clientInputClosed = true
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        if heldRead {
            heldRead = false
            context.read()
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        earlyBytes += buffer.readableBytes
        guard earlyBytes <= Bounds.earlyDataBytes else {
            reporter.reached(.earlyData, listener: listenerName, peer: ListenerFactory.peer(context.channel),
                             detail: "over \(Bounds.earlyDataBytes) bytes before the upstream connected")
            context.close(promise: nil)
            return
        }
        early.append(buffer)
    }

    /// Until the relay takes over, reads wait: the kernel holds the client's bytes.
    func read(context: ChannelHandlerContext) {
        if isRelaying { context.read() } else { heldRead = true }
    }

    /// Carries the connection through an HBONE tunnel from the pool; until the server answered,
    /// reads stay held as for a plain connect.
    private func tunnel(channel: Channel, _ tunnel: OutboundRouting.Tunnel) {
        guard let pools else {
            channel.close(promise: nil)
            return
        }
        HBONETunnel.open(tunnel, for: channel, pools: pools, record: record).flatMap { stage -> EventLoopFuture<Void> in
            self.deadline?.cancel()
            self.isRelaying = true
            let early = self.early
            self.early.removeAll()
            return stage.attach(channel, early: early, inputClosed: self.clientInputClosed, idleMilliseconds: self.bounds.idleMilliseconds,
                                reporter: self.reporter, listener: self.listenerName).flatMap {
                channel.pipeline.removeHandler(self)
            }
        }.whenFailure { error in
            Log.info("outbound: HBONE tunnel failed", [("src", ListenerFactory.peer(channel)), ("dst", tunnel.authority),
                                                      ("via", "\(tunnel.address):\(tunnel.port)"), ("reason", "\(error)")])
            self.record?.finish(error: "\(error)", responseFlags: "CONNECT")
            channel.close(promise: nil)
        }
    }

    private func connect(channel: Channel, host: String, port: UInt16) {
        Upstream.connect(on: channel.eventLoop, host: host, port: port, for: channel, bounds: bounds,
                         inbound: listenerName == "inbound-plaintext").whenComplete { result in
            switch result {
            case .success(let upstream):
                guard channel.isActive else {
                    upstream.close(promise: nil)
                    return
                }
                self.deadline?.cancel()
                for buffer in self.early { upstream.write(buffer, promise: nil) }
                self.early.removeAll()
                upstream.flush()
                if self.clientInputClosed { upstream.close(mode: .output, promise: nil) }
                self.isRelaying = true
                Upstream.relay(client: channel, upstream: upstream, removing: self, idleMilliseconds: self.bounds.idleMilliseconds,
                               listener: self.listenerName, reporter: self.reporter, record: self.record)
            case .failure(let error):
                Log.debug("\(self.listenerName): connect to \(host):\(port) failed: \(error)")
                self.record?.finish(error: "connect to \(host):\(port) failed: \(error)", responseFlags: "CONNECT")
                channel.close(promise: nil)
            }
        }
    }
}
