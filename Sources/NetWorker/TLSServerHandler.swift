internal import COpenSSL
internal import CShims
import NIOCore
import OpenSSLSupport
import Shared

/// The TLS side of an inbound HBONE connection (15008), OpenSSL driven through memory BIOs:
/// bytes from the socket go into the read BIO, OpenSSL's output is drained from the write BIO to
/// the socket. After the handshake it checks the client's SPIFFE identity (same trust domain as
/// ours, ISTIO_COMPAT §5.1).
///
/// Not yet: the HTTP/2 CONNECT stream that follows (HBONE server). The connection is closed with
/// close_notify once the handshake and the identity check are done.
final class TLSServerHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let identities: IdentityTable
    private var ssl: OpaquePointer?
    private var readBIO: OpaquePointer?
    private var writeBIO: OpaquePointer?
    private var isDone = false

    init(identities: IdentityTable) { self.identities = identities }

    func handlerAdded(context: ChannelHandlerContext) {
        guard let server = identities.inboundContext else {
            Log.warn("inbound: no identity is available yet; closing the connection")
            context.close(promise: nil)
            return
        }
        guard let ssl = SSL_new(server.context), let readBIO = BIO_new(BIO_s_mem()), let writeBIO = BIO_new(BIO_s_mem()) else {
            Log.error("inbound: \(OpenSSLError("SSL_new"))")
            context.close(promise: nil)
            return
        }
        SSL_set_bio(ssl, readBIO, writeBIO)  // the SSL owns both BIOs from here on
        SSL_set_accept_state(ssl)
        self.ssl = ssl
        self.readBIO = readBIO
        self.writeBIO = writeBIO
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if let ssl { SSL_free(ssl) }
        ssl = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let ssl, let readBIO, !isDone else { return }
        var buffer = unwrapInboundIn(data)
        buffer.withUnsafeReadableBytes { raw in
            guard let base = raw.baseAddress, raw.count > 0 else { return }
            _ = BIO_write(readBIO, base, Int32(raw.count))
        }
        buffer.moveReaderIndex(to: buffer.writerIndex)
        OpenSSLError.clearQueue()
        let rc = SSL_do_handshake(ssl)
        if rc == 1 {
            finishHandshake(context: context, ssl: ssl)
            return
        }
        let error = SSL_get_error(ssl, rc)
        flushOutput(context: context)
        if error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE {
            Log.info("inbound: TLS handshake failed: \(OpenSSLError("SSL_do_handshake"))",
                     [("peer", "\(context.channel.remoteAddress.map { "\($0)" } ?? "?")")])
            isDone = true
            context.close(promise: nil)
        }
    }

    private func finishHandshake(context: ChannelHandlerContext, ssl: OpaquePointer) {
        isDone = true
        flushOutput(context: context)
        let ours = identities.inboundContext?.spiffeId
        var peerIdentity = "none"
        if let peer = SSL_get0_peer_certificate(ssl) {
            let certificate = Certificate(retaining: peer)
            peerIdentity = certificate.spiffeIds.first ?? "none"
        }
        let peer = SpiffeId(peerIdentity)
        guard let peer, peer.trustDomain == ours?.trustDomain else {
            Log.info("inbound: refused client identity \(peerIdentity): not in our trust domain")
            context.close(promise: nil)
            return
        }
        Log.info("inbound: mTLS established; HBONE streams are not served yet, closing",
                 [("peer_identity", peer.description), ("local_identity", ours?.description ?? "?")])
        _ = SSL_shutdown(ssl)
        flushOutput(context: context)
        context.close(promise: nil)
    }

    /// Moves whatever OpenSSL wrote (handshake records, alerts) to the socket.
    private func flushOutput(context: ChannelHandlerContext) {
        guard let writeBIO else { return }
        var pending = CShims_BIO_pending(writeBIO)
        guard pending > 0 else { return }
        var buffer = context.channel.allocator.buffer(capacity: Int(pending))
        while pending > 0 {
            let read = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: Int(pending)) { raw in
                Int(max(0, BIO_read(writeBIO, raw.baseAddress, Int32(min(raw.count, Int(pending))))))
            }
            if read == 0 { break }
            pending = CShims_BIO_pending(writeBIO)
        }
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }
}
