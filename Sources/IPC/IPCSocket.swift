internal import CShims
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// One end of an IPC channel: an AF_UNIX SOCK_SEQPACKET socket (message boundaries kept, fds
/// carried with SCM_RIGHTS). It owns the wire (sendmsg/recvmsg); SwiftNIO has no SCM_RIGHTS, so
/// nothing else reads or writes these sockets (STYLE.md §3).
public final class IPCSocket: @unchecked Sendable {
    public let fd: OwnedFD
    private let sendLock = Mutex()

    public init(_ fd: OwnedFD) { self.fd = fd }

    /// A connected pair, both ends close-on-exec.
    public static func pair() throws -> (IPCSocket, IPCSocket) {
        let (a, b) = try Syscall.socketpair(type: Int32(SOCK_SEQPACKET.rawValue))
        return (IPCSocket(OwnedFD(takingOwnershipOf: a)), IPCSocket(OwnedFD(takingOwnershipOf: b)))
    }

    /// Sends one frame and its fds. The fds stay owned by the caller's `OwnedFD`s (the kernel
    /// duplicates them into the peer). Safe to call from several threads. With `blocking: false`
    /// a full socket (a peer that stopped reading) throws `IPCError.wouldBlock` instead of waiting:
    /// a process must never be wedged by a peer it does not trust.
    public func send(_ frame: IPCFrame, blocking: Bool = true) throws {
        let bytes = try frame.encodedBytes()
        precondition(frame.fds.count <= IPCFrame.maxFds, "frame with \(frame.fds.count) fds")
        try sendRaw(bytes, fds: frame.fds.map { $0.rawValue }, blocking: blocking)
    }

    /// Sends bytes that need not be a valid frame; for the tests and the fault-injection hook that
    /// prove the receiver refuses them.
    public func sendRaw(_ bytes: [UInt8], fds: [Int32] = [], blocking: Bool = true) throws {
        try sendLock.withLock {
            var iov = iovec()
            var bytes = bytes
            try bytes.withUnsafeMutableBytes { raw in
                iov.iov_base = raw.baseAddress
                iov.iov_len = raw.count
                let controlSize = fds.isEmpty ? 0 : CShims_CMSG_SPACE(fds.count * MemoryLayout<Int32>.size)
                var control = [UInt8](repeating: 0, count: max(controlSize, 1))
                try control.withUnsafeMutableBytes { controlRaw in
                    try withUnsafeMutablePointer(to: &iov) { iovPointer in
                        var header = msghdr()
                        header.msg_iov = iovPointer
                        header.msg_iovlen = 1
                        if !fds.isEmpty {
                            header.msg_control = controlRaw.baseAddress
                            header.msg_controllen = controlSize
                            guard let cmsg = CShims_CMSG_FIRSTHDR(&header) else { throw IPCError.system("no cmsg space") }
                            cmsg.pointee.cmsg_level = SOL_SOCKET
                            cmsg.pointee.cmsg_type = Int32(SCM_RIGHTS)
                            cmsg.pointee.cmsg_len = CShims_CMSG_LEN(fds.count * MemoryLayout<Int32>.size)
                            guard let data = UnsafeMutableRawPointer(CShims_CMSG_DATA(cmsg)) else { throw IPCError.system("no cmsg data") }
                            for (index, fd) in fds.enumerated() {
                                data.storeBytes(of: fd, toByteOffset: index * MemoryLayout<Int32>.size, as: Int32.self)
                            }
                        }
                        let flags = Int32(MSG_NOSIGNAL) | (blocking ? 0 : Int32(MSG_DONTWAIT))
                        do {
                            _ = try Syscall.retrying("sendmsg") { sendmsg(fd.rawValue, &header, flags) }
                        } catch let error as SyscallError where error.errno == EPIPE || error.errno == ECONNRESET {
                            throw IPCError.closed
                        } catch let error as SyscallError where error.errno == EAGAIN {
                            throw IPCError.wouldBlock
                        }
                    }
                }
            }
        }
    }

    public enum Received {
        case frame(IPCFrame)
        case wouldBlock
    }

    /// Receives one frame. Throws `IPCError.closed` at end of stream, and a frame error for a packet
    /// that is truncated, oversize, carries truncated control data or miscounts its fds. Every fd
    /// that arrived is owned (and so closed on refusal) before the packet is looked at.
    /// `defusingFds` (the Supervisor, reading workers): every fd that arrived gets SO_LINGER off
    /// first, so closing a refused socket never blocks (a socket with linger on and unsent data
    /// would hold `close` for its linger time); for a non-socket the call fails harmlessly.
    /// Bytes sent on this socket that the peer has not read yet (SIOCOUTQ): lets a sender keep
    /// best-effort messages off a channel that is filling, so they never crowd out the ones whose
    /// loss would cost the peer its life.
    public var queuedBytes: Int {
        var queued: Int32 = 0
        guard ioctl(fd.rawValue, 0x5411 /* SIOCOUTQ */, &queued) == 0 else { return Int.max }
        return Int(queued)
    }

    /// Whether a best-effort message may go now: the channel holds less than `limit` unread
    /// (kernel accounting: a small frame counts about 1 KiB).
    public func hasHeadroom(below limit: Int = 16 * 1024) -> Bool { queuedBytes < limit }

    public func receive(blocking: Bool = true, defusingFds: Bool = false) throws -> Received {
        guard let record = try Self.receiveRecord(fd: fd.rawValue, maxBytes: IPCFrame.maxFrame, maxFds: IPCFrame.maxFds,
                                                   blocking: blocking, defusingFds: defusingFds) else {
            return .wouldBlock
        }
        let (bytes, fds) = record
        return .frame(try IPCFrame.decode(packet: bytes, fds: fds))
    }

    /// One record from a SOCK_SEQPACKET socket with the fds that came with it (close-on-exec):
    /// nil when nothing is waiting (non-blocking); refuses a truncated record or control
    /// message, more than `maxFds` fds, and end of stream (`IPCError.closed`). The fds of a
    /// refused record are closed.
    public static func receiveRecord(fd: Int32, maxBytes: Int, maxFds: Int, blocking: Bool,
                                     defusingFds: Bool = false) throws -> ([UInt8], [OwnedFD])? {
        var buffer = [UInt8](repeating: 0, count: maxBytes + 1)
        let controlSize = CShims_CMSG_SPACE((maxFds + 1) * MemoryLayout<Int32>.size)
        var control = [UInt8](repeating: 0, count: controlSize)
        var received = 0
        var flags: Int32 = 0
        var fds: [OwnedFD] = []
        try buffer.withUnsafeMutableBytes { raw in
            try control.withUnsafeMutableBytes { controlRaw in
                var iov = iovec(iov_base: raw.baseAddress, iov_len: raw.count)
                try withUnsafeMutablePointer(to: &iov) { iovPointer in
                    var header = msghdr()
                    header.msg_iov = iovPointer
                    header.msg_iovlen = 1
                    header.msg_control = controlRaw.baseAddress
                    header.msg_controllen = controlSize
                    let options = Int32(MSG_CMSG_CLOEXEC) | (blocking ? 0 : Int32(MSG_DONTWAIT))
                    do {
                        received = try Syscall.retrying("recvmsg") { recvmsg(fd, &header, options) }
                    } catch let error as SyscallError where error.errno == EAGAIN {
                        received = -1
                        return
                    } catch let error as SyscallError where error.errno == ECONNRESET {
                        throw IPCError.closed
                    }
                    flags = header.msg_flags
                    var cmsg = CShims_CMSG_FIRSTHDR(&header)
                    while let current = cmsg {
                        if current.pointee.cmsg_level == SOL_SOCKET && current.pointee.cmsg_type == Int32(SCM_RIGHTS) {
                            let dataLength = Int(current.pointee.cmsg_len) - CShims_CMSG_LEN(0)
                            let count = dataLength / MemoryLayout<Int32>.size
                            guard let data = UnsafeRawPointer(CShims_CMSG_DATA(current)) else { break }
                            for index in 0..<count {
                                let value = data.loadUnaligned(fromByteOffset: index * MemoryLayout<Int32>.size, as: Int32.self)
                                if value >= 0 { fds.append(OwnedFD(takingOwnershipOf: value)) }
                            }
                        }
                        cmsg = CShims_CMSG_NXTHDR(&header, current)
                    }
                }
            }
        }
        if defusingFds {
            for received in fds {
                var off = linger(l_onoff: 0, l_linger: 0)
                _ = setsockopt(received.rawValue, SOL_SOCKET, SO_LINGER, &off, socklen_t(MemoryLayout<linger>.size))
            }
        }
        if received < 0 { return nil }
        if flags & Int32(MSG_CTRUNC) != 0 { throw IPCError.controlTruncated }
        if flags & Int32(MSG_TRUNC) != 0 || received > maxBytes { throw IPCError.oversize(length: received, max: maxBytes) }
        if received == 0 && fds.isEmpty { throw IPCError.closed }
        if fds.count > maxFds { throw IPCError.fdCountMismatch(declared: maxFds, received: fds.count) }
        return (Array(buffer[0..<received]), fds)
    }
}
