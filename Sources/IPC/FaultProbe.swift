import Shared
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
        case .makeDirectory, .xdsMakeDirectory:
            let path = "/tmp/ztunnel-wall-probe-\(getpid())"
            let rc = mkdir(path, 0o700)
            let error = errno
            if rc == 0 { rmdir(path) }
            report("\(role)-make-dir", Int(rc), error)
        case .xdsBadSnapshot:
            break  // sent by the xDS worker itself, which holds the Supervisor channel
        case .connect, .xdsConnect:
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { return report("\(role)-connect", -1, errno) }
            defer { close(fd) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
            let rc = withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            report("\(role)-connect port \(port)", Int(rc), errno)
        }
    }

    private static func report(_ what: String, _ result: Int, _ error: Int32) {
        if result < 0 {
            Log.warn("fault \(what): refused: \(String(cString: strerror(error))) (errno \(error))")
        } else {
            Log.warn("fault \(what): allowed")
        }
    }
}
