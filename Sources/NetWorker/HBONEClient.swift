internal import CNghttp2
internal import CShims
import Mesh
import NIOCore
import NIOPosix
import OpenSSLSupport
import Shared

/// The client side of HBONE (ISTIO_COMPAT §5.2-5.3), on the shared HTTP/2 codec above a client
/// `TLSHandler`: one pooled mTLS connection that carries many CONNECT streams, each bridged to
/// one captured TCP connection once the server answered 200.
final class HBONEClientHandler: HTTP2Connection {
    static let maxHeaderListBytes = 16 * 1024

    private let maxStreams: Int
    private let idleRelease: TimeAmount
    /// Completed when the TLS handshake is done and the session is up (or failed, with why).
    private var ready: EventLoopPromise<Void>?
    private var failure: String?
    private var idleTimer: Scheduled<Void>?
    /// Streams asked for and not yet closed (a new stream counts before nghttp2 numbers it).
    private var openStreams = 0
    private(set) var peer: SpiffeId?
    /// Not pooled (the inner connection of double HBONE): ends once its one stream closed.
    private let singleUse: Bool

    init(ready: EventLoopPromise<Void>, maxStreams: Int, idleRelease: TimeAmount, bounds: Bounds, singleUse: Bool = false) {
        self.ready = ready
        self.maxStreams = maxStreams
        self.idleRelease = idleRelease
        self.singleUse = singleUse
        super.init(listener: "outbound", bounds: bounds)
    }

    override var maxHeaderListBytes: Int { Self.maxHeaderListBytes }

    override func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let established = event as? TLSEstablished {
            peer = established.peer
            tls = established.tls
            if startSession(context: context, server: false, maxHeaderListBytes: Self.maxHeaderListBytes,
                            maxConcurrentStreams: UInt32(maxStreams)) {
                ready?.succeed(())
            } else {
                ready?.fail(HBONEError("the HTTP/2 session could not be set up"))
            }
            ready = nil
            armIdleTimer()
            return
        }
        if let failed = event as? TLSFailed {
            failure = failed.reason
            return
        }
        super.userInboundEventTriggered(context: context, event: event)
    }

    override func channelInactive(context: ChannelHandlerContext) {
        idleTimer?.cancel()
        ready?.fail(HBONEError(failure ?? "the connection closed during the handshake"))
        ready = nil
        super.channelInactive(context: context)
    }

    override func handlerRemoved(context: ChannelHandlerContext) {
        idleTimer?.cancel()
        ready?.fail(HBONEError(failure ?? "the connection was torn down"))
        ready = nil
        super.handlerRemoved(context: context)
    }

    /// Whether another stream may start here: the connection is up, has not been told to go
    /// away, and carries fewer than min(our limit, the server's) streams (§5.5).
    var hasCapacity: Bool {
        guard let session, let context, context.channel.isActive, nghttp2_session_check_request_allowed(session) != 0 else {
            return false
        }
        let peerLimit = Int(nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS))
        return openStreams < min(maxStreams, peerLimit)
    }

    /// Takes one stream slot: the pool reserves it when it hands this connection out, so that
    /// demands served in the same turn of the loop cannot overfill it. `open` uses it.
    func reserve() {
        openStreams += 1
        idleTimer?.cancel()
        idleTimer = nil
    }

    /// Sends a CONNECT for `authority` with `headers` in the slot `reserve` took. The future
    /// succeeds once the server answered 200 (the stream is then open and waits for its TCP
    /// side) and fails with the reason otherwise; either way the stream belongs to this connection.
    /// `loop` is the connection's (the pool hands out connections of its own loop only).
    func open(on loop: EventLoop, authority: String, headers: [(String, String)],
              record: ConnectionRecord?) -> (Stream?, EventLoopFuture<Void>) {
        guard let session, context != nil else {
            releaseSlot()
            return (nil, loop.makeFailedFuture(HBONEError("the HBONE connection is not up")))
        }
        let promise = loop.makePromise(of: Void.self)
        let stream = Stream(id: -1)
        stream.target = authority
        stream.record = record
        stream.answered = promise
        var id: Int32 = -1
        let all = [(":method", "CONNECT"), (":authority", authority)] + headers
        Self.withHeaders(all) { nva, count in
            withDataProvider { id = nghttp2_submit_request(session, nil, nva, count, $0, nil) }
        }
        guard id > 0 else {
            releaseSlot()
            promise.fail(HBONEError("cannot open a stream: \(String(cString: nghttp2_strerror(id)))"))
            return (nil, promise.futureResult)
        }
        stream.id = id
        streams[id] = stream
        flushSession()
        return (stream, promise.futureResult)
    }

    /// Resets a stream whose client went away before it was bridged.
    func cancel(_ stream: Stream) {
        guard let session, streams[stream.id] === stream else { return }
        _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream.id, UInt32(NGHTTP2_CANCEL.rawValue))
        flushSession()
    }

    override func headersReceived(_ stream: Stream) {
        guard let answered = stream.answered else { return }
        stream.answered = nil
        if stream.status == 200 {
            answered.succeed(())
            return
        }
        // Anything but 200 fails the connection (§5.3); the server ended its side already.
        stream.isRefused = true
        answered.fail(HBONEError("the server answered \(stream.status) to CONNECT \(stream.target)"))
        if let session {
            _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream.id, UInt32(NGHTTP2_CANCEL.rawValue))
            flushSession()
        }
    }

    /// The slot is given back first: a refused stream's tunnel tries again at once, and this
    /// connection must not count the dead stream then. (A request nghttp2 could not send because
    /// a GOAWAY came while its HEADERS were queued is closed here too, as REFUSED_STREAM.)
    override func streamClosed(_ id: Int32, errorCode: UInt32) {
        if streams[id] != nil { releaseSlot() }
        super.streamClosed(id, errorCode: errorCode)
    }

    private func releaseSlot() {
        openStreams -= 1
        guard openStreams == 0 else { return }
        if singleUse {
            // On the next turn: this runs inside nghttp2's stream-close callback.
            context?.eventLoop.execute { self.shutDown() }
        } else {
            armIdleTimer()
        }
    }

    /// Ends the connection: GOAWAY (nghttp2 then wants neither to read nor to write, and the
    /// connection closes once it is written), or a plain close before the session exists. For
    /// an unused pooled connection, and for one whose pod is gone (in-pod mode).
    func shutDown() {
        guard let context else { return }
        guard let session else {
            context.close(promise: nil)
            return
        }
        _ = nghttp2_session_terminate_session(session, UInt32(NGHTTP2_NO_ERROR.rawValue))
        flushSession()
    }

    /// A connection with no stream for `idleRelease` is closed: GOAWAY first, then close_notify.
    private func armIdleTimer() {
        guard let context, idleTimer == nil, openStreams == 0 else { return }
        idleTimer = context.eventLoop.scheduleTask(in: idleRelease) { [weak self] in
            guard let self else { return }
            self.idleTimer = nil
            guard self.openStreams == 0, let context = self.context else { return }
            Log.debug("outbound: releasing an unused pooled HBONE connection", [("peer", ListenerFactory.peer(context.channel))])
            self.shutDown()
        }
    }

    // Bytes from the captured client count as received, bytes from the server as sent, as the
    // plaintext relay counts them.
    override func countFromPeer(_ stream: Stream, _ count: Int) { stream.record?.sent += UInt64(count) }
    override func countFromTCP(_ stream: Stream, _ count: Int) { stream.record?.received += UInt64(count) }
}

/// The HBONE connections of one event loop (ISTIO_COMPAT §5.5), used only on that loop: keyed by
/// (source identity, expected identities, destination address, source IP), each reused until it carries
/// its stream limit, then another is opened. Demands for a key with no usable connection while
/// one is being made wait for it, so only one handshake per key is in flight.
final class HBONEPool {
    struct Key: Hashable {
        let source: String
        let expected: [String]
        let address: String
        let port: UInt16
        let clientIP: String
        /// In-pod mode: the pod whose namespace the connection leaves from.
        var pod: String?
    }

    let eventLoop: EventLoop
    let settings: Settings
    private var connections: [Key: [HBONEClientHandler]] = [:]
    private var connecting: [Key: EventLoopFuture<HBONEClientHandler>] = [:]

    struct Settings {
        let signer: SignerClient
        let bounds: Bounds
        let reporter: BoundReporter
        let maxStreams: Int
        let idleRelease: TimeAmount
    }

    init(eventLoop: EventLoop, settings: Settings) {
        self.eventLoop = eventLoop
        self.settings = settings
    }

    /// A connection for `tunnel` with one stream slot reserved: a pooled one, the one being made
    /// for its key, or a new one.
    func connection(for tunnel: OutboundRouting.Tunnel) -> EventLoopFuture<HBONEClientHandler> {
        eventLoop.preconditionInEventLoop()
        let key = tunnel.key
        // Newest first: older connections fill up and stay full while their streams live, so a
        // search from the oldest walks every full one (a measured cost with 15,000 streams open).
        if let usable = connections[key]?.last(where: \.hasCapacity) {
            usable.reserve()
            return eventLoop.makeSucceededFuture(usable)
        }
        if let pending = connecting[key] {
            // Wait for the handshake in flight, then look again (it may be full by then).
            return pending.flatMap { _ in self.connection(for: tunnel) }
        }
        let made = connect(tunnel, key: key)
        connecting[key] = made
        made.whenComplete { _ in self.connecting[key] = nil }
        return made
    }

    private func connect(_ tunnel: OutboundRouting.Tunnel, key: Key) -> EventLoopFuture<HBONEClientHandler> {
        let address: NIOCore.SocketAddress
        do { address = try NIOCore.SocketAddress(ipAddress: tunnel.address, port: Int(tunnel.port)) } catch {
            return eventLoop.makeFailedFuture(error)
        }
        let ready = eventLoop.makePromise(of: Void.self)
        let handler = HBONEClientHandler(ready: ready, maxStreams: settings.maxStreams, idleRelease: settings.idleRelease,
                                         bounds: settings.bounds)
        let settings = self.settings
        let tls = TLSHandler(role: .client(context: tunnel.context, expected: tunnel.expected), signer: settings.signer,
                             bounds: settings.bounds, reporter: settings.reporter)
        let bootstrap = TCPKeepaliveOptions.apply(settings.bounds, to: ClientBootstrap(group: eventLoop)
            .channelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .channelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(ChannelOptions.writeBufferWaterMark, value: HTTP2Connection.waterMark)
            .channelInitializer { channel in channel.pipeline.addHandlers([tls, handler]) })
        let connected: EventLoopFuture<Channel>
        if let dialer = PodDialer.shared {
            guard let pod = tunnel.pod else {
                return eventLoop.makeFailedFuture(HBONEError("the connection's pod is no longer served; not dialing from ztunnel's namespace"))
            }
            connected = dialer.connect(pod: pod, to: address, on: eventLoop, timeout: .seconds(10), bootstrap: bootstrap)
        } else {
            connected = bootstrap.connectTimeout(.seconds(10)).connect(to: address)
        }
        connected.whenFailure { error in
            ready.fail(HBONEError("TCP connect to \(tunnel.address):\(tunnel.port) failed: \(error)"))
        }
        return connected.flatMap { channel in
            ready.futureResult.map {
                handler.reserve()  // for the demand that made it
                self.connections[key, default: []].append(handler)
                channel.closeFuture.whenComplete { _ in
                    self.connections[key]?.removeAll { $0 === handler }
                    if self.connections[key]?.isEmpty == true { self.connections[key] = nil }
                }
                return handler
            }.flatMapErrorThrowing { error in
                channel.close(promise: nil)
                throw error
            }
        }
    }

    /// Ends the pooled connections that left from pod `uid`'s namespace (it is gone).
    func close(pod uid: String) {
        eventLoop.preconditionInEventLoop()
        for key in connections.keys where key.pod == uid {
            for handler in connections[key] ?? [] { handler.shutDown() }
            connections[key] = nil
        }
    }

    /// Connections open now, for tests and the pool's log.
    var count: Int { connections.values.reduce(0) { $0 + $1.count } }
}

/// The pools of all event loops: each loop has its own, used only there (no lock on the path).
final class HBONEPools: @unchecked Sendable {
    private let lock = Mutex()
    private var pools: [ObjectIdentifier: HBONEPool] = [:]
    private let settings: HBONEPool.Settings

    init(settings: HBONEPool.Settings) { self.settings = settings }

    /// Ends every loop's pooled connections of pod `uid`.
    func close(pod uid: String) {
        let all = lock.withLock { Array(pools.values) }
        for pool in all { pool.eventLoop.execute { pool.close(pod: uid) } }
    }

    func pool(for eventLoop: EventLoop) -> HBONEPool {
        lock.withLock {
            let key = ObjectIdentifier(eventLoop)
            if let pool = pools[key] { return pool }
            let pool = HBONEPool(eventLoop: eventLoop, settings: settings)
            pools[key] = pool
            return pool
        }
    }
}

/// Carries one captured connection (15001, SOCKS5) through an HBONE tunnel.
enum HBONETunnel {
    /// Opens a stream for `tunnel` on a pooled connection; the future succeeds once the server
    /// answered 200 (then `Stage.attach` bridges the client) and fails with the reason the
    /// tunnel could not be made.
    ///
    /// A CONNECT the server refused without processing it (REFUSED_STREAM, or cut off by a
    /// GOAWAY) is sent again, on a connection that can still take it, up to `attempts` times in
    /// all: a draining peer ztunnel must not cost its clients their connections.
    static func open(_ tunnel: OutboundRouting.Tunnel, for client: Channel, pools: HBONEPools,
                     record: ConnectionRecord?, attempts: Int = 3) -> EventLoopFuture<Stage> {
        let pool = pools.pool(for: client.eventLoop)
        let headers = requestHeaders(tunnel, client: client)
        var tunnel = tunnel
        tunnel.pod = PodDialer.shared?.pod(of: client)
        if let inner = tunnel.inner {
            tunnel.inner = nil
            return throughGateway(tunnel, inner: inner, pool: pool, client: client, headers: headers, record: record, attempts: attempts)
        }
        return attempt(tunnel, pool: pool, client: client, headers: headers, record: record, left: attempts)
    }

    /// Double HBONE (ISTIO_COMPAT §9 step 4, §5.3-5.4): a stream to the network gateway (pooled
    /// like any tunnel, retried the same way) carries an inner mTLS connection of our own, not
    /// pooled, whose one CONNECT reaches the destination; the client is bridged to that inner
    /// stream. The two are joined by an anonymous AF_UNIX socket pair, each end a NIO channel on
    /// the client's loop: one end is the outer stream's TCP side, the other the inner TLS
    /// connection's transport. The inner connection presents the same source certificate, expects
    /// the service's SANs only, and adds `x-forwarded-network`. Closing either end closes the
    /// other: the inner connection ends (GOAWAY, close) once its stream closed.
    private static func throughGateway(_ outer: OutboundRouting.Tunnel, inner: OutboundRouting.Tunnel.Inner, pool: HBONEPool,
                                       client: Channel, headers: [(String, String)], record: ConnectionRecord?,
                                       attempts: Int) -> EventLoopFuture<Stage> {
        let loop = client.eventLoop
        var pair: [Int32] = [-1, -1]
        guard CShims_socketpair(&pair) == 0 else {
            return loop.makeFailedFuture(HBONEError("cannot make a socket pair for the inner connection: errno \(errno)"))
        }
        let settings = pool.settings
        let ready = loop.makePromise(of: Void.self)
        let connection = HBONEClientHandler(ready: ready, maxStreams: 1, idleRelease: settings.idleRelease,
                                            bounds: settings.bounds, singleUse: true)
        let tls = TLSHandler(role: .client(context: outer.context, expected: inner.expected), signer: settings.signer,
                             bounds: settings.bounds, reporter: settings.reporter)
        // Each channel owns its descriptor from here, failed or not.
        let innerMade = ClientBootstrap(group: loop)
            .channelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .channelInitializer { channel in channel.pipeline.addHandlers([tls, connection]) }
            .withConnectedSocket(pair[0])
        let outerMade = ClientBootstrap(group: loop)
            .channelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .channelOption(ChannelOptions.autoRead, value: false)
            .withConnectedSocket(pair[1])
        let both = innerMade.and(outerMade)
        both.whenFailure { _ in
            // One end may have started: it is closed (with autoRead off it would never see EOF).
            innerMade.whenSuccess { $0.close(promise: nil) }
            outerMade.whenSuccess { $0.close(promise: nil) }
        }
        return both.flatMap { innerChannel, outerEnd in
            var outerStage: Stage?
            var innerStream: HTTP2Connection.Stream?
            return attempt(outer, pool: pool, client: client, headers: headers, record: nil, left: attempts).flatMap { stage in
                guard let stream = stage.stream else { return loop.makeFailedFuture(HBONEError("no stream to the gateway")) }
                outerStage = stage
                do {
                    try stage.connection.attach(outerEnd, to: stream)
                    _ = outerEnd.setOption(ChannelOptions.autoRead, value: true)
                } catch {
                    return loop.makeFailedFuture(error)
                }
                return ready.futureResult.flatMap {
                    connection.reserve()
                    let (stream, answered) = connection.open(on: loop, authority: inner.authority,
                                                             headers: headers + [("x-forwarded-network", inner.network)], record: record)
                    innerStream = stream
                    return answered.map { Stage(connection: connection, stream: stream) }
                }
            }.flatMapError { error in
                // The caller finishes the record with this reason (not the inner connection's
                // close), and the outer stream is reset: its slot on the pooled connection to
                // the gateway is free at once, whatever the gateway does.
                innerStream?.record = nil
                if let outerStage, let stream = outerStage.stream { outerStage.connection.cancel(stream) }
                innerChannel.close(promise: nil)
                outerEnd.close(promise: nil)
                return loop.makeFailedFuture(error)
            }
        }
    }

    private static func attempt(_ tunnel: OutboundRouting.Tunnel, pool: HBONEPool, client: Channel, headers: [(String, String)],
                                record: ConnectionRecord?, left: Int) -> EventLoopFuture<Stage> {
        pool.connection(for: tunnel).flatMap { connection in
            let (stream, answered) = connection.open(on: client.eventLoop, authority: tunnel.authority, headers: headers,
                                                     record: record)
            return answered.map { Stage(connection: connection, stream: stream) }
        }.flatMapError { error in
            guard let refused = error as? HBONEError, refused.isRetryable, left > 1, client.isActive else {
                return client.eventLoop.makeFailedFuture(error)
            }
            Log.debug("outbound: CONNECT \(tunnel.authority) refused unprocessed; sending it again",
                      [("attempts_left", "\(left - 1)")])
            // On the next turn of the loop: the refusal is reported from inside nghttp2, which
            // must not be entered again from its own callback.
            return client.eventLoop.flatSubmit {
                attempt(tunnel, pool: pool, client: client, headers: headers, record: record, left: left - 1)
            }
        }
    }

    /// A tunnel answered 200, waiting for its client's bytes.
    struct Stage {
        let connection: HBONEClientHandler
        let stream: HTTP2Connection.Stream?

        /// Bridges `client` to the stream; `early` bytes go first.
        func attach(_ client: Channel, early: [ByteBuffer], inputClosed: Bool, idleMilliseconds: Int64,
                    reporter: BoundReporter, listener: String) -> EventLoopFuture<Void> {
            guard let stream else { return client.eventLoop.makeFailedFuture(HBONEError("no stream")) }
            let idle = TimeAmount.milliseconds(idleMilliseconds)
            let peer = ListenerFactory.peer(client)
            let onIdle: @Sendable () -> Void = {
                reporter.reached(.idleTimeout, listener: listener, peer: peer, detail: "no bytes either way for \(idleMilliseconds) ms")
            }
            do {
                // On the client's loop (the tunnel future completes there): added at once.
                try client.pipeline.syncOperations.addHandlers([IdleWatch(timeout: idle, onIdle: onIdle)])
                try connection.attach(client, to: stream)
            } catch {
                connection.cancel(stream)
                return client.eventLoop.makeFailedFuture(error)
            }
            for buffer in early { connection.tcpRead(buffer, stream: stream) }
            if inputClosed { connection.tcpEnded(stream: stream) }
            return client.eventLoop.makeSucceededVoidFuture()
        }
    }

    /// `baggage` (the source workload), `forwarded` and a fresh `traceparent` (§5.3).
    static func requestHeaders(_ tunnel: OutboundRouting.Tunnel, client: Channel) -> [(String, String)] {
        var headers: [(String, String)] = []
        if let source = tunnel.target.source {
            let baggage = HBONEServerHandler.baggage(for: source)
            if !baggage.isEmpty { headers.append(("baggage", baggage)) }
        }
        var forwarded = "for=\"\(client.remoteAddress.map(ListenerFactory.address) ?? "unknown")\""
        if let service = tunnel.target.service { forwarded += ";host=\(service.hostname)" }
        headers.append(("forwarded", forwarded))
        headers.append(("traceparent", traceparent()))
        return headers
    }

    /// `00-<32 hex trace id>-<16 hex span id>-00`, random per connection: the 24 random bytes
    /// come from one getrandom call (SystemRandomNumberGenerator makes one per draw), since this
    /// runs for every new connection.
    static func traceparent() -> String {
        var random = [UInt8](repeating: 0, count: 24)
        let filled = random.withUnsafeMutableBytes { getrandom($0.baseAddress, $0.count, 0) }
        if filled != random.count {
            var generator = SystemRandomNumberGenerator()
            for index in random.indices { random[index] = generator.next() }
        }
        let digits = Array("0123456789abcdef".utf8)
        var text: [UInt8] = Array("00-".utf8)
        text.reserveCapacity(55)
        for (index, byte) in random.enumerated() {
            if index == 16 { text.append(UInt8(ascii: "-")) }
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0xf)])
        }
        text += Array("-00".utf8)
        return String(decoding: text, as: UTF8.self)
    }
}
