internal import CNghttp2
import Mesh
import NIOCore
import NIOPosix
import OpenSSLSupport
import Shared

/// The server side of HBONE (15008, ISTIO_COMPAT §5.2, §5.6, §10), on the shared HTTP/2 codec
/// above the TLS handler: each CONNECT stream is validated, authorized with the client's SPIFFE
/// identity, connected to the application and then carries its bytes both ways.
/// A workload with a PROXY application tunnel (§5.7) gets a PROXY protocol v2 header before the
/// stream's bytes, and may be asked for any target address (the header tells it which).
///
/// Not yet: the "sandwich" exception for a waypoint behind ztunnel (data-plane issue).
final class HBONEServerHandler: HTTP2Connection {
    static let maxHeaderListBytes = 64 * 1024

    private let authorization: InboundAuthorization
    private let metrics: TrafficMetrics
    private let proxyPorts: Set<UInt16>
    private var peer: SpiffeId?
    /// The workload each authorized stream is for (its baggage goes on the 200).
    private var destinations: [Int32: Workload] = [:]

    private let bounds: Bounds
    private let reporter: BoundReporter

    init(authorization: InboundAuthorization, metrics: TrafficMetrics, proxyPorts: Set<UInt16>, bounds: Bounds,
         reporter: BoundReporter) {
        self.authorization = authorization
        self.metrics = metrics
        self.proxyPorts = proxyPorts
        self.bounds = bounds
        self.reporter = reporter
        super.init(listener: "inbound", bounds: bounds)
    }

    override func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let established = event as? TLSEstablished {
            peer = established.peer
            tls = established.tls
            startSession(context: context, server: true, maxHeaderListBytes: Self.maxHeaderListBytes, maxConcurrentStreams: 200)
            return
        }
        super.userInboundEventTriggered(context: context, event: event)
    }

    override func beginHeaders(stream id: Int32, category: nghttp2_headers_category) {
        if category == NGHTTP2_HCAT_REQUEST { streams[id] = Stream(id: id) }
    }

    override func headersReceived(_ stream: Stream) { handleRequest(stream) }

    override func streamClosed(_ id: Int32, errorCode: UInt32) {
        destinations[id] = nil
        super.streamClosed(id, errorCode: errorCode)
    }

    override func countFromPeer(_ stream: Stream, _ count: Int) { stream.record?.received += UInt64(count) }
    override func countFromTCP(_ stream: Stream, _ count: Int) { stream.record?.sent += UInt64(count) }

    // MARK: - Requests

    /// Validates the CONNECT (§10), authorizes it (§12) and connects to the application.
    private func handleRequest(_ stream: Stream) {
        guard let context else { return }
        stream.target = stream.authority.isEmpty ? "?" : stream.authority
        guard stream.method == "CONNECT" else { return respond(stream, status: 400, "method \(stream.method) is not CONNECT") }
        guard let local = context.channel.localAddress?.ipAddress.flatMap(IPAddress.init)?.unmapped else {
            return respond(stream, status: 503, "the connection's local address cannot be read")
        }
        let model = authorization.state.model
        // A workload behind a PROXY application tunnel learns the requested target from the
        // header, so it may be asked for any address (§10 step 3, §5.7).
        let localWorkload = authorization.state.workload(at: local.description, in: model)
        let tunnel = localWorkload?.applicationTunnel
            .flatMap { $0.tunnelProtocol == .proxy ? $0 : nil }
        let host: String, resolvedPort: UInt16
        // What the client asked for: the destination a PROXY header names.
        let requested: IPAddress, requestedPort: UInt16
        switch ConnectAuthority.parse(stream.authority) {
        case .address(let address, let number)?:
            guard let ip = IPAddress(address) else {
                return respond(stream, status: 400, "authority \(stream.authority) is not an address")
            }
            // The authority must name the address this connection arrived on (§10 step 3). A
            // dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: compared unmapped. Two
            // exceptions: a PROXY application tunnel (the header names the target), and a
            // waypoint behind ztunnel asked for what it is the waypoint of (the "sandwich").
            guard local == ip.unmapped || tunnel != nil || isWaypoint(localWorkload, of: ip.unmapped, model: model) else {
                return respond(stream, status: 400, "ip mismatch: \(address) is not the address this connection arrived on")
            }
            (host, resolvedPort, requested, requestedPort) = (local.description, number, ip.unmapped, number)
        case .hostname(let hostname, let number)?:
            // A service by name (§10 step 4): the port comes from this workload's endpoint map
            // for the service, and the upstream is the address the connection arrived on.
            guard let workload = localWorkload else {
                return respond(stream, status: 503, "unknown destination: no workload owns \(local)")
            }
            let source = context.channel.remoteAddress?.ipAddress
            let namespace = authorization.state.workload(at: source, in: model)?.namespace
            switch Router.inboundPort(model, workload: workload, hostname: hostname, port: number, clientNamespace: namespace) {
            case .success(let resolved): (host, resolvedPort) = (local.description, resolved)
            case .failure(let refusal): return respond(stream, status: 503, refusal.description)
            }
            // A PROXY header names the service's VIP with the requested port (§5.7); without a
            // tunnel there is no header, and no VIP to find.
            let vip = tunnel == nil ? nil : Router.inboundService(model, hostname: hostname, clientNamespace: namespace)
                .flatMap { Router.proxyTarget(of: $0, network: authorization.state.configuration.string("NETWORK")) }
            (requested, requestedPort) = (vip ?? local, number)
        case nil:
            return respond(stream, status: 400, "authority \(stream.authority) is neither IP:port nor host:port")
        }
        // The application tunnel's port, if it names one, replaces the resolved port before the
        // checks (§10 step 4): what is authorized is what is dialled.
        let proxy = tunnel.map { proxyPlan($0, local: local, port: resolvedPort, requested: requested, requestedPort: requestedPort) }
        let port = proxy?.port ?? resolvedPort
        guard !proxyPorts.contains(port), !(proxy?.isLoopback == true && port == DNSProxy.port) else {
            return respond(stream, status: 503, "port \(port) is one of this proxy's")
        }
        let source = context.channel.remoteAddress?.ipAddress
        switch authorization.check(source: source, destination: host, port: port, identity: peer?.description) {
        case .denied(let reason, _, nil):
            return respond(stream, status: 503, reason)
        case .denied(let reason, let policy, let workload?):
            stream.record = record(for: stream, source: source, destination: workload, host: host, port: port)
            stream.record?.finish(error: "denied by \(policy ?? "policy"): \(reason)", responseFlags: "DENY")
            return respond(stream, status: 401, "denied by \(policy ?? "policy"): \(reason)")
        case .allowed(let workload):
            destinations[stream.id] = workload
            stream.record = record(for: stream, source: source, destination: workload, host: host, port: port)
            connectUpstream(stream, host: host, port: port, source: source ?? "?", proxy: proxy)
        }
    }

    /// Where a PROXY-tunnelled stream is delivered and the header that goes first (§5.7): the
    /// tunnel's port if it names one; on the pod's loopback unless LOCALHOST_APP_TUNNEL is false
    /// (in-pod mode only: elsewhere loopback would be ztunnel's own, so the workload's address is
    /// dialled); the header names the HBONE client (this connection's peer, and its SPIFFE
    /// identity) and the target it asked for.
    private func proxyPlan(_ tunnel: ApplicationTunnel, local: IPAddress, port: UInt16, requested: IPAddress,
                           requestedPort: UInt16) -> ProxyPlan {
        let loopback = authorization.state.configuration.bool("LOCALHOST_APP_TUNNEL") && PodDialer.shared != nil
        let host = loopback ? (local.isIPv4 ? "127.0.0.1" : "::1") : local.description
        let peerAddress = context?.channel.remoteAddress
        let client = peerAddress?.ipAddress.flatMap(IPAddress.init)?.unmapped ?? local
        let header = ProxyProtocolV2.header(source: client, sourcePort: UInt16(clamping: peerAddress?.port ?? 0),
                                            destination: requested, destinationPort: requestedPort, identity: peer?.description)
        return ProxyPlan(host: host, port: tunnel.port ?? port, header: header, isLoopback: loopback)
    }

    /// Whether `workload` (the one at the local address) is the waypoint of `target` (§10 step
    /// 3, the sandwich).
    private func isWaypoint(_ workload: Workload?, of target: IPAddress, model: MeshModel) -> Bool {
        guard let workload else { return false }
        let network = authorization.state.configuration.string("NETWORK")
        return Router.isWaypoint(workload, of: NetworkAddress(network: network, ip: target), model: model)
    }

    struct ProxyPlan {
        let host: String
        let port: UInt16
        let header: [UInt8]
        let isLoopback: Bool
    }

    /// The stream's metrics labels and access-log fields (the TLS peer as source principal). A
    /// stream that came through a network gateway (`x-forwarded-network` names another network)
    /// has its source described by its `baggage`, since its address is the gateway's (§10). Any
    /// peer of the trust domain can send those headers: at most `Self.describedSources` distinct
    /// descriptions are taken per NetWorker (then the source is unknown), so they cannot crowd
    /// the metrics' label sets.
    private func record(for stream: Stream, source: String?, destination: Workload, host: String, port: UInt16) -> ConnectionRecord {
        var remote: Workload?
        if authorization.state.usesBaggage, let network = stream.forwardedNetwork, network != authorization.state.configuration.string("NETWORK"),
           let described = Workload(baggage: stream.baggage ?? "", network: network),
           Self.describedSources.admit("\(network)|\(described.baggage)") {
            remote = described
        }
        return authorization.record(metrics: metrics, source: source, sourceWorkload: remote, sourceAddress: context?.channel.remoteAddress.map(ListenerFactory.address) ?? "?",
                             peer: peer?.description, destination: destination,
                             destinationAddress: context?.channel.localAddress.map(ListenerFactory.address) ?? "?",
                             hboneAddress: stream.authority)
    }

    /// Connects the stream to the application at host:port (or where `proxy` says, header first).
    /// Authorization judges host:port, the address the connection arrived on.
    private func connectUpstream(_ stream: Stream, host: String, port: UInt16, source: String, proxy: ProxyPlan?) {
        guard let context else { return }
        let handler = self
        Upstream.connect(on: context.eventLoop, host: proxy?.host ?? host, port: proxy?.port ?? port, for: context.channel,
                         bounds: bounds, inbound: true).whenComplete { result in
            switch result {
            case .failure(let error):
                stream.record?.finish(error: "connect to the application failed: \(error)", responseFlags: "CONNECT")
                handler.respond(stream, status: 503, "connect to the application failed: \(error)")
            case .success(let upstream):
                guard handler.streams[stream.id] === stream else {  // the stream ended meanwhile
                    upstream.close(promise: nil)
                    return
                }
                // Registered, then decided again: a policy change that raced the first decision
                // (while connecting) is either seen here or re-checks this stream later.
                handler.authorization.live?.register(.init(channel: upstream, listener: handler.listener, source: source,
                                                           destination: host, port: port, identity: handler.peer?.description))
                if case .denied(let reason, let policy, _) = handler.authorization.check(
                    source: source, destination: host, port: port, identity: handler.peer?.description) {
                    upstream.close(promise: nil)
                    stream.record?.finish(error: "denied by \(policy ?? "policy"): \(reason)", responseFlags: "DENY")
                    handler.respond(stream, status: 401, "denied by \(policy ?? "policy"): \(reason)")
                    return
                }
                // Each stream meets the idle timeout on its own: the connection's PINGs keep
                // the connection busy, not its streams.
                let idle = handler.bounds.idleMilliseconds
                let reporter = handler.reporter, peer = ListenerFactory.peer(upstream)
                let onIdle: @Sendable () -> Void = {
                    reporter.reached(.idleTimeout, listener: "inbound", peer: peer, detail: "no bytes either way for \(idle) ms")
                }
                // The PROXY header goes before any byte of the stream (attaching writes those), and
                // at once: an application that speaks first waits for it.
                if let proxy { upstream.writeAndFlush(upstream.allocator.buffer(bytes: proxy.header), promise: nil) }
                do {
                    try upstream.pipeline.syncOperations.addHandlers([IdleWatch(timeout: .milliseconds(idle), onIdle: onIdle)])
                    try handler.attach(upstream, to: stream)
                } catch {
                    upstream.close(promise: nil)
                    handler.respond(stream, status: 503, "cannot bridge the application's connection: \(error)")
                    return
                }
                handler.respondOK(stream)
                Log.info("inbound: HBONE stream connected", [("peer_identity", handler.peer?.description ?? "none"),
                                                             ("src", source), ("dst", "\(host):\(port)")])
            }
        }
    }

    // MARK: - Responses and data

    private func respond(_ stream: Stream, status: Int, _ reason: String) {
        guard let session else { return }
        Log.info("inbound: HBONE request refused", [("status", "\(status)"), ("peer_identity", peer?.description ?? "none"),
                                                     ("target", stream.target), ("reason", reason)])
        stream.isRefused = true
        for buffer in stream.early { _ = nghttp2_session_consume(session, stream.id, buffer.readableBytes) }
        stream.early.removeAll()
        // The answer ends our side (END_STREAM); what the client still sends is dropped and its
        // window given back (a reset here would overtake the answer in nghttp2's queue).
        submit(session, stream: stream.id, status: status, withBody: false)
        flushSession()
    }

    private func respondOK(_ stream: Stream) {
        guard let session else { return }
        let baggage = authorization.state.usesBaggage ? destinations[stream.id].map(Self.baggage) ?? "" : ""
        submit(session, stream: stream.id, status: 200, withBody: true, extra: baggage.isEmpty ? [] : [("baggage", baggage)])
        flushSession()
    }

    private func submit(_ session: OpaquePointer, stream id: Int32, status: Int, withBody: Bool, extra: [(String, String)] = []) {
        Self.withHeaders([(":status", String(status))] + extra) { headers, count in
            guard withBody else {
                _ = nghttp2_submit_response(session, id, headers, count, nil)
                return
            }
            withDataProvider { _ = nghttp2_submit_response(session, id, headers, count, $0) }
        }
    }

    static func baggage(for workload: Workload) -> String { workload.baggage }

    /// Sources described by baggage, distinct ones admitted up to a bound.
    static let describedSources = BoundedSet(limit: 256)
}
