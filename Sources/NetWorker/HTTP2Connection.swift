internal import CNghttp2
import NIOCore
import NIOPosix
import Shared

/// The HTTP/2 codec both sides of HBONE share (ISTIO_COMPAT §5.2), on nghttp2 above the TLS
/// handler: the session, its frames to and from the socket, and the bridge between each CONNECT
/// stream and the TCP connection it carries (the application on 15008, the captured client on
/// the outbound side). The server (`HBONEServerHandler`) and the client (`HBONEClientHandler`)
/// add how a stream begins: answering a request, or sending one and reading the answer.
///
/// Flow control is tied to progress both ways, so no stream buffers without bound: bytes from
/// the peer are acknowledged to HTTP/2 (WINDOW_UPDATE) only once the stream's TCP socket took
/// them (automatic window updates are off), and the TCP side is read only while less than
/// `maxPendingToPeer` bytes wait for the peer's window. Nothing is read from the peer, or from any
/// stream's TCP side, while the peer's socket cannot take more.
class HTTP2Connection: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// One CONNECT stream and the TCP connection it carries.
    final class Stream {
        var id: Int32
        var method = ""
        var authority = ""
        var status = 0
        /// A CONNECT's `baggage` and `x-forwarded-network` (§5.3, §10: the source's metadata when
        /// it came through a network gateway).
        var baggage: String?
        var forwardedNetwork: String?
        var headerBytes = 0
        /// The first header block (the request, or the answer) was handled.
        var headersDone = false
        /// The TCP side, once it is attached (connected application, or answered client).
        var tcp: Channel?
        /// From the TCP side, waiting for the peer's flow-control window (kept as received: no
        /// merging copy), and how many bytes that is.
        var toPeer: [ByteBuffer] = []
        var toPeerBytes = 0
        /// Its TCP side is not read until `toPeer` is down to half the bound.
        var isTCPPaused = false
        /// The TCP side finished sending: END_STREAM once `toPeer` is out.
        var tcpEnded = false
        /// The peer ended its side before the TCP side was attached.
        var peerEnded = false
        /// Bytes from the peer before the TCP side was attached (bounded by the stream window).
        var early: [ByteBuffer] = []
        var isDeferred = false
        /// May send DATA: the server once it answered 200, the client once it read the 200.
        var isOpen = false
        /// Answered with an error (server) or not answered 200 (client): its bytes are dropped.
        var isRefused = false
        var target = ""
        /// Metrics and the access-log line.
        var record: ConnectionRecord?
        /// The client side's wait for the answer: 200, or the reason it failed.
        var answered: EventLoopPromise<Void>?

        init(id: Int32) { self.id = id }
    }

    /// TCP-side bytes held per stream before that side is no longer read.
    static let maxPendingToPeer = 256 * 1024
    /// An HBONE connection carries many streams: it stops reading (everything) only when this
    /// much waits for its socket, not at NIO's 64 KiB default, which a few frames cross and
    /// which made reading flap on and off under load.
    static let waterMark = ChannelOptions.Types.WriteBufferWaterMark(low: 512 * 1024, high: 2 * 1024 * 1024)
    /// The largest DATA payload sent: a frame then fits one full TLS record.
    static let dataFramePayload = 16 * 1024 - 9

    var session: OpaquePointer?
    var context: ChannelHandlerContext?
    var streams: [Int32: Stream] = [:]
    /// Inside nghttp2_session_mem_recv: nghttp2 forbids sending from its callbacks, so a flush
    /// asked for then is done once receiving returns.
    private var isReceiving = false
    private var wantsFlush = false
    private var flushScheduled = false
    /// nghttp2's output grouped into TLS records (small frames share one).
    private var records = RecordBatcher()
    /// TCP sides written to while receiving: flushed once, after the whole read is handled.
    private var toFlush: [ObjectIdentifier: Channel] = [:]
    /// The TLS handler below, once established: frames are sealed straight from nghttp2's output.
    var tls: TLSHandler?
    /// The buffer being received, so DATA payloads (which nghttp2 points into it) are sliced
    /// rather than copied.
    private var input: (base: UnsafeRawPointer, count: Int, buffer: ByteBuffer)?
    /// "inbound" or "outbound", for logs.
    let listener: String
    /// PING every `keepalive`; a PING unanswered for two intervals closes the connection (§5.2).
    private let keepalive: TimeAmount
    private var keepaliveTask: RepeatedTask?
    private var pingSentAt: NIODeadline?
    /// GOAWAY was sent (drain): the connection closes once its last stream ends.
    private(set) var isGoingAway = false
    /// Why the connection is being closed, when that decides its streams' records (a revoked peer).
    private var closing: (error: String, flags: String)?
    private var closeWhenFlushed = false
    private var isClosing = false

    /// The receive windows and frame size advertised (§5.2, HTTP2_*).
    private let streamWindow: UInt32
    private let connectionWindow: UInt32
    private let frameSize: UInt32

    init(listener: String, bounds: Bounds) {
        self.listener = listener
        self.keepalive = .milliseconds(bounds.keepaliveMilliseconds)
        streamWindow = bounds.http2StreamWindow
        connectionWindow = bounds.http2ConnectionWindow
        frameSize = bounds.http2FrameSize
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        keepaliveTask?.cancel()
        keepaliveTask = nil
        for stream in streams.values { stream.tcp?.close(promise: nil) }
        streams.removeAll()
        tls = nil
        if let session { nghttp2_session_del(session) }
        session = nil
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let session else { return }
        let buffer = unwrapInboundIn(data)
        isReceiving = true
        let consumed = buffer.withUnsafeReadableBytes { raw -> Int in
            guard let base = raw.baseAddress?.assumingMemoryBound(to: UInt8.self), raw.count > 0 else { return 0 }
            input = (UnsafeRawPointer(base), raw.count, buffer)
            defer { input = nil }
            return nghttp2_session_mem_recv(session, base, raw.count)
        }
        isReceiving = false
        if wantsFlush { flushSession() }
        guard consumed >= 0 else {
            Log.info("\(listener): HTTP/2 protocol error from the peer: \(String(cString: nghttp2_strerror(Int32(consumed))))",
                     [("peer", ListenerFactory.peer(context.channel))])
            flushNow()
            context.close(promise: nil)
            return
        }
        flushSession()
    }

    /// The TCP sides written to during this burst of reads are flushed once, now.
    func channelReadComplete(context: ChannelHandlerContext) {
        flushTCPSides()
        context.fireChannelReadComplete()
    }

    private func flushTCPSides() {
        guard !toFlush.isEmpty else { return }
        for tcp in toFlush.values { tcp.flush() }
        toFlush.removeAll(keepingCapacity: true)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event {
            context.close(promise: nil)
            return
        }
        if let established = event as? TLSEstablished { tls = established.tls }
        if event is DrainRequested {
            goAway(context: context)
            return
        }
        if let revoked = event as? PeerCertificateRevoked {
            // Abrupt, as upstream: no stream of a revoked peer finishes.
            closing = (error: "peer certificate revoked (\(revoked.reason))", flags: "CERT_REVOKED")
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Graceful GOAWAY (§20): no new stream is accepted, the open ones finish, then the
    /// connection closes (the drain deadline closes what is left).
    func goAway(context: ChannelHandlerContext) {
        guard let session, !isGoingAway else { return }
        isGoingAway = true
        _ = nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nghttp2_session_get_last_proc_stream_id(session),
                                  UInt32(NGHTTP2_NO_ERROR.rawValue), nil, 0)
        flushNow()
        Log.debug("\(listener): GOAWAY sent", [("peer", ListenerFactory.peer(context.channel)), ("streams", "\(streams.count)")])
        if streams.isEmpty { context.close(promise: nil) }
    }

    /// Sends a PING each interval; closes the connection when the previous one went unanswered
    /// for two intervals.
    private func startKeepalive(context: ChannelHandlerContext) {
        guard keepalive.nanoseconds > 0 else { return }
        keepaliveTask = context.eventLoop.scheduleRepeatedTask(initialDelay: keepalive, delay: keepalive) { [weak self] _ in
            guard let self, let session = self.session, let context = self.context else { return }
            let now = NIODeadline.now()
            if let sent = self.pingSentAt {
                if now - sent >= self.keepalive * 2 {
                    Log.info("\(self.listener): HBONE peer did not answer a PING; closing",
                             [("peer", ListenerFactory.peer(context.channel)), ("waited_ms", "\((now - sent).nanoseconds / 1_000_000)")])
                    context.close(promise: nil)
                }
                return
            }
            self.pingSentAt = now
            _ = nghttp2_submit_ping(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nil)
            self.flushSession()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        flushTCPSides()
        keepaliveTask?.cancel()
        keepaliveTask = nil
        for stream in streams.values {
            // Cut, not ended: the application must not take a truncated stream for a whole one.
            if let tcp = stream.tcp { Self.reset(tcp) }
            stream.answered?.fail(HBONEError("the HBONE connection closed before the answer"))
            stream.answered = nil
            stream.record?.finish(error: closing?.error ?? "connection closed with the stream open", responseFlags: closing?.flags ?? "CONNECT")
        }
        context.fireChannelInactive()
    }

    /// While the peer's socket cannot take more, no frame is produced: nghttp2 keeps them (DATA
    /// stays in the streams' queues, which pause their TCP sides at their bound), and the peer is
    /// still read, so its WINDOW_UPDATEs and PING ACKs keep arriving. (Stopping reading instead
    /// deadlocked a connection carrying bulk data both ways: each side waited for the other to
    /// read; and it left streams attached meanwhile unpaused.) Writable again: the frames go out.
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { flushNow() }
        context.fireChannelWritabilityChanged()
    }

    // MARK: - Session

    /// Makes the session (`server` or client) with the settings of §5.2 and sends them.
    /// False when the session could not be made (the connection is then closing).
    @discardableResult
    func startSession(context: ChannelHandlerContext, server: Bool, maxHeaderListBytes: Int, maxConcurrentStreams: UInt32) -> Bool {
        guard let callbacks = makeCallbacks() else { context.close(promise: nil); return false }
        defer { nghttp2_session_callbacks_del(callbacks) }
        var option: OpaquePointer?
        guard nghttp2_option_new(&option) == 0, let option else { context.close(promise: nil); return false }
        defer { nghttp2_option_del(option) }
        // Window updates only once the TCP side took the bytes (backpressure).
        nghttp2_option_set_no_auto_window_update(option, 1)
        nghttp2_option_set_max_send_header_block_length(option, 16 * 1024)
        var created: OpaquePointer?
        let user = Unmanaged.passUnretained(self).toOpaque()
        let rc = server ? nghttp2_session_server_new2(&created, callbacks, user, option)
                        : nghttp2_session_client_new2(&created, callbacks, user, option)
        guard rc == 0, let created else {
            context.close(promise: nil)
            return false
        }
        session = created
        var settings = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), value: maxConcurrentStreams),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: streamWindow),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_FRAME_SIZE.rawValue), value: frameSize),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: UInt32(maxHeaderListBytes)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0),
        ]
        guard nghttp2_submit_settings(created, UInt8(NGHTTP2_FLAG_NONE.rawValue), &settings, settings.count) == 0 else {
            // Never serve without our settings (the stream limit among them).
            Log.error("\(listener): the HTTP/2 settings were refused by nghttp2; closing")
            context.close(promise: nil)
            return false
        }
        // The connection window (§5.2, HTTP2_CONNECTION_WINDOW_SIZE).
        _ = nghttp2_session_set_local_window_size(created, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, Int32(connectionWindow))
        flushSession()
        startKeepalive(context: context)
        return true
    }

    /// Asks for what nghttp2 has queued to be written at the end of this turn of the event loop
    /// (`flushNow`), once however often it is asked: the frames of every stream that had
    /// something to send in the turn (a connection carries many) leave in one write.
    func flushSession() {
        guard !isReceiving else {
            wantsFlush = true
            return
        }
        guard !flushScheduled, let context else { return }
        flushScheduled = true
        context.eventLoop.execute {
            self.flushScheduled = false
            self.flushNow()
        }
    }

    /// Writes what nghttp2 has queued (frames, data) through the TLS handler, sealed straight
    /// from nghttp2's buffer, in slices of at most 256 KiB, while the socket is writable; the
    /// rest waits for `channelWritabilityChanged`. One flush per slice: one TLS pass and one
    /// syscall for a burst of frames. At once: before a close, which would drop it.
    func flushNow() {
        guard !isReceiving else {
            wantsFlush = true
            return
        }
        wantsFlush = false
        guard let session, let context, let tls else { return }
        while context.channel.isWritable {
            var sealed = 0
            while sealed < 256 * 1024 {
                var data: UnsafePointer<UInt8>?
                let length = nghttp2_session_mem_send(session, &data)
                guard length > 0, let data else { break }
                // Small frames (HEADERS, WINDOW_UPDATE, SETTINGS, a short DATA) are gathered
                // into one TLS record; a full-size DATA frame is a record of its own.
                guard records.add(UnsafeRawBufferPointer(start: data, count: length), seal: { tls.seal($0) }) else {
                    return context.close(promise: nil)
                }
                sealed += length
            }
            guard sealed > 0 else { break }
            guard records.finish(seal: { tls.seal($0) }) else { return context.close(promise: nil) }
            tls.flushSealed()
        }
        if closeWhenFlushed || (nghttp2_session_want_read(session) == 0 && nghttp2_session_want_write(session) == 0) {
            closeWhenWritten(context)
        }
    }

    /// Closes once everything written so far has left (the last stream's final frames, a
    /// GOAWAY): closing at once would fail the writes NIO still holds.
    private func closeWhenWritten(_ context: ChannelHandlerContext) {
        guard !isClosing else { return }
        isClosing = true
        tls?.flushSealed(then: { context.close(promise: nil) }) ?? context.close(promise: nil)
    }

    private func makeCallbacks() -> OpaquePointer? {
        var callbacks: OpaquePointer?
        guard nghttp2_session_callbacks_new(&callbacks) == 0, let callbacks else { return nil }
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks) { _, frame, user in
            guard let frame, let user else { return 0 }
            let handler = Unmanaged<HTTP2Connection>.fromOpaque(user).takeUnretainedValue()
            if frame.pointee.hd.type == UInt8(NGHTTP2_HEADERS.rawValue) {
                handler.beginHeaders(stream: frame.pointee.hd.stream_id, category: frame.pointee.headers.cat)
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_header_callback(callbacks) { _, frame, name, nameLength, value, valueLength, _, user in
            guard let frame, let name, let value, let user else { return 0 }
            let handler = Unmanaged<HTTP2Connection>.fromOpaque(user).takeUnretainedValue()
            return handler.header(stream: frame.pointee.hd.stream_id, name: UnsafeBufferPointer(start: name, count: nameLength),
                                  value: UnsafeBufferPointer(start: value, count: valueLength))
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks) { _, frame, user in
            guard let frame, let user else { return 0 }
            let handler = Unmanaged<HTTP2Connection>.fromOpaque(user).takeUnretainedValue()
            handler.frameReceived(type: frame.pointee.hd.type, flags: frame.pointee.hd.flags, stream: frame.pointee.hd.stream_id)
            return 0
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks) { _, _, streamId, data, length, user in
            guard let data, let user else { return 0 }
            let handler = Unmanaged<HTTP2Connection>.fromOpaque(user).takeUnretainedValue()
            handler.dataReceived(stream: streamId, UnsafeRawBufferPointer(start: data, count: length))
            return 0
        }
        // A DATA frame (9-byte header + payload) fills exactly one TLS record (16 KiB of
        // plaintext): frames of 16 KiB of payload would each cost a second, 9-byte record.
        nghttp2_session_callbacks_set_data_source_read_length_callback(callbacks) { _, _, _, session, stream, maxFrame, _ in
            min(Int(min(session, stream)), Int(maxFrame), HTTP2Connection.dataFramePayload)
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks) { _, streamId, errorCode, user in
            guard let user else { return 0 }
            let handler = Unmanaged<HTTP2Connection>.fromOpaque(user).takeUnretainedValue()
            handler.streamClosed(streamId, errorCode: errorCode)
            return 0
        }
        return callbacks
    }

    // MARK: - What the two sides do differently

    /// A HEADERS frame begins (a request on the server, a response on the client).
    func beginHeaders(stream id: Int32, category: nghttp2_headers_category) {}

    /// A complete header block arrived for `stream`.
    func headersReceived(_ stream: Stream) {}

    /// One header of a block; a block over `maxHeaderListBytes` fails the stream.
    func header(stream id: Int32, name: UnsafeBufferPointer<UInt8>, value: UnsafeBufferPointer<UInt8>) -> Int32 {
        guard let stream = streams[id] else { return 0 }
        stream.headerBytes += name.count + value.count + 32
        guard stream.headerBytes <= maxHeaderListBytes else { return Int32(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue) }
        switch String(decoding: name, as: UTF8.self) {
        case ":method": stream.method = String(decoding: value, as: UTF8.self)
        case ":authority": stream.authority = String(decoding: value, as: UTF8.self)
        case ":status": stream.status = Int(String(decoding: value, as: UTF8.self)) ?? 0
        case "baggage": stream.baggage = String(decoding: value, as: UTF8.self)
        case "x-forwarded-network": stream.forwardedNetwork = String(decoding: value, as: UTF8.self)
        default: break
        }
        return 0
    }

    /// The largest header block accepted (§5.2: 64 KiB on the server, 16 KiB on the client).
    var maxHeaderListBytes: Int { 64 * 1024 }

    /// The stream is gone (answered and done, reset, or the connection ended).
    func streamClosed(_ id: Int32, errorCode: UInt32) {
        guard let stream = streams.removeValue(forKey: id) else { return }
        // Closed once what nghttp2 still has queued (this stream's last frame) is written.
        if isGoingAway && streams.isEmpty { closeWhenFlushed = true }
        if let tcp = stream.tcp {
            // A clean end: what the peer sent is written before the close; a reset is passed on
            // as a TCP reset, so the application does not take a cut stream for a whole one.
            if errorCode == 0 { Self.closeAfterWrites(tcp, mode: .all) } else { Self.reset(tcp) }
        }
        // Bytes that arrived before the TCP side was attached are given back to the connection's
        // window: a long-lived pooled connection must not shrink for good.
        if let session {
            for buffer in stream.early { _ = nghttp2_session_consume(session, id, buffer.readableBytes) }
        }
        stream.early.removeAll()
        if let answered = stream.answered {
            stream.answered = nil
            let refused = errorCode == NGHTTP2_REFUSED_STREAM.rawValue
            // A refused CONNECT may be sent again for the same client: its record is the
            // caller's to finish (with the next try's counts, or with this failure).
            if refused { stream.record = nil }
            answered.fail(HBONEError(errorCode == 0 ? "the stream ended before an answer"
                                     : refused ? "the server refused the stream (REFUSED_STREAM or GOAWAY)"
                                     : "the stream was reset (HTTP/2 error \(errorCode))", retryable: refused))
        }
        stream.record?.finish()
    }

    // MARK: - Frames and data

    private func frameReceived(type: UInt8, flags: UInt8, stream id: Int32) {
        if type == UInt8(NGHTTP2_PING.rawValue) && flags & UInt8(NGHTTP2_FLAG_ACK.rawValue) != 0 {
            pingSentAt = nil  // answered
            return
        }
        guard let stream = streams[id] else { return }
        let isHeaders = type == UInt8(NGHTTP2_HEADERS.rawValue)
        if isHeaders && flags & UInt8(NGHTTP2_FLAG_END_HEADERS.rawValue) != 0 && !stream.headersDone {
            stream.headersDone = true
            headersReceived(stream)
        }
        if flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0 && (isHeaders || type == UInt8(NGHTTP2_DATA.rawValue)) {
            // The peer finished sending: pass the half-close on.
            if let tcp = stream.tcp { Self.closeAfterWrites(tcp, mode: .output) } else { stream.peerEnded = true }
        }
    }

    private func dataReceived(stream id: Int32, _ bytes: UnsafeRawBufferPointer) {
        guard let stream = streams[id], let context else { return }
        let buffer: ByteBuffer
        if let input, let start = bytes.baseAddress, start >= input.base, start + bytes.count <= input.base + input.count,
           let slice = input.buffer.getSlice(at: input.buffer.readerIndex + (start - input.base), length: bytes.count) {
            buffer = slice  // shares the received buffer's storage: no copy
        } else {
            buffer = context.channel.allocator.buffer(bytes: bytes)
        }
        guard !stream.isRefused else {
            // Answered already: its bytes are dropped, and the window given back at once.
            if let session { _ = nghttp2_session_consume(session, id, bytes.count) }
            return
        }
        guard let tcp = stream.tcp else {
            stream.early.append(buffer)  // bounded by the stream window we advertised
            return
        }
        forward(buffer, of: stream, to: tcp)
    }

    /// Writes peer bytes to the TCP side and opens the window by as much once it took them.
    func forward(_ buffer: ByteBuffer, of stream: Stream, to tcp: Channel) {
        let count = buffer.readableBytes
        let id = stream.id
        countFromPeer(stream, count)
        // The window is given back whatever the write's outcome: a failed write must not shrink
        // the connection's window for good (the stream ends anyway).
        let written = tcp.write(buffer)
        if isReceiving { toFlush[ObjectIdentifier(tcp)] = tcp } else { tcp.flush() }
        written.whenComplete { [weak self] result in
            guard let self, let session = self.session else { return }
            _ = nghttp2_session_consume(session, id, count)
            // The TCP side is gone: tell the peer to stop sending on this stream.
            if case .failure = result, let open = self.streams[id], open === stream {
                _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), id, UInt32(NGHTTP2_CANCEL.rawValue))
            }
            self.flushSession()
        }
    }

    /// Closes `tcp` with a TCP reset (SO_LINGER 0).
    static func reset(_ tcp: Channel) {
        if let provider = tcp as? SocketOptionProvider { _ = provider.setSoLinger(linger(l_onoff: 1, l_linger: 0)) }
        tcp.close(promise: nil)
    }

    /// Closes `tcp` (or its output) once every write queued before now is done: an empty write
    /// completes after them, and is flushed with them. Closing at once would drop what is still
    /// queued (a receive writes without flushing until the whole read is handled).
    static func closeAfterWrites(_ tcp: Channel, mode: CloseMode) {
        tcp.writeAndFlush(tcp.allocator.buffer(capacity: 0)).whenComplete { _ in tcp.close(mode: mode, promise: nil) }
    }

    /// Counts bytes that came from the HTTP/2 peer (received on the server, sent... see overrides).
    func countFromPeer(_ stream: Stream, _ count: Int) {}
    /// Counts bytes that came from the TCP side.
    func countFromTCP(_ stream: Stream, _ count: Int) {}

    /// Attaches the TCP side to an open stream: its reads go to the stream, what the peer sent
    /// meanwhile is written to it, and an end the peer already sent is passed on.
    /// Call on the event loop both channels share.
    func attach(_ tcp: Channel, to stream: Stream) throws {
        try tcp.pipeline.syncOperations.addHandler(StreamTCPHandler(connection: self, stream: stream))
        stream.tcp = tcp
        stream.isOpen = true
        for buffer in stream.early { forward(buffer, of: stream, to: tcp) }
        stream.early.removeAll()
        if stream.peerEnded { Self.closeAfterWrites(tcp, mode: .output) }
        resume(stream)
    }

    /// A data provider for `stream`'s body: what its TCP side sends.
    func withDataProvider(_ body: (UnsafeMutablePointer<nghttp2_data_provider>) -> Void) {
        var provider = nghttp2_data_provider()
        provider.read_callback = { _, streamId, buffer, length, flags, _, user in
            guard let user, let buffer, let flags else { return Int(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
            let handler = Unmanaged<HTTP2Connection>.fromOpaque(user).takeUnretainedValue()
            return handler.read(stream: streamId, into: buffer, length: length, flags: flags)
        }
        body(&provider)
    }

    /// Header name/value pairs as nghttp2_nv for the length of `body` (nghttp2 copies them when a
    /// request or response is submitted).
    static func withHeaders(_ headers: [(String, String)], _ body: (UnsafeMutablePointer<nghttp2_nv>, Int) -> Void) {
        let strings = headers.flatMap { [Array($0.0.utf8), Array($0.1.utf8)] }
        let storage = strings.map { bytes -> UnsafeMutablePointer<UInt8> in
            let pointer = UnsafeMutablePointer<UInt8>.allocate(capacity: max(1, bytes.count))
            pointer.initialize(from: bytes, count: bytes.count)
            return pointer
        }
        defer { storage.forEach { $0.deallocate() } }
        let list = UnsafeMutablePointer<nghttp2_nv>.allocate(capacity: max(1, headers.count))
        defer { list.deallocate() }
        for index in 0..<headers.count {
            list[index] = nghttp2_nv(name: storage[2 * index], value: storage[2 * index + 1], namelen: strings[2 * index].count,
                                     valuelen: strings[2 * index + 1].count, flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue))
        }
        body(list, headers.count)
    }

    /// nghttp2 asks for up to `length` bytes of the stream's body.
    private func read(stream id: Int32, into buffer: UnsafeMutablePointer<UInt8>, length: Int,
                      flags: UnsafeMutablePointer<UInt32>) -> Int {
        guard let stream = streams[id] else { return Int(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
        if stream.isOpen, stream.toPeerBytes > 0 {
            var count = 0
            while count < length, !stream.toPeer.isEmpty {
                let take = min(length - count, stream.toPeer[0].readableBytes)
                stream.toPeer[0].withUnsafeReadableBytes { raw in
                    if let base = raw.baseAddress { (buffer + count).update(from: base.assumingMemoryBound(to: UInt8.self), count: take) }
                }
                stream.toPeer[0].moveReaderIndex(forwardBy: take)
                if stream.toPeer[0].readableBytes == 0 { stream.toPeer.removeFirst() }
                count += take
            }
            stream.toPeerBytes -= count
            if stream.isTCPPaused && stream.toPeerBytes < Self.maxPendingToPeer / 2 {
                stream.isTCPPaused = false
                _ = stream.tcp?.setOption(ChannelOptions.autoRead, value: true)
            }
            return count
        }
        if stream.isOpen && stream.tcpEnded {
            flags.pointee |= UInt32(NGHTTP2_DATA_FLAG_EOF.rawValue)
            return 0
        }
        stream.isDeferred = true
        return Int(NGHTTP2_ERR_DEFERRED.rawValue)
    }

    /// Bytes from the TCP side of `stream`: queued for the peer, and that side is not read
    /// further while too much waits.
    func tcpRead(_ buffer: ByteBuffer, stream: Stream) {
        countFromTCP(stream, buffer.readableBytes)
        guard buffer.readableBytes > 0 else { return }
        stream.toPeer.append(buffer)
        stream.toPeerBytes += buffer.readableBytes
        if stream.toPeerBytes >= Self.maxPendingToPeer && !stream.isTCPPaused {
            stream.isTCPPaused = true
            _ = stream.tcp?.setOption(ChannelOptions.autoRead, value: false)
        }
        resume(stream)
    }

    /// The TCP side finished sending (EOF or close): end the stream once its bytes are out.
    func tcpEnded(stream: Stream) {
        stream.tcpEnded = true
        resume(stream)
    }

    func resume(_ stream: Stream) {
        guard let session, streams[stream.id] === stream else { return }
        if stream.isDeferred {
            stream.isDeferred = false
            _ = nghttp2_session_resume_data(session, stream.id)
        }
        // A record's worth of bytes goes out at once (bulk data gains nothing from waiting and
        // would pause its TCP side sooner); less waits for the turn's other streams.
        if stream.toPeerBytes >= RecordBatcher.recordPlaintext { flushNow() } else { flushSession() }
    }
}

/// Sent through each tracked connection's pipeline when the NetWorker drains: HTTP/2
/// connections answer with GOAWAY.
struct DrainRequested {}

/// Why an HBONE stream or connection failed, in words for the access log.
struct HBONEError: Error, CustomStringConvertible {
    let description: String
    /// The server never processed the request (REFUSED_STREAM, a GOAWAY naming a lower stream,
    /// a request never sent): it may be sent again on another connection (RFC 9113 §8.7).
    let isRetryable: Bool
    init(_ description: String, retryable: Bool = false) {
        self.description = description
        isRetryable = retryable
    }
}

/// The TCP side of one HBONE stream: its bytes go to the stream, its end ends it.
final class StreamTCPHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let connection: HTTP2Connection
    private let stream: HTTP2Connection.Stream

    init(connection: HTTP2Connection, stream: HTTP2Connection.Stream) {
        self.connection = connection
        self.stream = stream
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        connection.tcpRead(unwrapInboundIn(data), stream: stream)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event { connection.tcpEnded(stream: stream) }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        connection.tcpEnded(stream: stream)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
