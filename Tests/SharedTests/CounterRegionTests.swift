import Testing
@testable import Shared
#if canImport(Glibc)
import Glibc
#endif

/// The shared counter regions between NetWorkers: what the owner writes a reader sees whole, a
/// read-only descriptor cannot be mapped writable, and a text too long is cut at a line.
@Suite struct CounterRegionTests {
    @Test func theOwnerWritesAndAPeerReadsItWhole() throws {
        let fd = try CounterRegion.make(name: "test")
        let owner = try CounterRegion(fd: fd, writable: true)
        let peer = try CounterRegion(fd: try CounterRegion.readOnly(fd), writable: false)
        #expect(peer.read() == [])
        owner.write(Array("a_total 1\nb_total 2\n".utf8))
        #expect(peer.read() == Array("a_total 1\nb_total 2\n".utf8))
        owner.write(Array("a_total 3\n".utf8))
        #expect(peer.read() == Array("a_total 3\n".utf8))
    }

    @Test func aReadOnlyDescriptorCannotBeMappedWritable() throws {
        let fd = try CounterRegion.make(name: "test")
        #expect(throws: CounterRegion.Failure.self) { _ = try CounterRegion(fd: try CounterRegion.readOnly(fd), writable: true) }
        // Nor a file of another size, nor one whose size may change under a reader (SIGBUS).
        let small = try SealedMemfd.makeUnsealed(name: "small")
        #expect(throws: CounterRegion.Failure.self) { _ = try CounterRegion(fd: small, writable: false) }
        let unsealed = try SealedMemfd.makeUnsealed(name: "unsealed")
        #expect(ftruncate(unsealed.rawValue, off_t(CounterRegion.size)) == 0)
        #expect(throws: CounterRegion.Failure.self) { _ = try CounterRegion(fd: unsealed, writable: false) }
        #expect(ftruncate(fd.rawValue, 0) != 0)  // the owner cannot shrink a real one
    }

    @Test func aTextLongerThanTheRegionIsCutAtALine() throws {
        let fd = try CounterRegion.make(name: "test")
        let owner = try CounterRegion(fd: fd, writable: true)
        let line = Array("x_total 1\n".utf8)
        let text = [UInt8]((0..<(CounterRegion.capacity / line.count + 10)).flatMap { _ in line })
        owner.write(text)
        let read = try #require(owner.read())
        #expect(read.count <= CounterRegion.capacity && read.count % line.count == 0 && read.last == 0x0a)
    }
}
