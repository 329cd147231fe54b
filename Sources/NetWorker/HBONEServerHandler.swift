internal import CNghttp2
import Mesh
import NIOCore
import NIOPosix
import OpenSSLSupport
import Shared

/// The HTTP/2 side of inbound HBONE (15008, ISTIO_COMPAT §5.2, §5.6, §10), on nghttp2 above the
/// TLS handler: each CONNECT stream is validated, authorized with the client's SPIFFE identity,
/// connected to the application and then carries its bytes both ways.
///
/// Flow control is tied to progress both ways, so no stream buffers without bound: bytes from
/// the client are acknowledged to HTTP/2 (WINDOW_UPDATE) only once the application's socket took
/// them (automatic window updates are off), and the application is read only while less than
/// `maxPendingToClient` bytes wait for the client's window.
///
/// Not yet: hostname authorities (services by hostname answer 503), `baggage` on the 200, the
/// PROXY protocol towards applications with an application tunnel, PING keepalive and GOAWAY on
/// drain (data-plane issue).
final class HBONEServerHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// One CONNECT stream.
    final class Stream {
        let id: Int32
        var method = ""
        var authority = ""
        var headerBytes = 0
        var upstream: Channel?
        /// From the application, waiting for the client's flow-control window.
        var toClient: ByteBuffer?
        var upstreamEnded = false
        /// The client ended its side before the application was connected.
        var clientEnded = false
        /// Bytes from the client before the application was connected (bounded by the window).
        var early: [ByteBuffer] = []
        var isDeferred = false
        /// Answered with an error: what the client still sends is dropped.
        var isRefused = false
        var target = ""
        /// Metrics and the access-log line, once the stream is authorized (or refused by policy).
        var record: ConnectionRecord?
        /// The workload the stream is for, once authorized (its baggage goes on the 200).
        var destination: Workload?

        init(id: Int32) { self.id = id }
    }

    static let listener = "inbound"
    /// Upstream bytes held per stream before the application is no longer read.
    static let maxPendingToClient = 256 * 1024
    static let maxHeaderListBytes = 64 * 1024
    static let streamWindow: UInt32 = 4 * 1024 * 1024
    static let connectionWindow: UInt32 = 16 * 1024 * 1024

    private let authorization: InboundAuthorization
    private let metrics: TrafficMetrics
    private let proxyPorts: Set<UInt16>
    private var session: OpaquePointer?
    private var context: ChannelHandlerContext?
    private var streams: [Int32: Stream] = [:]
    private var peer: SpiffeId?
    /// Inside nghttp2_session_mem_recv: nghttp2 forbids sending from its callbacks, so a flush
    /// asked for then is done once receiving returns.
    private var isReceiving = false
    private var wantsFlush = false

    init(authorization: InboundAuthorization, metrics: TrafficMetrics, proxyPorts: Set<UInt16>) {
        self.authorization = authorization
        self.metrics = metrics
        self.proxyPorts = proxyPorts
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        for stream in streams.values { stream.upstream?.close(promise: nil) }
        streams.removeAll()
        if let session { nghttp2_session_del(session) }
        session = nil
        self.context = nil
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let established = event as? TLSEstablished {
            peer = established.peer
            startSession(context: context)
            return
        }
        if let event = event as? ChannelEvent, case .inputClosed = event {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let session else { return }
        let buffer = unwrapInboundIn(data)
        isReceiving = true
        let consumed = buffer.withUnsafeReadableBytes { raw -> Int in
            guard let base = raw.baseAddress?.assumingMemoryBound(to: UInt8.self), raw.count > 0 else { return 0 }
            return nghttp2_session_mem_recv(session, base, raw.count)
        }
        isReceiving = false
        if wantsFlush { flushSession() }
        guard consumed >= 0 else {
            Log.info("inbound: HTTP/2 protocol error from the client: \(String(cString: nghttp2_strerror(Int32(consumed))))",
                     [("peer", ListenerFactory.peer(context.channel))])
            flushSession()
            context.close(promise: nil)
            return
        }
        flushSession()
    }

    func channelInactive(context: ChannelHandlerContext) {
        for stream in streams.values {
            stream.upstream?.close(promise: nil)
            stream.record?.finish(error: "connection closed with the stream open", responseFlags: "CONNECT")
        }
        context.fireChannelInactive()
    }

    /// Nothing is read, from the client or any application, while the client's socket cannot take
    /// more: what the peer does not read is bounded by NIO's high watermark, not by its patience
    /// (a client that sends PINGs, or asks for a large answer, and never reads).
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        _ = context.channel.setOption(ChannelOptions.autoRead, value: writable)
        for stream in streams.values where (stream.toClient?.readableBytes ?? 0) < Self.maxPendingToClient {
            _ = stream.upstream?.setOption(ChannelOptions.autoRead, value: writable)
        }
        if writable { context.read() }
        context.fireChannelWritabilityChanged()
    }

    // MARK: - Session

    private func startSession(context: ChannelHandlerContext) {
        guard let callbacks = Self.makeCallbacks() else { context.close(promise: nil); return }
        defer { nghttp2_session_callbacks_del(callbacks) }
        var option: OpaquePointer?
        guard nghttp2_option_new(&option) == 0, let option else { context.close(promise: nil); return }
        defer { nghttp2_option_del(option) }
        // Window updates only once the application took the bytes (backpressure).
        nghttp2_option_set_no_auto_window_update(option, 1)
        nghttp2_option_set_max_send_header_block_length(option, 16 * 1024)
        var created: OpaquePointer?
        let user = Unmanaged.passUnretained(self).toOpaque()
        guard nghttp2_session_server_new2(&created, callbacks, user, option) == 0, let created else {
            context.close(promise: nil)
            return
        }
        session = created
        var settings = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), value: 200),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: Self.streamWindow),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: UInt32(Self.maxHeaderListBytes)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0),
        ]
        _ = nghttp2_submit_settings(created, UInt8(NGHTTP2_FLAG_NONE.rawValue), &settings, settings.count)
        // The connection window, as upstream's HTTP2_CONNECTION_WINDOW_SIZE default (§5.2).
        _ = nghttp2_session_set_local_window_size(created, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, Int32(Self.connectionWindow))
        flushSession()
    }

    /// Writes whatever nghttp2 has queued (frames, data) through the TLS handler.
    func flushSession() {
        guard !isReceiving else {
            wantsFlush = true
            return
        }
        wantsFlush = false
        guard let session, let context else { return }
        var wrote = false
        while true {
            var data: UnsafePointer<UInt8>?
            let length = nghttp2_session_mem_send(session, &data)
            guard length > 0, let data else { break }
            context.write(wrapOutboundOut(context.channel.allocator.buffer(bytes: UnsafeRawBufferPointer(start: data, count: length))),
                          promise: nil)
            wrote = true
        }
        if wrote { context.flush() }
        if nghttp2_session_want_read(session) == 0 && nghttp2_session_want_write(session) == 0 {
            context.close(promise: nil)
        }
    }

    private static func makeCallbacks() -> OpaquePointer? {
        var callbacks: OpaquePointer?
        guard nghttp2_session_callbacks_new(&callbacks) == 0, let callbacks else { return nil }
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks) { _, frame, user in
            guard let frame, let user else { return 0 }
            let handler = Unmanaged<HBONEServerHandler>.fromOpaque(user).takeUnretainedValue()
            if frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue), frame.pointee.headers.cat == NGHTTP2_HCAT_REQUEST {
                handler.streams[frame.pointee.hd.stream_id] = Stream(id: frame.pointee.hd.stream_id)
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_header_callback(callbacks) { _, frame, name, nameLength, value, valueLength, _, user in
            guard let frame, let name, let value, let user else { return 0 }
            let handler = Unmanaged<HBONEServerHandler>.fromOpaque(user).takeUnretainedValue()
            return handler.header(stream: frame.pointee.hd.stream_id, name: UnsafeBufferPointer(start: name, count: nameLength),
                                  value: UnsafeBufferPointer(start: value, count: valueLength))
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks) { _, frame, user in
            guard let frame, let user else { return 0 }
            let handler = Unmanaged<HBONEServerHandler>.fromOpaque(user).takeUnretainedValue()
            handler.frameReceived(type: frame.pointee.hd.type, flags: frame.pointee.hd.flags, stream: frame.pointee.hd.stream_id)
            return 0
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks) { _, _, streamId, data, length, user in
            guard let data, let user else { return 0 }
            let handler = Unmanaged<HBONEServerHandler>.fromOpaque(user).takeUnretainedValue()
            handler.dataReceived(stream: streamId, UnsafeRawBufferPointer(start: data, count: length))
            return 0
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks) { _, streamId, _, user in
            guard let user else { return 0 }
            let handler = Unmanaged<HBONEServerHandler>.fromOpaque(user).takeUnretainedValue()
            let stream = handler.streams.removeValue(forKey: streamId)
            stream?.upstream?.close(promise: nil)
            stream?.record?.finish()
            return 0
        }
        return callbacks
    }

    // MARK: - Requests

    private func header(stream id: Int32, name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) -> Int32 {
        guard let stream = streams[id] else { return 0 }
        stream.headerBytes += name.count + value.count + 32
        guard stream.headerBytes <= Self.maxHeaderListBytes else { return Int32(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue) }
        switch String(decoding: name, as: UTF8.self) {
        case ":method": stream.method = String(decoding: value, as: UTF8.self)
        case ":authority": stream.authority = String(decoding: value, as: UTF8.self)
        default: break
        }
        return 0
    }

    private func frameReceived(type: UInt8, flags: UInt8, stream id: Int32) {
        guard let stream = streams[id] else { return }
        let isHeaders = type == UInt8(NGHTTP2_HEADERS.rawValue)
        if isHeaders && flags & UInt8(NGHTTP2_FLAG_END_HEADERS.rawValue) != 0 && stream.target.isEmpty {
            handleRequest(stream)
        }
        if flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0 && (isHeaders || type == UInt8(NGHTTP2_DATA.rawValue)) {
            // The client finished sending: pass the half-close on.
            if let upstream = stream.upstream { upstream.close(mode: .output, promise: nil) } else { stream.clientEnded = true }
        }
    }

    private func dataReceived(stream id: Int32, _ bytes: UnsafeRawBufferPointer) {
        guard let stream = streams[id], let context else { return }
        let buffer = context.channel.allocator.buffer(bytes: bytes)
        stream.record?.received += UInt64(bytes.count)
        guard !stream.isRefused else {
            // Answered already: its bytes are dropped, and the window given back at once.
            if let session { _ = nghttp2_session_consume(session, id, bytes.count) }
            return
        }
        guard let upstream = stream.upstream else {
            stream.early.append(buffer)  // bounded by the stream window we advertised
            return
        }
        forward(buffer, of: stream, to: upstream)
    }

    /// Writes client bytes to the application and opens the window by as much once it took them.
    private func forward(_ buffer: ByteBuffer, of stream: Stream, to upstream: Channel) {
        let count = buffer.readableBytes
        let id = stream.id
        // The window is given back whatever the write's outcome: a failed write must not shrink
        // the connection's window for good (the stream ends anyway).
        upstream.writeAndFlush(buffer).whenComplete { [weak self] _ in
            guard let self, let session = self.session else { return }
            _ = nghttp2_session_consume(session, id, count)
            self.flushSession()
        }
    }

    /// Validates the CONNECT (§10), authorizes it (§12) and connects to the application.
    private func handleRequest(_ stream: Stream) {
        guard let context else { return }
        stream.target = stream.authority.isEmpty ? "?" : stream.authority
        guard stream.method == "CONNECT" else { return respond(stream, status: 400, "method \(stream.method) is not CONNECT") }
        let host: String, port: UInt16
        switch ConnectAuthority.parse(stream.authority) {
        case .address(let address, let number)?:
            (host, port) = (address, number)
        case .hostname?:
            return respond(stream, status: 503, "hostname authorities (services by name) are not supported yet")
        case nil:
            return respond(stream, status: 400, "authority \(stream.authority) is neither IP:port nor host:port")
        }
        guard let ip = IPAddress(host) else { return respond(stream, status: 400, "authority \(stream.authority) is not an address") }
        // The authority must name the address this connection arrived on (§10 step 3).
        guard let local = context.channel.localAddress?.ipAddress.flatMap(IPAddress.init), local == ip else {
            return respond(stream, status: 400, "ip mismatch: \(host) is not the address this connection arrived on")
        }
        guard !proxyPorts.contains(port) else { return respond(stream, status: 503, "port \(port) is one of this proxy's") }
        let source = context.channel.remoteAddress?.ipAddress
        switch authorization.check(source: source, destination: host, port: port, identity: peer?.description) {
        case .denied(let reason, _, nil):
            return respond(stream, status: 503, reason)
        case .denied(let reason, let policy, let workload?):
            stream.record = record(for: stream, source: source, destination: workload, host: host, port: port)
            stream.record?.finish(error: "denied by \(policy ?? "policy"): \(reason)", responseFlags: "DENY")
            return respond(stream, status: 401, "denied by \(policy ?? "policy"): \(reason)")
        case .allowed(let workload):
            stream.destination = workload
            stream.record = record(for: stream, source: source, destination: workload, host: host, port: port)
            connectUpstream(stream, host: host, port: port, source: source ?? "?")
        }
    }

    /// The stream's metrics labels and access-log fields (the TLS peer as source principal).
    private func record(for stream: Stream, source: String?, destination: Workload, host: String, port: UInt16) -> ConnectionRecord {
        authorization.record(metrics: metrics, source: source, sourceAddress: context?.channel.remoteAddress.map(ListenerFactory.address) ?? "?",
                             peer: peer?.description, destination: destination,
                             destinationAddress: context?.channel.localAddress.map(ListenerFactory.address) ?? "?",
                             hboneAddress: stream.authority)
    }

    private func connectUpstream(_ stream: Stream, host: String, port: UInt16, source: String) {
        guard let context else { return }
        let handler = self
        Upstream.connect(on: context.eventLoop, host: host, port: port).whenComplete { result in
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
                handler.authorization.live?.register(.init(channel: upstream, listener: Self.listener, source: source,
                                                           destination: host, port: port, identity: handler.peer?.description))
                if case .denied(let reason, let policy, _) = handler.authorization.check(
                    source: source, destination: host, port: port, identity: handler.peer?.description) {
                    upstream.close(promise: nil)
                    stream.record?.finish(error: "denied by \(policy ?? "policy"): \(reason)", responseFlags: "DENY")
                    handler.respond(stream, status: 401, "denied by \(policy ?? "policy"): \(reason)")
                    return
                }
                stream.upstream = upstream
                upstream.pipeline.addHandler(HBONEUpstreamHandler(server: handler, stream: stream)).whenFailure { _ in
                    upstream.close(promise: nil)
                }
                handler.respondOK(stream)
                for buffer in stream.early { handler.forward(buffer, of: stream, to: upstream) }
                stream.early.removeAll()
                if stream.clientEnded { upstream.close(mode: .output, promise: nil) }
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
        let baggage = stream.destination.map(Self.baggage) ?? ""
        submit(session, stream: stream.id, status: 200, withBody: true, extra: baggage.isEmpty ? [] : [("baggage", baggage)])
        flushSession()
    }

    private func submit(_ session: OpaquePointer, stream id: Int32, status: Int, withBody: Bool, extra: [(String, String)] = []) {
        Self.withHeaders([(":status", String(status))] + extra) { headers, count in
            guard withBody else {
                _ = nghttp2_submit_response(session, id, headers, count, nil)
                return
            }
            var provider = nghttp2_data_provider()
            provider.read_callback = { _, streamId, buffer, length, flags, _, user in
                guard let user, let buffer, let flags else { return Int(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
                let handler = Unmanaged<HBONEServerHandler>.fromOpaque(user).takeUnretainedValue()
                return handler.read(stream: streamId, into: buffer, length: length, flags: flags)
            }
            _ = nghttp2_submit_response(session, id, headers, count, &provider)
        }
    }

    /// Header name/value pairs as nghttp2_nv for the length of `body` (nghttp2 copies them when a
    /// response is submitted).
    private static func withHeaders(_ headers: [(String, String)], _ body: (UnsafeMutablePointer<nghttp2_nv>, Int) -> Void) {
        let strings = headers.flatMap { [Array($0.0.utf8), Array($0.1.utf8)] }
        let storage = strings.map { bytes -> UnsafeMutablePointer<UInt8> in
            let pointer = UnsafeMutablePointer<UInt8>.allocate(capacity: max(1, bytes.count))
            pointer.initialize(from: bytes, count: bytes.count)
            return pointer
        }
        defer { storage.forEach { $0.deallocate() } }
        let list = UnsafeMutablePointer<nghttp2_nv>.allocate(capacity: headers.count)
        defer { list.deallocate() }
        for index in 0..<headers.count {
            list[index] = nghttp2_nv(name: storage[2 * index], value: storage[2 * index + 1], namelen: strings[2 * index].count,
                                     valuelen: strings[2 * index + 1].count, flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue))
        }
        body(list, headers.count)
    }

    /// The `baggage` of the 200 (ISTIO_COMPAT §5.3, §5.6): the destination workload's metadata,
    /// W3C-baggage style, empty items left out, comma-joined without spaces.
    static func baggage(for workload: Workload) -> String {
        let items: [(String, String)] = [
            ("k8s.cluster.name", workload.clusterId), ("k8s.namespace.name", workload.namespace),
            ("k8s.\(workload.workloadType.rawValue).name", workload.workloadName), ("service.name", workload.canonicalName),
            ("service.version", workload.canonicalRevision), ("cloud.region", workload.locality?.region ?? ""),
            ("cloud.availability_zone", workload.locality?.zone ?? ""),
        ]
        return items.filter { !$0.1.isEmpty }.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
    }

    /// nghttp2 asks for up to `length` bytes of the stream's response body.
    private func read(stream id: Int32, into buffer: UnsafeMutablePointer<UInt8>, length: Int,
                      flags: UnsafeMutablePointer<UInt32>) -> Int {
        guard let stream = streams[id] else { return Int(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
        if var pending = stream.toClient, pending.readableBytes > 0 {
            let count = min(length, pending.readableBytes)
            pending.withUnsafeReadableBytes { raw in
                if let base = raw.baseAddress { buffer.update(from: base.assumingMemoryBound(to: UInt8.self), count: count) }
            }
            pending.moveReaderIndex(forwardBy: count)
            stream.toClient = pending
            if pending.readableBytes < Self.maxPendingToClient / 2 { _ = stream.upstream?.setOption(ChannelOptions.autoRead, value: true) }
            return count
        }
        if stream.upstreamEnded {
            flags.pointee |= UInt32(NGHTTP2_DATA_FLAG_EOF.rawValue)
            return 0
        }
        stream.isDeferred = true
        return Int(NGHTTP2_ERR_DEFERRED.rawValue)
    }

    /// Bytes from the application for `stream`: queued for the client, and the application is not
    /// read further while too much waits.
    func upstreamRead(_ buffer: ByteBuffer, stream: Stream) {
        stream.record?.sent += UInt64(buffer.readableBytes)
        if var pending = stream.toClient {
            pending.discardReadBytes()
            var incoming = buffer
            pending.writeBuffer(&incoming)
            stream.toClient = pending
        } else {
            stream.toClient = buffer
        }
        if (stream.toClient?.readableBytes ?? 0) >= Self.maxPendingToClient {
            _ = stream.upstream?.setOption(ChannelOptions.autoRead, value: false)
        }
        resume(stream)
    }

    /// The application finished sending (EOF or close): end the stream once its bytes are out.
    func upstreamEnded(stream: Stream) {
        stream.upstreamEnded = true
        resume(stream)
    }

    private func resume(_ stream: Stream) {
        guard let session, streams[stream.id] === stream else { return }
        if stream.isDeferred {
            stream.isDeferred = false
            _ = nghttp2_session_resume_data(session, stream.id)
        }
        flushSession()
    }
}

/// The application's side of one HBONE stream: its bytes go to the stream, its end ends it.
final class HBONEUpstreamHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let server: HBONEServerHandler
    private let stream: HBONEServerHandler.Stream

    init(server: HBONEServerHandler, stream: HBONEServerHandler.Stream) {
        self.server = server
        self.stream = stream
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        server.upstreamRead(unwrapInboundIn(data), stream: stream)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event { server.upstreamEnded(stream: stream) }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        server.upstreamEnded(stream: stream)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
