import Shared
#if canImport(Glibc)
import Glibc
#endif

/// The pods' DNS proxy forwards over UDP through sockets made here (a NetWorker may not make UDP
/// sockets): one per nameserver of ztunnel's /etc/resolv.conf, connected to its port 53. Being
/// connected does not stop a datagram sent with another address (a known gap, THREAT_MODEL.md).
/// Read again at every NetWorker start.
enum DNSUpstreams {
    /// The search domains of `path` (none when it cannot be read).
    static func searchDomains(resolvConf path: String = "/etc/resolv.conf") -> [String] {
        guard let bytes = try? Syscall.readFile(path, limit: 64 << 10) else { return [] }
        return ResolvConf.searchDomains(String(decoding: bytes, as: UTF8.self))
    }

    static func connectedSockets(resolvConf path: String = "/etc/resolv.conf") -> [OwnedFD] {
        let text: String
        do {
            text = String(decoding: try Syscall.readFile(path, limit: 64 << 10), as: UTF8.self)
        } catch {
            Log.warn("dns proxy: cannot read \(path); names outside the mesh get SERVFAIL", [("error", "\(error)")])
            return []
        }
        var sockets: [OwnedFD] = []
        for server in ResolvConf.nameservers(text) {
            let text = server.contains(":") ? "[\(server)]:53" : "\(server):53"
            guard let address = SocketAddress.parse(text) else {
                Log.warn("dns proxy: nameserver \(server) is not an address; skipped")
                continue
            }
            let fd = socket(address.family == .ipv4 ? AF_INET : AF_INET6, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { continue }
            let socketFD = OwnedFD(takingOwnershipOf: fd)
            let rc = address.withSockAddr { pointer, length in connect(fd, pointer, length) }
            guard rc == 0 else {
                Log.warn("dns proxy: cannot reach nameserver \(server)", [("errno", "\(errno)")])
                continue
            }
            sockets.append(socketFD)
        }
        if sockets.isEmpty { Log.warn("dns proxy: no usable nameserver in \(path); names outside the mesh get SERVFAIL") }
        return sockets
    }
}
