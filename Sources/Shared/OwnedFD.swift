#if canImport(Glibc)
import Glibc
#endif

/// Owns one file descriptor: closes it when released unless it was taken. Every fd received from
/// a peer is wrapped in one of these before anything about the message is validated, so an fd on a
/// refused message is closed rather than leaked (STYLE.md §3).
public final class OwnedFD: @unchecked Sendable, CustomStringConvertible {
    private var fd: Int32

    public init(takingOwnershipOf fd: Int32) {
        precondition(fd >= 0, "OwnedFD of a negative fd")
        self.fd = fd
    }

    deinit {
        if fd >= 0 { Syscall.close(fd) }
    }

    /// The fd, still owned by this object.
    public var rawValue: Int32 {
        precondition(fd >= 0, "use of a taken or closed OwnedFD")
        return fd
    }

    public var isOpen: Bool { fd >= 0 }

    /// Hands the fd to the caller, who now closes it.
    public func take() -> Int32 {
        precondition(fd >= 0, "take of a taken or closed OwnedFD")
        let value = fd
        fd = -1
        return value
    }

    /// Closes the fd now.
    public func close() {
        if fd >= 0 {
            Syscall.close(fd)
            fd = -1
        }
    }

    public var description: String { "fd \(fd)" }
}
