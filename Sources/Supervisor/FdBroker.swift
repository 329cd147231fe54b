import Shared
#if canImport(Glibc)
import Glibc
#endif

/// Makes every listening socket and keeps its copy for the Supervisor's lifetime, so that while a
/// NetWorker is replaced new connections wait in the kernel's backlog and are served by the
/// replacement instead of being refused (DESIGN.md, fd broker).
///
/// With several NetWorkers each gets its own socket per address, bound with SO_REUSEPORT, so the
/// kernel spreads connections between them. Sharing one socket would wake every worker for each
/// connection and all but one would find nothing to accept (SwiftNIO treats that as a broken
/// invariant). A dead worker's connections wait in its socket's backlog for its replacement.
final class FdBroker {
    struct Listener {
        let name: String
        let setting: String
        let address: SocketAddress
        /// One socket per NetWorker index.
        let fds: [OwnedFD]
    }

    private(set) var listeners: [Listener] = []

    enum BrokerError: Error, CustomStringConvertible {
        case cannotListen(setting: String, address: SocketAddress, SyscallError)
        var description: String {
            switch self {
            case .cannotListen(let setting, let address, let error):
                return "cannot listen on \(setting)=\(address): \(error)"
            }
        }
    }

    /// The listeners of the local mode, by wire name and setting (ISTIO_COMPAT §2).
    /// In-pod mode has none of the data-plane ones: each pod's are made in its namespace.
    static func localModeListeners(_ configuration: Configuration) -> [(String, String)] {
        var result: [(String, String)] = []
        if !configuration.isInPodMode {
            result = [("outbound", "ZTUNNEL_OUTBOUND_ADDR"), ("inbound-plaintext", "ZTUNNEL_INBOUND_PLAINTEXT_ADDR"),
                      ("inbound", "ZTUNNEL_INBOUND_ADDR")]
            if configuration.isSocks5Enabled { result.append(("socks5", "ZTUNNEL_SOCKS5_ADDR")) }
        }
        result += [("admin", "ZTUNNEL_ADMIN_ADDR"), ("stats", "ZTUNNEL_STATS_ADDR"), ("readiness", "ZTUNNEL_READINESS_ADDR")]
        return result
    }

    func open(_ configuration: Configuration, copies: Int) throws {
        let bounds = Bounds(configuration)
        for (name, setting) in Self.localModeListeners(configuration) {
            // The setting was validated as an address when the configuration was read.
            guard let address = configuration.address(setting) else { continue }
            let options = Bounds.isHTTPListener(name) ? nil : bounds
            do {
                let fds = try (0..<copies).map { _ in try Self.listen(on: address, reusePort: copies > 1, options: options) }
                listeners.append(Listener(name: name, setting: setting, address: address, fds: fds))
            } catch let error as SyscallError {
                throw BrokerError.cannotListen(setting: setting, address: address, error)
            }
        }
    }

    /// Closes the Supervisor's copies: part of the drain, so that once the workers close theirs
    /// the kernel refuses new connections.
    func closeAll() {
        for listener in listeners { listener.fds.forEach { $0.close() } }
        listeners.removeAll()
    }

    private static func listen(on address: SocketAddress, reusePort: Bool, options: Bounds?) throws -> OwnedFD {
        let family = address.family == .ipv4 ? AF_INET : AF_INET6
        let fd = OwnedFD(takingOwnershipOf: try Syscall.retrying("socket") {
            socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        })
        var one: Int32 = 1
        var zero: Int32 = 0
        _ = try Syscall.retrying("setsockopt(SO_REUSEADDR)") {
            setsockopt(fd.rawValue, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        if reusePort {
            _ = try Syscall.retrying("setsockopt(SO_REUSEPORT)") {
                setsockopt(fd.rawValue, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size))
            }
        }
        if address.family == .ipv6 {
            // [::] serves IPv4 too, as ztunnel's dual-stack wildcard does.
            _ = try Syscall.retrying("setsockopt(IPV6_V6ONLY)") {
                setsockopt(fd.rawValue, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &zero, socklen_t(MemoryLayout<Int32>.size))
            }
        }
        try options?.applyToListener(fd.rawValue)
        _ = try address.withSockAddr { pointer, length in
            try Syscall.retrying("bind") { bind(fd.rawValue, pointer, length) }
        }
        _ = try Syscall.retrying("listen") { Glibc.listen(fd.rawValue, 1024) }
        return fd
    }
}

extension Bounds {
    /// Sets TCP_NODELAY and the keepalive options on a proxy listener before it listens: Linux
    /// copies them to every connection it accepts, including those that wait in the backlog
    /// before a NetWorker adopts the listener; no NetWorker sets them per connection.
    func applyToListener(_ fd: Int32) throws {
        for option in [(level: Int32(IPPROTO_TCP), name: TCP_NODELAY, value: Int32(1))] + keepaliveSocketOptions {
            var value = option.value
            _ = try Syscall.retrying("setsockopt(\(option.level), \(option.name))") {
                setsockopt(fd, option.level, option.name, &value, socklen_t(MemoryLayout<Int32>.size))
            }
        }
    }
}
