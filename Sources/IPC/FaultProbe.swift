import Shared
internal import CShims
#if canImport(Glibc)
import Glibc
#endif

/// The CertWorker's and xDS worker's side of fault injection (tests only): tries what its walls
/// forbid and logs the outcome, which the sandbox tests read. Opening a file must fail (seccomp
/// EACCES, and Landlock under it); mkdir is a kill; a TCP connect must fail unless it is to the
/// CA's port (CertWorker) or istiod's (xDS worker) (Landlock).
public enum FaultProbe {
    public static func run(_ kind: FaultKind, port: UInt16, enabled: Bool) {
        let role = kind.forXDSWorker ? "xds" : "cert"
        guard enabled else {
            Log.error("security: fault \(kind) relayed while fault injection is disabled here; ignored")
            return
        }
        switch kind {
        case .openFile, .xdsOpenFile:
            let fd = open("/etc/hostname", O_RDONLY | O_CLOEXEC)
            report("\(role)-open-file", Int(fd), errno)
            if fd >= 0 { close(fd) }
        case .certStatFile:
            var info = stat()
            report("cert-stat-file", Int(stat("/etc/shadow", &info)), errno)
        case .makeDirectory, .xdsMakeDirectory:
            let path = "/tmp/ztunnel-wall-probe-\(getpid())"
            let rc = mkdir(path, 0o700)
            let error = errno
            if rc == 0 { rmdir(path) }
            report("\(role)-make-dir", Int(rc), error)
        case .xdsBadSnapshot, .xdsSnapshotStorm, .certAuditReservedKey, .certAuditUnlistedEvent, .certShutdownRequest, .certAuditFlood,
             .certSignerFlood, .certIdentityFlood, .certBadClientSignature, .certBadServerSignature:
            break  // sent by the worker itself, which holds the Supervisor channel
        case .certCloneNamespace, .certNetlinkSocket, .certUnixSocket, .certRawSocket, .certSetns, .certUnshare, .certPtrace,
             .certSignalOther, .xdsCloneNamespace, .xdsNetlinkSocket, .xdsUnixSocket, .xdsRawSocket, .xdsSetns, .xdsUnshare,
             .xdsPtrace, .xdsSignalOther:
            tryWall(kind)
        case .certUDPSocket, .xdsUDPSocket:
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { return report(kind.probeName, -1, errno) }
            defer { close(fd) }
            let probe = Array("\(kind.probeName) from pid \(getpid())".utf8)
            let sent = withLoopback(port: port) { sendto(fd, probe, probe.count, 0, $0, $1) }
            report("\(kind.probeName) port \(port)", sent, errno)
        case .connect, .xdsConnect:
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { return report("\(role)-connect", -1, errno) }
            defer { close(fd) }
            let rc = withLoopback(port: port) { Glibc.connect(fd, $0, $1) }
            report("\(role)-connect port \(port)", Int(rc), errno)
        }
    }

    /// Runs `body` with 127.0.0.1:`port` as a socket address and its length.
    private static func withLoopback<T>(port: UInt16, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }

    /// One of the NetWorker's wall probes, here: harmless should the wall let it through (a
    /// socket is closed, a signal is 0, a namespace would be this worker's alone).
    private static func tryWall(_ kind: FaultKind) {
        guard let wall = kind.wall else { return }
        let result: Int
        switch wall {
        case .cloneNamespace: result = CShims_fault_clone_newuser()
        case .netlinkSocket: result = CShims_fault_netlink_socket()
        case .unixSocket: result = CShims_fault_socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        case .rawSocket: result = CShims_fault_socket(AF_INET, Int32(SOCK_RAW.rawValue), Int32(IPPROTO_ICMP))
        case .setns: result = CShims_fault_setns()
        case .unshare: result = CShims_fault_unshare()
        case .ptrace: result = CShims_fault_ptrace_parent()
        case .signalOther: result = CShims_fault_signal_parent()
        }
        let error = errno
        if result >= 0, [.netlinkSocket, .unixSocket, .rawSocket].contains(wall) { close(Int32(result)) }
        report(kind.probeName, result, error)
    }

    private static func report(_ what: String, _ result: Int, _ error: Int32) {
        if result < 0 {
            Log.warn("fault \(what): refused: \(String(cString: strerror(error))) (errno \(error))")
        } else {
            Log.warn("fault \(what): allowed")
        }
    }
}
