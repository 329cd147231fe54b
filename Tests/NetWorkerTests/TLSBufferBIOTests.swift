import COpenSSL
import NIOCore
import Testing
@testable import NetWorker

/// The BIO under every HBONE connection's SSL, driven through OpenSSL's own BIO calls as the
/// record layer drives it.
@Suite struct TLSBufferBIOTests {
    private func bytes(_ count: Int, from start: Int = 0) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: start + $0) } }

    private func read(_ bio: OpaquePointer, _ count: Int) -> (Int32, [UInt8]) {
        var into = [UInt8](repeating: 0, count: count)
        let rc = into.withUnsafeMutableBytes { BIO_read(bio, $0.baseAddress, Int32(count)) }
        return (rc, Array(into.prefix(Int(max(rc, 0)))))
    }

    @Test func anEmptyInputAsksOpenSSLToRetryTheRead() throws {
        let transport = TLSBufferBIO(allocator: ByteBufferAllocator())
        let bio = try #require(transport.makeBIO())
        defer { BIO_free(bio) }
        #expect(read(bio, 5).0 == -1)
        #expect(BIO_test_flags(bio, BIO_FLAGS_SHOULD_RETRY) != 0)
        #expect(BIO_test_flags(bio, BIO_FLAGS_READ) != 0)
    }

    @Test func receivedBytesAreReadInOrderAcrossBuffersAndReleasedWhenDrained() throws {
        let allocator = ByteBufferAllocator()
        let transport = TLSBufferBIO(allocator: allocator)
        let bio = try #require(transport.makeBIO())
        defer { BIO_free(bio) }
        var first = allocator.buffer(bytes: bytes(10))
        transport.receive(&first)
        #expect(first.readableBytes == 0)
        #expect(read(bio, 4) == (4, bytes(4)))
        // More arrives while 6 bytes are unread: appended after them.
        var second = allocator.buffer(bytes: bytes(7, from: 10))
        transport.receive(&second)
        #expect(BIO_ctrl(bio, BIO_CTRL_PENDING, 0, nil) == 13)
        transport.releaseDrainedInput()
        #expect(transport.inputBytes == 13)  // not drained: kept
        #expect(read(bio, 100) == (13, bytes(13, from: 4)))
        #expect(BIO_test_flags(bio, BIO_FLAGS_SHOULD_RETRY) == 0)
        #expect(read(bio, 1).0 == -1)
        transport.releaseDrainedInput()
        #expect(transport.input == nil)
    }

    @Test func writtenRecordsComeOutWholeAndInOrderAcrossChunks() throws {
        let transport = TLSBufferBIO(allocator: ByteBufferAllocator())
        let bio = try #require(transport.makeBIO())
        defer { BIO_free(bio) }
        #expect(transport.takeOutput().isEmpty)
        // A small handshake record, then more full records than one chunk holds.
        let record = 5 + 16384 + 1 + 16
        var written: [UInt8] = []
        for (index, count) in ([300] + Array(repeating: record, count: 10) + [40]).enumerated() {
            let chunk = bytes(count, from: index)
            #expect(chunk.withUnsafeBytes { BIO_write(bio, $0.baseAddress, Int32(count)) } == Int32(count))
            written += chunk
        }
        #expect(BIO_ctrl(bio, BIO_CTRL_WPENDING, 0, nil) == written.count)
        #expect(BIO_ctrl(bio, BIO_CTRL_FLUSH, 0, nil) == 1)
        let output = transport.takeOutput()
        #expect(output.count > 1)
        // No buffer was regrown: each holds at most one chunk (or one larger record).
        #expect(output.allSatisfy { $0.readableBytes <= TLSBufferBIO.bulkChunk })
        #expect(output.flatMap { Array($0.readableBytesView) } == written)
        // A buffer mostly empty is handed over as a copy of its size: NIO bounds what is queued
        // by readable bytes, so capacity must not be many times that.
        #expect(output.allSatisfy { $0.capacity <= max(16 * 1024, 4 * $0.readableBytes) }, "\(output.map { ($0.readableBytes, $0.capacity) })")
        #expect(transport.outputBytes == 0)
        #expect(transport.takeOutput().isEmpty)
    }

    /// A trickle: one record per flush is not handed over in a 128 KiB chunk.
    @Test func aLoneRecordIsHandedOverInABufferOfItsSize() throws {
        let transport = TLSBufferBIO(allocator: ByteBufferAllocator())
        let bio = try #require(transport.makeBIO())
        defer { BIO_free(bio) }
        let record = bytes(5 + 16384 + 1 + 16)
        #expect(record.withUnsafeBytes { BIO_write(bio, $0.baseAddress, Int32(record.count)) } == Int32(record.count))
        let output = transport.takeOutput()
        #expect(output.count == 1 && Array(output[0].readableBytesView) == record)
        #expect(output[0].capacity <= 32 * 1024, "\(output[0].capacity)")
    }

    @Test func freeingTheBIOReleasesTheTransport() throws {
        weak var released: TLSBufferBIO?
        do {
            let transport = TLSBufferBIO(allocator: ByteBufferAllocator())
            released = transport
            let bio = try #require(transport.makeBIO())
            BIO_free(bio)
        }
        #expect(released == nil)
    }
}
