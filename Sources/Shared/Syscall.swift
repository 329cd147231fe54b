#if canImport(Glibc)
import Glibc
#endif

/// The error of a failed system call: the function's name and errno.
public struct SyscallError: Error, CustomStringConvertible, Equatable {
    public let function: String
    public let errno: Int32

    public init(function: String, errno: Int32) {
        self.function = function
        self.errno = errno
    }

    public var description: String {
        "\(function): \(String(cString: strerror(errno))) (errno \(errno))"
    }
}

/// Every system call the project makes goes through here (STYLE.md §5): EINTR is retried, a
/// failure throws errno with the function's name, and EBADF/EFAULT, which can only be our bugs,
/// stop the process instead of being handled as peer errors.
public enum Syscall {
    /// Runs `body` until it does not fail with EINTR. `body` returns -1 and sets errno on failure.
    @inline(__always)
    public static func retrying<T: FixedWidthInteger>(
        _ function: String, _ body: () -> T
    ) throws -> T {
        while true {
            let result = body()
            if result != -1 { return result }
            let err = Glibc.errno
            if err == EINTR { continue }
            precondition(err != EBADF && err != EFAULT, "\(function) failed with a programming error: errno \(err)")
            throw SyscallError(function: function, errno: err)
        }
    }

    public static func close(_ fd: Int32) {
        // close(2) must not be retried on EINTR on Linux: the fd is gone either way.
        _ = Glibc.close(fd)
    }

    public static func socketpair(type: Int32) throws -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        _ = try retrying("socketpair") { Glibc.socketpair(AF_UNIX, type | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) }
        return (fds[0], fds[1])
    }

    /// Writes all of `bytes` to a blocking fd.
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = try bytes.withUnsafeBytes { raw in
                try retrying("write") { Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset) }
            }
            offset += n
        }
    }

    /// Reads a whole small file; refuses files over `limit`. The read buffer is cleared before it
    /// is freed, so a key file read through here leaves only the returned copy, which the caller
    /// clears.
    /// Reads a whole file of at most `limit` bytes. With `regularOnly`, anything but a regular
    /// file (a FIFO, a device) is refused before a read could block: for files read on a loop
    /// that must not stall (the Supervisor's token refresh).
    public static func readFile(_ path: String, limit: Int = 1 << 20, regularOnly: Bool = false) throws -> [UInt8] {
        // O_NOCTTY: a path that turns out to be a terminal never becomes the controlling one.
        let flags = O_RDONLY | O_CLOEXEC | O_NOCTTY | (regularOnly ? O_NONBLOCK : 0)
        let fd = try retrying("open(\(path))") { open(path, flags) }
        defer { close(fd) }
        if regularOnly {
            var info = stat()
            _ = try retrying("fstat(\(path))") { fstat(fd, &info) }
            guard info.st_mode & S_IFMT == S_IFREG else {
                throw SyscallError(function: "read(\(path)): not a regular file", errno: EINVAL)
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(min(limit, 64 * 1024))
        var chunk = [UInt8](repeating: 0, count: 65536)
        defer { chunk.withUnsafeMutableBytes { raw in if let base = raw.baseAddress { explicit_bzero(base, raw.count) } } }
        while true {
            let n = try chunk.withUnsafeMutableBytes { raw in
                try retrying("read(\(path))") { Glibc.read(fd, raw.baseAddress, raw.count) }
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
            if out.count > limit { throw SyscallError(function: "read(\(path)): file larger than \(limit) bytes", errno: EFBIG) }
        }
        return out
    }
}
