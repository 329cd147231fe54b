internal import CShims
#if canImport(Glibc)
import Glibc
#endif

/// Bytes handed between processes as a sealed memfd: written once by its maker, then sealed
/// against writing, growing and shrinking (and against further sealing), so a reader that checked
/// the seals may map it read-only and parse it knowing nobody can change it underneath. The xDS
/// worker publishes the mesh model this way (a mesh of 20,000 workloads is megabytes; IPC frames
/// are 64 KiB), the Supervisor checks and relays the fd, and every NetWorker maps it.
public enum SealedMemfd {
    public struct Refused: Error, CustomStringConvertible {
        public let description: String
        public init(_ description: String) { self.description = description }
    }

    // linux/memfd.h and fcntl.h (_GNU_SOURCE), which Swift does not import.
    static let mfdCloexec: UInt32 = 0x1, mfdAllowSealing: UInt32 = 0x2
    static let addSeals: Int32 = 1033, getSeals: Int32 = 1034
    static let sealSeal: Int32 = 0x1, sealShrink: Int32 = 0x2, sealGrow: Int32 = 0x4, sealWrite: Int32 = 0x8
    /// The largest mesh snapshot the xDS worker publishes and the Supervisor and NetWorkers accept.
    public static let maxMeshSnapshotBytes = 128 << 20

    /// The seals a reader requires.
    public static let requiredSeals = sealSeal | sealShrink | sealGrow | sealWrite

    /// A new sealed memfd holding `bytes`.
    public static func make(name: String, _ bytes: [UInt8]) throws -> OwnedFD {
        let fd = try makeUnsealed(name: name)
        let raw = fd.rawValue
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { write(raw, $0.baseAddress! + offset, $0.count - offset) }
            if written < 0 {
                if errno == EINTR { continue }
                throw Refused("writing the memfd: \(String(cString: strerror(errno)))")
            }
            offset += written
        }
        guard fcntl(raw, addSeals, requiredSeals) == 0 else { throw Refused("sealing the memfd: \(String(cString: strerror(errno)))") }
        return fd
    }

    /// An empty memfd that may still be written and sealed (public for fault injection only:
    /// the sandbox tests send one where a sealed snapshot is due).
    public static func makeUnsealed(name: String) throws -> OwnedFD {
        let raw = CShims_memfd_create(name, mfdCloexec | mfdAllowSealing)
        guard raw >= 0 else { throw Refused("memfd_create: \(String(cString: strerror(errno)))") }
        return OwnedFD(takingOwnershipOf: raw)
    }

    /// The size of a memfd that carries every required seal and at most `maxBytes`; anything
    /// else (not a memfd, unsealed, too large) is refused.
    public static func checkedSize(_ fd: Int32, maxBytes: Int) throws -> Int {
        let seals = fcntl(fd, getSeals)
        guard seals >= 0 else { throw Refused("not a sealable memfd: \(String(cString: strerror(errno)))") }
        guard seals & requiredSeals == requiredSeals else { throw Refused("memfd seals \(seals), need \(requiredSeals)") }
        // lseek, not fstat: glibc's fstat is newfstatat, which would also stat any path, and
        // the NetWorker's allowlist has no such call.
        let size = lseek(fd, 0, SEEK_END)
        guard size >= 0 else { throw Refused("lseek: \(String(cString: strerror(errno)))") }
        guard size <= maxBytes else { throw Refused("memfd of \(size) bytes, at most \(maxBytes)") }
        return Int(size)
    }

    /// Maps a checked memfd read-only and hands its bytes to `body` (valid only during the call).
    public static func withContents<T>(_ fd: Int32, maxBytes: Int, _ body: (UnsafeRawBufferPointer) throws -> T) throws -> T {
        let size = try checkedSize(fd, maxBytes: maxBytes)
        guard size > 0 else { return try body(UnsafeRawBufferPointer(start: nil, count: 0)) }
        guard let base = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0), base != MAP_FAILED else {
            throw Refused("mmap: \(String(cString: strerror(errno)))")
        }
        defer { munmap(base, size) }
        return try body(UnsafeRawBufferPointer(start: base, count: size))
    }
}
