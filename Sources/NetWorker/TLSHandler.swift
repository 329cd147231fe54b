internal import COpenSSL
internal import CShims
import NIOCore
import OpenSSLSupport
import Shared

/// One side of an HBONE connection's TLS. The handshake runs over two memory BIOs: it runs in an
/// ASYNC_JOB (for the key-handle signature), on a small stack without a guard page, where only
/// OpenSSL's own shallow C may run, never Swift. Once established, the SSL is moved onto a
/// `TLSBufferBIO`: OpenSSL reads the bytes from the socket out of NIO's buffer and writes its
/// records into the buffers that go to the socket.
/// The server (15008) presents the certificate its `choose` closure picks for the connection
/// (the destination workload's) and accepts a client whose SPIFFE id is in our trust domain; the
/// client (the outbound pool) presents the source workload's and accepts a server only when one
/// of its SPIFFE ids is an expected identity (ISTIO_COMPAT §5.1, §5.4). After the handshake it
/// fires `TLSEstablished` and from then on passes decrypted bytes inbound and encrypts what the
/// next handler (the HTTP/2 session) writes. A handshake that fails fires `TLSFailed` with the
/// reason, then closes.
final class TLSHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Why the server presents no certificate on a connection.
    struct Refusal: Error { let reason: String }

    enum Role {
        /// Picks the context for an accepted connection when its first bytes arrive.
        case server(choose: (Channel) -> Result<TLSContext, Refusal>)
        /// Presents `context` and accepts a server presenting one of `expected`.
        case client(context: TLSContext, expected: [String])
    }

    private let role: Role
    private let signer: SignerClient
    private let bounds: Bounds
    private let reporter: BoundReporter
    private var deadline: Scheduled<Void>?
    private let slot = AsyncSignSlot()
    private var ssl: OpaquePointer?
    /// The handshake's memory BIOs (owned by the SSL), until the transport replaces them.
    private var readBIO: OpaquePointer?
    private var writeBIO: OpaquePointer?
    private var transport: TLSBufferBIO?
    private var local: SpiffeId?
    /// The handshake is over (either way); `isActive`: it succeeded and application data flows.
    private var isDone = false
    private var isActive = false
    static let plaintextChunk = 64 * 1024
    /// How long a signature round trip may take before the handshake fails.
    static let signDeadline = TimeAmount.seconds(2)

    /// The listener name in logs and bound metrics.
    private let listener: String
    /// Set once the handshake succeeded: the direct path (`seal`, `flushSealed`) writes here.
    private var context: ChannelHandlerContext?

    init(role: Role, signer: SignerClient, bounds: Bounds, reporter: BoundReporter) {
        self.role = role
        self.signer = signer
        self.bounds = bounds
        self.reporter = reporter
        if case .server = role { listener = "inbound" } else { listener = "outbound" }
    }

    /// Arms the handshake deadline. On the server the SSL object is made only when the first
    /// bytes arrive, so a connection that never speaks costs a socket and this handler, not an
    /// SSL (issue #6: ten thousand silent connections must leave memory bounded).
    func handlerAdded(context: ChannelHandlerContext) {
        let limit = bounds.handshakeMilliseconds
        deadline = reporter.deadline(.handshakeTimeout, on: context.channel, listener: listener, after: limit,
                                     detail: "TLS handshake not done within \(limit) ms")
        if context.channel.isActive { start(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context: context)
        context.fireChannelActive()
    }

    /// The client speaks first: its ClientHello goes out as soon as the TCP connection is up.
    private func start(context: ChannelHandlerContext) {
        guard case .client(let tls, _) = role, ssl == nil, !isDone else { return }
        guard makeSSL(tls, context: context) else { return }
        drive(context: context)
    }

    private func makeSSL(context: ChannelHandlerContext) -> Bool {
        guard case .server(let choose) = role else { return false }
        switch choose(context.channel) {
        case .success(let tls):
            return makeSSL(tls, context: context)
        case .failure(let refusal):
            fail(context: context, refusal.reason)
            return false
        }
    }

    private func makeSSL(_ tls: TLSContext, context: ChannelHandlerContext) -> Bool {
        guard let ssl = SSL_new(tls.context) else {
            fail(context: context, "\(OpenSSLError("SSL_new"))")
            return false
        }
        let readBIO = BIO_new(BIO_s_mem())
        let writeBIO = BIO_new(BIO_s_mem())
        guard let readBIO, let writeBIO else {
            BIO_free(readBIO)
            BIO_free(writeBIO)
            SSL_free(ssl)
            fail(context: context, "\(OpenSSLError("BIO_new"))")
            return false
        }
        SSL_set_bio(ssl, readBIO, writeBIO)  // the SSL owns both BIOs from here on
        if tls.side == .server { SSL_set_accept_state(ssl) } else { SSL_set_connect_state(ssl) }
        self.ssl = ssl
        self.readBIO = readBIO
        self.writeBIO = writeBIO
        self.local = tls.spiffeId
        return true
    }

    /// The handshake failed or was refused: say why (logged, and passed on for the session's
    /// own account), then close.
    private func fail(context: ChannelHandlerContext, _ reason: String) {
        isDone = true
        deadline?.cancel()
        Log.info("\(listener): TLS handshake failed", [("peer", ListenerFactory.peer(context.channel)), ("reason", reason)])
        context.fireUserInboundEventTriggered(TLSFailed(reason: reason))
        context.close(promise: nil)
    }

    /// A client that stops sending before the handshake is done will never finish it: close now
    /// rather than hold the slot until the deadline.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event, !isDone {
            fail(context: context, "the peer closed the connection during the handshake")
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        self.context = nil
        defer {  // the BIOs are freed with the SSL
            readBIO = nil
            writeBIO = nil
            transport = nil
        }
        guard let ssl else { return }
        if slot.isInFlight || slot.request != nil {
            // A job is paused waiting for a signature: let it finish (failing) so its stack is
            // returned to OpenSSL's pool before the SSL goes.
            slot.isInFlight = false
            slot.request = nil
            slot.outcome = .failure
            _ = slot.whileCurrent { SSL_do_handshake(ssl) }
        }
        SSL_free(ssl)
        self.ssl = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if isActive {
            readApplicationData(unwrapInboundIn(data), context: context)
            return
        }
        guard !isDone else { return }
        if ssl == nil && !makeSSL(context: context) { return }
        guard let readBIO else { return }
        let buffer = unwrapInboundIn(data)
        // While a handshake waits (for a signature, say) the client's records pile up in the read
        // BIO: a handshake is a few KiB, so more than the bound is refused, not buffered.
        guard Int(CShims_BIO_pending(readBIO)) + buffer.readableBytes <= Bounds.tlsHandshakeInputBytes else {
            reporter.reached(.handshakeInput, listener: listener, peer: ListenerFactory.peer(context.channel),
                             detail: "over \(Bounds.tlsHandshakeInputBytes) bytes of TLS records before the handshake finished")
            fail(context: context, "over \(Bounds.tlsHandshakeInputBytes) bytes of TLS records before the handshake finished")
            return
        }
        buffer.withUnsafeReadableBytes { raw in
            guard let base = raw.baseAddress, raw.count > 0 else { return }
            _ = BIO_write(readBIO, base, Int32(raw.count))
        }
        drive(context: context)
    }

    /// Runs the handshake as far as it can go now.
    private func drive(context: ChannelHandlerContext) {
        guard let ssl, !isDone else { return }
        OpenSSLError.clearQueue()
        let rc = slot.whileCurrent { SSL_do_handshake(ssl) }
        if rc == 1 {
            finishHandshake(context: context, ssl: ssl)
            return
        }
        let error = SSL_get_error(ssl, rc)
        flushOutput(context: context)
        switch error {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return
        case SSL_ERROR_WANT_ASYNC:
            sendPendingSignature(context: context)
        default:
            var reason = "\(OpenSSLError("SSL_do_handshake"))"
            // Say why the peer's certificate failed (expired, unknown CA...), not only that it did.
            let verify = SSL_get_verify_result(ssl)
            if verify != X509_V_OK, let text = X509_verify_cert_error_string(verify) {
                reason += " (peer certificate: \(String(cString: text)))"
            }
            flushOutput(context: context)  // the alert, so the peer learns why
            fail(context: context, reason)
        }
    }

    /// The paused job asked for a signature: send it from the event loop's own stack, resume the
    /// handshake on this loop when the reply (or the deadline) comes.
    private func sendPendingSignature(context: ChannelHandlerContext) {
        guard let request = slot.request, !slot.isInFlight else { return }
        slot.request = nil
        slot.isInFlight = true
        let loop = context.eventLoop
        let requestId = signer.signAsync(handle: request.handle, content: request.content) { signature in
            loop.execute { self.completeSignature(signature, context: context) }
        }
        guard let requestId else {
            completeSignature(nil, context: context)
            return
        }
        Log.debug("\(listener): handshake paused for signature request \(requestId)")
        loop.scheduleTask(in: Self.signDeadline) {
            guard self.slot.isInFlight else { return }
            Log.warn("\(self.listener): sign request \(requestId) missed its deadline")
            self.signer.cancel(requestId)
            self.completeSignature(nil, context: context)
        }
    }

    private func completeSignature(_ signature: [UInt8]?, context: ChannelHandlerContext) {
        guard slot.isInFlight else { return }  // already answered, timed out or closed
        slot.isInFlight = false
        slot.outcome = signature.map { .signature($0) } ?? .failure
        drive(context: context)
    }

    private func finishHandshake(context: ChannelHandlerContext, ssl: OpaquePointer) {
        isDone = true
        deadline?.cancel()
        flushOutput(context: context)
        let ours = local
        let presented = SSL_get0_peer_certificate(ssl).map { Certificate(retaining: $0).spiffeIds } ?? []
        let candidates = presented.compactMap(SpiffeId.init)
        let accepted: SpiffeId?
        let refusal: String
        switch role {
        case .server:
            // Any SPIFFE id of the client in our trust domain (§5.1); RBAC judges the rest.
            accepted = candidates.first { $0.trustDomain == ours?.trustDomain }
            refusal = "client identity \(presented.first ?? "none") is not in our trust domain"
        case .client(_, let expected):
            // One of the server's SPIFFE ids must be exactly an expected identity (§5.4).
            accepted = candidates.first { expected.contains($0.description) }
            refusal = "server identity \(presented.first ?? "none") is not the expected \(expected.joined(separator: " or "))"
        }
        guard let peer = accepted else {
            fail(context: context, refusal)
            return
        }
        // CRL_PATH: no certificate of the verified chain may be revoked; the chain is kept to be
        // checked again when the lists change.
        if Revocations.shared.isEnabled {
            let reporter: String
            if case .server = role { reporter = "destination" } else { reporter = "source" }
            let chain = RevocationList.chain(SSL_get0_verified_chain(ssl))
            if let refused = Revocations.shared.admit(context.channel, chain: chain, reporter: reporter, peer: peer.description) {
                fail(context: context, refused)
                return
            }
        }
        Log.info("\(listener): mTLS established",
                 [("peer", ListenerFactory.peer(context.channel)), ("peer_identity", peer.description),
                  ("local_identity", ours?.description ?? "?")])
        // No signature is needed after the handshake: reads and writes run on the event loop's
        // own stack from now on, not in an ASYNC_JOB each, and may use the transport.
        _ = CShims_SSL_clear_mode(ssl, Int(SSL_MODE_ASYNC))
        guard moveToTransport(ssl, context: context) else {
            fail(context: context, "\(OpenSSLError("BIO_new"))")
            return
        }
        isActive = true
        self.context = context
        context.fireUserInboundEventTriggered(TLSEstablished(peer: peer, local: ours, tls: self))
        // Records that arrived with the end of the handshake are application data already.
        readApplicationData(nil, context: context)
    }

    /// Puts the established SSL on a `TLSBufferBIO`, with what the read BIO still holds (records
    /// that came with the end of the handshake) as its first input. The memory BIOs are freed.
    private func moveToTransport(_ ssl: OpaquePointer, context: ChannelHandlerContext) -> Bool {
        let transport = TLSBufferBIO(allocator: context.channel.allocator)
        guard let bio = transport.makeBIO() else { return false }
        if let readBIO, var rest = Self.drain(readBIO, allocator: context.channel.allocator) { transport.receive(&rest) }
        SSL_set_bio(ssl, bio, bio)  // frees the memory BIOs; one reference of `bio` for both ends
        readBIO = nil
        writeBIO = nil
        self.transport = transport
        return true
    }

    /// Decrypts what was received and not yet read (plus `buffer`) and passes the plaintext on.
    private func readApplicationData(_ buffer: ByteBuffer?, context: ChannelHandlerContext) {
        guard let ssl, let transport else { return }
        if var buffer { transport.receive(&buffer) }
        defer { transport.releaseDrainedInput() }
        while true {
            // Up to 64 KiB of plaintext (four full records) per read passed on: the session
            // above then handles a burst in one pass.
            var plain = context.channel.allocator.buffer(capacity: Self.plaintextChunk)
            var rc: Int32 = 0
            while plain.writableBytes >= 16 * 1024 {
                _ = plain.writeWithUnsafeMutableBytes(minimumWritableBytes: 16 * 1024) { raw in
                    rc = SSL_read(ssl, raw.baseAddress, Int32(raw.count))
                    return Int(max(0, rc))
                }
                if rc <= 0 { break }
            }
            // The error is read now: passing the plaintext on runs the session above, whose
            // writes (SSL_write) would change what SSL_get_error reports for this read.
            let error = rc > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl, rc)
            if plain.readableBytes > 0 {
                context.fireChannelRead(wrapInboundOut(plain))
                guard isActive, self.ssl != nil else { return }  // closed by the session meanwhile
            }
            if rc > 0 { continue }
            flushOutput(context: context)  // key updates, alerts
            if error == SSL_ERROR_ZERO_RETURN {
                // close_notify: the peer sends no more.
                context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            } else if error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE {
                // A fatal TLS error (a bad record MAC, an alert): the connection is over, and
                // nothing more may pile up unread.
                Log.info("\(listener): TLS error after the handshake: \(OpenSSLError("SSL_read"))",
                         [("peer", ListenerFactory.peer(context.channel))])
                isActive = false
                context.close(promise: nil)
                return
            }
            break
        }
        context.fireChannelReadComplete()
    }

    /// Encrypts what the HBONE server writes; nothing may be written before the handshake ends.
    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard isActive, let ssl else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        var buffer = unwrapOutboundIn(data)
        var ok = true
        while buffer.readableBytes > 0 && ok {
            let written = buffer.withUnsafeReadableBytes { raw -> Int32 in
                SSL_write(ssl, raw.baseAddress, Int32(min(raw.count, Int(Int32.max))))
            }
            if written > 0 { buffer.moveReaderIndex(forwardBy: Int(written)) } else { ok = false }
        }
        // Encrypted and queued; the socket write happens at the next flush, so a burst of
        // frames leaves in one syscall.
        drainOutput(context: context, flush: false, promise: ok ? promise : nil)
        if !ok { promise?.fail(ChannelError.ioOnClosedChannel) }
    }

    func flush(context: ChannelHandlerContext) {
        context.flush()
    }

    /// The direct path for the HTTP/2 session above: encrypts `bytes` at once, with no buffer in
    /// between (nghttp2's output goes straight into the SSL). False when the connection is over.
    func seal(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard isActive, let ssl, let base = bytes.baseAddress else { return false }
        var offset = 0
        while offset < bytes.count {
            let written = SSL_write(ssl, base + offset, Int32(min(bytes.count - offset, Int(Int32.max))))
            guard written > 0 else { return false }
            offset += Int(written)
        }
        return true
    }

    /// Writes and flushes what `seal` encrypted: one buffer, one flush.
    func flushSealed() {
        guard let context else { return }
        flushOutput(context: context)
    }

    /// Like `flushSealed`, then runs `body` once everything written so far has left.
    func flushSealed(then body: @escaping () -> Void) {
        guard let context else { return body() }
        let promise = context.eventLoop.makePromise(of: Void.self)
        promise.futureResult.whenComplete { _ in body() }
        if (transport?.outputBytes ?? 0) > 0 || writeBIO.map({ CShims_BIO_pending($0) > 0 }) == true {
            flushOutput(context: context, promise: promise)
        } else {
            // Nothing new: an empty write completes after every earlier one.
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: promise)
        }
    }

    /// Closing: a close_notify first, so the peer can tell a clean end from a cut connection.
    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if isActive, mode == .all, let ssl {
            isActive = false
            _ = SSL_shutdown(ssl)
            flushOutput(context: context)
        }
        context.close(mode: mode, promise: promise)
    }

    /// Moves whatever OpenSSL wrote (handshake records, application data, alerts) to the socket.
    private func flushOutput(context: ChannelHandlerContext, promise: EventLoopPromise<Void>? = nil) {
        drainOutput(context: context, flush: true, promise: promise)
    }

    /// Everything a memory BIO holds, in one buffer; nil when it holds nothing.
    private static func drain(_ bio: OpaquePointer, allocator: ByteBufferAllocator) -> ByteBuffer? {
        var pending = CShims_BIO_pending(bio)
        guard pending > 0 else { return nil }
        var buffer = allocator.buffer(capacity: Int(pending))
        while pending > 0 {
            let read = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: Int(pending)) { raw in
                Int(max(0, BIO_read(bio, raw.baseAddress, Int32(min(raw.count, Int(pending))))))
            }
            if read == 0 { break }
            pending = CShims_BIO_pending(bio)
        }
        return buffer
    }

    /// Moves what OpenSSL wrote to the pipeline, flushed or only queued.
    private func drainOutput(context: ChannelHandlerContext, flush: Bool, promise: EventLoopPromise<Void>?) {
        var buffers = transport?.takeOutput() ?? []
        if let writeBIO, let handshake = Self.drain(writeBIO, allocator: context.channel.allocator) { buffers.append(handshake) }
        guard let last = buffers.last else {
            promise?.succeed(())
            return
        }
        for buffer in buffers.dropLast() { context.write(wrapOutboundOut(buffer), promise: nil) }
        if flush { context.writeAndFlush(wrapOutboundOut(last), promise: promise) } else {
            context.write(wrapOutboundOut(last), promise: promise)
        }
    }
}

/// Fired inbound by the TLS handler once the handshake succeeded and the peer's identity passed.
struct TLSEstablished {
    let peer: SpiffeId
    let local: SpiffeId?
    /// The handler itself, for the session's direct write path.
    let tls: TLSHandler?
}

/// Fired inbound by the TLS handler when the handshake failed or the peer's identity did not
/// pass, just before it closes the connection.
struct TLSFailed {
    let reason: String
}
