import Mesh
import NIOCore
import NIOPosix
import Shared

/// Serves one SOCKS5 client: runs `Socks5Parser`, connects to the destination on the same event
/// loop, answers, then hands both channels to a `RelayHandler` pair.
///
/// Bounds (issue #6): the whole handshake, connect included, must finish within
/// `Bounds.handshakeMilliseconds`; while the upstream connects no more is read from the client
/// (its bytes wait in the kernel), and what had already arrived is kept, up to
/// `Bounds.earlyDataBytes`, and sent first. Nothing the client sends is dropped.
final class Socks5Handler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var parser = Socks5Parser()
    private var isConnecting = false
    private var early: [ByteBuffer] = []
    private var earlyBytes = 0
    private var heldRead = false
    private var clientInputClosed = false
    private var deadline: Scheduled<Void>?
    private let guardrails: DestinationGuard
    private let bounds: Bounds
    private let reporter: BoundReporter
    private let routing: OutboundRouting?
    private let metrics: TrafficMetrics?
    private let pools: HBONEPools?
    private var record: ConnectionRecord?
    static let listener = "socks5"

    init(guardrails: DestinationGuard, bounds: Bounds, reporter: BoundReporter, routing: OutboundRouting? = nil,
         metrics: TrafficMetrics? = nil, pools: HBONEPools? = nil) {
        self.metrics = metrics
        self.pools = pools
        self.routing = routing
        self.guardrails = guardrails
        self.bounds = bounds
        self.reporter = reporter
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let limit = bounds.handshakeMilliseconds
        deadline = reporter.deadline(.handshakeTimeout, on: context.channel, listener: Self.listener, after: limit,
                                     detail: "SOCKS5 handshake and connect not done within \(limit) ms")
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        // The relay has taken over: pass on the read that waited while connecting.
        if heldRead {
            heldRead = false
            context.read()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        context.fireChannelInactive()
    }

    /// A client that stops sending before its request is complete will never complete it. One
    /// that half-closes while the upstream connects (its request sent whole) has its EOF passed
    /// on once the relay is up, so the upstream sees the end of the request.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event {
            if isConnecting { clientInputClosed = true } else { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        guard !isConnecting else {
            keepEarly(buffer, context: context)
            return
        }
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
            fail(context, bytes)
        case .connect(let host, let port, let leftover):
            if !leftover.isEmpty { keepEarly(context.channel.allocator.buffer(bytes: leftover), context: context) }
            connect(context: context, host: host, port: port)
        }
    }

    /// While connecting, reads wait (the kernel holds the client's bytes): the relay asks again.
    func read(context: ChannelHandlerContext) {
        if isConnecting { heldRead = true } else { context.read() }
    }

    private func keepEarly(_ buffer: ByteBuffer, context: ChannelHandlerContext) {
        earlyBytes += buffer.readableBytes
        guard earlyBytes <= Bounds.earlyDataBytes else {
            reporter.reached(.earlyData, listener: Self.listener, peer: ListenerFactory.peer(context.channel),
                             detail: "over \(Bounds.earlyDataBytes) bytes before the upstream connected")
            context.close(promise: nil)
            return
        }
        early.append(buffer)
    }

    private func connect(context: ChannelHandlerContext, host: String, port: UInt16) {
        isConnecting = true
        if let refusal = guardrails.refusal(host: host, port: port) {
            Log.debug("socks5: refused \(host):\(port): \(refusal)")
            fail(context, Socks5Parser.reply(.notAllowed))
            return
        }
        let client = context.channel
        guard let routing else {
            connectUpstream(context: context, host: host, port: port, target: host, targetPort: port)
            return
        }
        // A name outside the mesh (§14): asked of the node's nameservers, then connected to as
        // its first address, which the guardrails judge again (a name may point anywhere).
        if IPAddress(host) == nil, host.hasSuffix(".") {  // a fully qualified name: the same name
            connect(context: context, host: String(host.dropLast()), port: port)
            return
        }
        if IPAddress(host) == nil, routing.state.model.servicesByHostname[host] == nil, let dns = DNSProxy.shared, dns.canResolve {
            dns.resolve(host, on: context.eventLoop).whenComplete { result in
                guard client.isActive else { return }
                guard case .success(let found) = result, let addresses = found, let address = addresses.first else {
                    let reason = (try? result.get()) == .some(nil) ? "too many name lookups in flight"
                        : "the nameservers gave no address for \(host)"
                    Log.info("socks5: connection refused", [("src", ListenerFactory.peer(client)), ("dst", "\(host):\(port)"),
                                                           ("reason", reason)])
                    self.fail(context, Socks5Parser.reply(.hostUnreachable))
                    return
                }
                Log.debug("socks5: \(host) resolved", [("address", address.description), ("of", "\(addresses.count)")])
                self.connect(context: context, host: address.description, port: port)
            }
            return
        }
        routing.resolve(host: host, port: port, client: client.remoteAddress?.ipAddress, on: context.eventLoop).whenSuccess { resolution in
            guard client.isActive else { return }
            switch resolution {
            case .connect(let routedHost, let routedPort, _, let routed):
                if let metrics = self.metrics {
                    self.record = routed.record(metrics: metrics, client: client.remoteAddress.map(ListenerFactory.address) ?? "?",
                                                upstream: "\(routedHost):\(routedPort)")
                }
                self.connectUpstream(context: context, host: host, port: port, target: routedHost, targetPort: routedPort)
            case .resolveName(let pending):  // resolved inside `resolve(on:)`; never seen here
                Log.warn("socks5: a hostname workload reached the handler unresolved", [("workload", pending.workloadUid)])
                self.fail(context, Socks5Parser.reply(.hostUnreachable))
            case .tunnel(let tunnel):
                if let metrics = self.metrics { self.record = tunnel.record(metrics: metrics, client: client) }
                self.tunnel(context: context, tunnel)
            case .refuse(let reason), .noCertificate(_, let reason, _):
                Log.info("socks5: connection refused", [("src", ListenerFactory.peer(client)), ("dst", "\(host):\(port)"),
                                                       ("reason", reason)])
                self.fail(context, Socks5Parser.reply(.hostUnreachable))
            }
        }
    }

    private func connectUpstream(context: ChannelHandlerContext, host: String, port: UInt16, target: String, targetPort: UInt16) {
        let client = context.channel
        Upstream.connect(on: context.eventLoop, host: target, port: targetPort, for: client, bounds: bounds).whenComplete { result in
            switch result {
            case .success(let upstream):
                guard client.isActive else {
                    upstream.close(promise: nil)
                    return
                }
                self.deadline?.cancel()
                client.writeAndFlush(client.allocator.buffer(bytes: Socks5Parser.reply(.succeeded)), promise: nil)
                for buffer in self.early { upstream.write(buffer, promise: nil) }
                self.early.removeAll()
                upstream.flush()
                if self.clientInputClosed { upstream.close(mode: .output, promise: nil) }
                Upstream.relay(client: client, upstream: upstream, removing: self, idleMilliseconds: self.bounds.idleMilliseconds,
                               listener: Self.listener, reporter: self.reporter, record: self.record)
            case .failure(let error):
                Log.debug("socks5: connect to \(host):\(port) failed: \(error)")
                self.record?.finish(error: "connect to \(target):\(targetPort) failed: \(error)", responseFlags: "CONNECT")
                self.fail(context, Socks5Parser.reply(.connectionRefused))
            }
        }
    }

    /// Carries the connection through an HBONE tunnel from the pool; the SOCKS5 success reply
    /// goes out once the server answered 200, a failure reply otherwise.
    private func tunnel(context: ChannelHandlerContext, _ tunnel: OutboundRouting.Tunnel) {
        let client = context.channel
        guard let pools else {
            fail(context, Socks5Parser.reply(.generalFailure))
            return
        }
        HBONETunnel.open(tunnel, for: client, pools: pools, record: record).flatMap { stage -> EventLoopFuture<Void> in
            self.deadline?.cancel()
            client.writeAndFlush(client.allocator.buffer(bytes: Socks5Parser.reply(.succeeded)), promise: nil)
            let early = self.early
            self.early.removeAll()
            return stage.attach(client, early: early, inputClosed: self.clientInputClosed, idleMilliseconds: self.bounds.idleMilliseconds,
                                reporter: self.reporter, listener: Self.listener).flatMap {
                client.pipeline.removeHandler(self)
            }
        }.whenFailure { error in
            Log.info("socks5: HBONE tunnel failed", [("src", ListenerFactory.peer(client)), ("dst", tunnel.authority),
                                                    ("via", "\(tunnel.address):\(tunnel.port)"), ("reason", "\(error)")])
            self.record?.finish(error: "\(error)", responseFlags: "CONNECT")
            self.fail(context, Socks5Parser.reply(.connectionRefused))
        }
    }

    private func fail(_ context: ChannelHandlerContext, _ reply: [UInt8]) {
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: reply))).whenComplete { _ in
            context.close(promise: nil)
        }
    }
}

/// Refuses destinations that would loop back into this proxy (ISTIO_COMPAT §2, "illegal ports").
/// The host is parsed as an address, not compared as text: every spelling that reaches this
/// host's loopback counts (127/8, ::1, the unspecified 0.0.0.0 and ::, and IPv4-mapped
/// ::ffff:127.x and ::ffff:0.0.0.0; issue #6 review found the textual check let those through).
struct DestinationGuard: Sendable {
    let proxyPorts: Set<UInt16>

    func refusal(host: String, port: UInt16) -> String? {
        if proxyPorts.contains(port) && Self.reachesLoopback(host) { return "loopback destination on a proxy port" }
        return nil
    }

    static func reachesLoopback(_ host: String) -> Bool {
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 { return isLoopbackOrUnspecified(UInt32(bigEndian: v4.s_addr)) }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, host, &v6) == 1 else { return false }
        let bytes = withUnsafeBytes(of: &v6) { Array($0) }
        if bytes[0..<15].allSatisfy({ $0 == 0 }) { return bytes[15] <= 1 }  // :: and ::1
        if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xff && bytes[11] == 0xff {
            let mapped = UInt32(bytes[12]) << 24 | UInt32(bytes[13]) << 16 | UInt32(bytes[14]) << 8 | UInt32(bytes[15])
            return isLoopbackOrUnspecified(mapped)
        }
        return false
    }

    private static func isLoopbackOrUnspecified(_ address: UInt32) -> Bool {
        address >> 24 == 127 || address == 0
    }
}

/// Outbound connections and the relay between two channels.
enum Upstream {
    /// Connects to a numeric address (no resolver: nothing here reads /etc/hosts or DNS), for
    /// `client`: from its pod's network namespace when it came in on a pod's listener (in-pod
    /// mode), else from the NetWorker's own. `inbound`: a connection to an application, which
    /// in-pod mode makes from the client's address (`OriginalSource`).
    static func connect(on eventLoop: EventLoop, host: String, port: UInt16, for client: Channel, bounds: Bounds,
                        inbound: Bool = false) -> EventLoopFuture<Channel> {
        let address: NIOCore.SocketAddress
        do { address = try NIOCore.SocketAddress(ipAddress: host, port: Int(port)) } catch {
            return eventLoop.makeFailedFuture(error)
        }
        let bootstrap = TCPKeepaliveOptions.apply(bounds, to: ClientBootstrap(group: eventLoop)
            .channelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1))
        if let dialer = PodDialer.shared {
            // In-pod mode has no node-level data listeners: a connection without a pod is one
            // whose pod was just withdrawn; it never leaves from ztunnel's own namespace.
            guard let pod = dialer.pod(of: client) else {
                return eventLoop.makeFailedFuture(PodDialer.DialError("the connection's pod is no longer served"))
            }
            return dialer.connect(pod: pod, to: address, from: inbound ? client.remoteAddress : nil, on: eventLoop,
                                  timeout: .seconds(10), bootstrap: bootstrap)
        }
        return bootstrap.connectTimeout(.seconds(10)).connect(to: address)
    }

    /// Replaces `handler` on the client with one side of a relay and puts the other on upstream,
    /// with an idle timer: a connection with no bytes either way for `idleMilliseconds` is
    /// closed (both sides) and reported.
    static func relay(client: Channel, upstream: Channel, removing handler: RemovableChannelHandler,
                      idleMilliseconds: Int64, listener: String, reporter: BoundReporter, record: ConnectionRecord? = nil) {
        let (clientSide, upstreamSide) = RelayHandler.pair(record: record)
        if let record { client.closeFuture.whenComplete { _ in record.finish() } }
        let idle = TimeAmount.milliseconds(idleMilliseconds)
        let peer = ListenerFactory.peer(client)
        let onIdle: @Sendable () -> Void = {
            reporter.reached(.idleTimeout, listener: listener, peer: peer, detail: "no bytes either way for \(idleMilliseconds) ms")
        }
        // One timer, on the client side: it sees a read for every byte the client sends and a
        // write for every byte the upstream sends, so it measures silence in both directions.
        upstream.pipeline.addHandler(upstreamSide).flatMap {
            client.pipeline.addHandlers([IdleWatch(timeout: idle, onIdle: onIdle), clientSide])
        }.flatMap {
            client.pipeline.removeHandler(handler)
        }.whenFailure { _ in
            client.close(promise: nil)
            upstream.close(promise: nil)
        }
    }
}

