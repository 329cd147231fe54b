internal import COpenSSL
import NIOCore

/// The transport under one connection's SSL: a BIO that reads the TLS records received from the
/// socket straight out of NIO's buffer and appends what OpenSSL writes straight to the buffer
/// the channel will write.
///
/// It replaces a pair of memory BIOs, which cost two more copies of every byte (into the read
/// BIO, out of the write BIO) and a memset of every byte the write BIO grew by: about a tenth of
/// the NetWorker's CPU when it carries a bulk stream (issue #7's profile).
///
/// OpenSSL drains `input` completely before it reports WANT_READ (a partial record is kept in
/// its own buffer), so the received buffer is released as soon as a read pass ends and NIO can
/// reuse its receive buffer.
///
/// Used only once the handshake is done: its callbacks are Swift (they allocate), and the
/// handshake runs on an ASYNC_JOB's small stack, where only memory BIOs are used.
final class TLSBufferBIO {
    /// Received TLS bytes OpenSSL has not read yet.
    private(set) var input: ByteBuffer?
    /// What OpenSSL wrote (records, alerts) that is not yet handed to the channel: filled
    /// buffers, then the one being filled. A record that does not fit starts a new buffer rather
    /// than regrowing (and so copying) the current one.
    private var filled: [ByteBuffer] = []
    private var output: ByteBuffer?
    /// The size of a buffer for bulk output: seven full TLS 1.3 records (5-byte header, 16 KiB,
    /// content type, 16-byte tag) in 128 KiB, the power of two NIO would round it to anyway.
    static let bulkChunk = 128 * 1024
    private let allocator: ByteBufferAllocator

    init(allocator: ByteBufferAllocator) {
        self.allocator = allocator
    }

    var inputBytes: Int { input?.readableBytes ?? 0 }
    var outputBytes: Int { filled.reduce(output?.readableBytes ?? 0) { $0 + $1.readableBytes } }

    /// Bytes from the socket, for OpenSSL's next reads. With nothing pending, the received
    /// buffer itself is kept: no copy.
    func receive(_ buffer: inout ByteBuffer) {
        if input == nil || input?.readableBytes == 0 {
            input = buffer
        } else {
            input!.writeBuffer(&buffer)
        }
        buffer.moveReaderIndex(to: buffer.writerIndex)
    }

    /// Drops the received buffer once OpenSSL has read all of it.
    func releaseDrainedInput() {
        if input?.readableBytes == 0 { input = nil }
    }

    /// What OpenSSL wrote so far, in order, for the channel; empty when nothing. NIO bounds what
    /// a connection may queue by readable bytes, not by capacity: a buffer less than a quarter
    /// full (one record in a bulk chunk, as a trickle writes them) is handed over as a copy of its
    /// size, so what is held stays within 4 times the bound. Bulk flushes (several records) are
    /// not copied.
    func takeOutput() -> [ByteBuffer] {
        var taken = filled
        filled.removeAll()
        if let output, output.readableBytes > 0 { taken.append(output) }
        output = nil
        for index in taken.indices where taken[index].capacity > 16 * 1024 && taken[index].readableBytes < taken[index].capacity / 4 {
            var exact = allocator.buffer(capacity: taken[index].readableBytes)
            exact.writeBuffer(&taken[index])
            taken[index] = exact
        }
        return taken
    }

    /// A BIO for this transport; the SSL it is given to owns it (and through it, this object).
    func makeBIO() -> OpaquePointer? {
        guard let method = Self.method, let bio = BIO_new(method) else { return nil }
        BIO_set_data(bio, Unmanaged.passRetained(self).toOpaque())
        BIO_set_init(bio, 1)
        return bio
    }

    private static func from(_ bio: OpaquePointer?) -> TLSBufferBIO? {
        guard let bio, let data = BIO_get_data(bio) else { return nil }
        return Unmanaged<TLSBufferBIO>.fromOpaque(data).takeUnretainedValue()
    }

    /// OpenSSL reads: as much as `input` has, else "retry" (the caller sees WANT_READ).
    private func read(into destination: UnsafeMutablePointer<CChar>, count: Int) -> Int {
        guard count > 0, var input, input.readableBytes > 0 else { return -1 }
        let taken = min(count, input.readableBytes)
        input.readWithUnsafeReadableBytes { raw in
            UnsafeMutableRawPointer(destination).copyMemory(from: raw.baseAddress!, byteCount: taken)
            return taken
        }
        self.input = input
        return taken
    }

    private func write(_ source: UnsafePointer<CChar>, count: Int) -> Int {
        let bytes = UnsafeRawBufferPointer(start: source, count: count)
        if output == nil || output!.writableBytes < count {
            if let full = output, full.readableBytes > 0 { filled.append(full) }
            // Handshake flights are a few KiB; application data comes in 16 KiB records.
            output = allocator.buffer(capacity: max(count, count >= 16384 ? Self.bulkChunk : 4096))
        }
        output!.writeBytes(bytes)
        return count
    }

    /// The BIO method, made once per process.
    nonisolated(unsafe) private static let method: OpaquePointer? = {
        guard let method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ztunnel NIO buffer") else { return nil }
        _ = BIO_meth_set_read(method) { bio, destination, count in
            BIO_clear_flags(bio, BIO_FLAGS_READ | BIO_FLAGS_WRITE | BIO_FLAGS_IO_SPECIAL | BIO_FLAGS_SHOULD_RETRY)
            guard let destination, let transport = TLSBufferBIO.from(bio) else { return -1 }
            let read = transport.input == nil ? -1 : transport.read(into: destination, count: Int(count))
            if read < 0 { BIO_set_flags(bio, BIO_FLAGS_READ | BIO_FLAGS_SHOULD_RETRY) }
            return Int32(read)
        }
        _ = BIO_meth_set_write(method) { bio, source, count in
            BIO_clear_flags(bio, BIO_FLAGS_READ | BIO_FLAGS_WRITE | BIO_FLAGS_IO_SPECIAL | BIO_FLAGS_SHOULD_RETRY)
            guard let source, count >= 0, let transport = TLSBufferBIO.from(bio) else { return -1 }
            return Int32(transport.write(source, count: Int(count)))
        }
        _ = BIO_meth_set_ctrl(method) { bio, command, _, _ in
            switch command {
            case BIO_CTRL_FLUSH, BIO_CTRL_DUP: return 1
            case BIO_CTRL_PENDING: return TLSBufferBIO.from(bio).map { $0.inputBytes } ?? 0
            case BIO_CTRL_WPENDING: return TLSBufferBIO.from(bio).map { $0.outputBytes } ?? 0
            default: return 0
            }
        }
        _ = BIO_meth_set_destroy(method) { bio in
            guard let bio else { return 0 }
            if let data = BIO_get_data(bio) { Unmanaged<TLSBufferBIO>.fromOpaque(data).release() }
            BIO_set_data(bio, nil)
            BIO_set_init(bio, 0)
            return 1
        }
        return method
    }()
}
