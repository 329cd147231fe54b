internal import CShims
#if canImport(Glibc)
import Glibc
#endif

/// A shared-memory region in which one NetWorker publishes its counters for the others: with
/// several NetWorkers a scrape lands on any one of them and must see the sum (issue #8). The
/// Supervisor makes one memfd per NetWorker index and hands each NetWorker its own read-write and
/// every other one read-only (a reopened `O_RDONLY` descriptor: it cannot be mapped writable), so
/// a compromised NetWorker can garble only its own counters, never another's.
///
/// Layout: `u64 sequence` (odd while the owner writes), `u64 length`, then `length` bytes of
/// Prometheus sample lines. Readers copy and retry until the sequence is even and unchanged.
public final class CounterRegion: @unchecked Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        public init(_ description: String) { self.description = description }
    }

    /// Room for the 10,000 label sets a NetWorker keeps (about 1 KB per line, five families);
    /// only the pages written take memory.
    public static let size = 64 << 20
    static let header = 16
    public static var capacity: Int { size - header }

    private let base: UnsafeMutableRawPointer
    public let isWritable: Bool
    private let lock = Mutex()

    /// A new region (the Supervisor's): a memfd of `size` bytes, zero (sequence 0, empty),
    /// sealed against shrinking and growing: a reader's mapping can never lose its pages (a
    /// shrunk memfd would make every peer's read a SIGBUS), whatever the owner does.
    public static func make(name: String) throws -> OwnedFD {
        let fd = try SealedMemfd.makeUnsealed(name: name)
        guard ftruncate(fd.rawValue, off_t(size)) == 0 else { throw Failure("ftruncate: \(String(cString: strerror(errno)))") }
        guard fcntl(fd.rawValue, SealedMemfd.addSeals, SealedMemfd.sealShrink | SealedMemfd.sealGrow | SealedMemfd.sealSeal) == 0 else {
            throw Failure("sealing the region's size: \(String(cString: strerror(errno)))")
        }
        return fd
    }

    /// A read-only descriptor of the same region, for the other NetWorkers.
    public static func readOnly(_ fd: OwnedFD) throws -> OwnedFD {
        let raw = open("/proc/self/fd/\(fd.rawValue)", O_RDONLY | O_CLOEXEC)
        guard raw >= 0 else { throw Failure("reopening the region read-only: \(String(cString: strerror(errno)))") }
        return OwnedFD(takingOwnershipOf: raw)
    }

    /// Maps a region handed over by the Supervisor; refuses one of another size or whose size
    /// is not sealed.
    public init(fd: OwnedFD, writable: Bool) throws {
        guard lseek(fd.rawValue, 0, SEEK_END) == Self.size else { throw Failure("a counter region of another size") }
        let seals = fcntl(fd.rawValue, SealedMemfd.getSeals)
        guard seals >= 0, seals & (SealedMemfd.sealShrink | SealedMemfd.sealGrow) == SealedMemfd.sealShrink | SealedMemfd.sealGrow else {
            throw Failure("a counter region whose size is not sealed")
        }
        let protection = writable ? PROT_READ | PROT_WRITE : PROT_READ
        guard let base = mmap(nil, Self.size, protection, MAP_SHARED, fd.rawValue, 0), base != MAP_FAILED else {
            throw Failure("mmap: \(String(cString: strerror(errno)))")
        }
        self.base = base
        isWritable = writable
    }

    deinit { munmap(base, Self.size) }

    private var sequence: UnsafeMutablePointer<UInt64> { base.assumingMemoryBound(to: UInt64.self) }

    /// Publishes `text` (cut at the last whole line that fits). Owner only.
    public func write(_ text: [UInt8]) {
        precondition(isWritable, "write to a read-only counter region")
        var count = min(text.count, Self.capacity)
        if count < text.count, let lastNewline = text[..<count].lastIndex(of: 0x0a) { count = lastNewline + 1 }
        lock.withLock {
            let start = CShims_atomic_load_u64(sequence)
            CShims_atomic_store_u64(sequence, start | 1)
            CShims_atomic_fence()  // the odd sequence is visible before any byte changes
            text.withUnsafeBytes { (base + Self.header).copyMemory(from: $0.baseAddress!, byteCount: count) }
            CShims_atomic_store_u64(sequence + 1, UInt64(count))
            CShims_atomic_fence()  // every byte is visible before the even sequence
            CShims_atomic_store_u64(sequence, (start | 1) &+ 1)
        }
    }

    /// A consistent copy of what the owner last published, or nil when none could be taken (a
    /// writer mid-way each time, or a length out of bounds).
    public func read() -> [UInt8]? {
        for _ in 0..<8 {
            let before = CShims_atomic_load_u64(sequence)
            guard before & 1 == 0 else { sched_yield(); continue }
            let length = Int(clamping: CShims_atomic_load_u64(sequence + 1))
            guard length <= Self.capacity else { return nil }
            let copy = [UInt8](UnsafeRawBufferPointer(start: base + Self.header, count: length))
            CShims_atomic_fence()  // the copy is complete before the sequence is read again
            if CShims_atomic_load_u64(sequence) == before { return copy }
        }
        return nil
    }
}
