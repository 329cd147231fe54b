import FoundationEssentials
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// `ztunnel certs`: the running daemon's certificates as a table, read from the admin
/// /config_dump (the same data `istioctl ztunnel-config certificates` shows).
enum CertsCommand {
    struct Dump: Decodable {
        struct Entry: Decodable {
            struct Cert: Decodable { var serialNumber: String; var expirationTime: String }
            var identity: String
            var state: String
            var certChain: [Cert]
            var nextRenewal: String?
            var issuer: String?
            var failedRenewals: Int?
        }
        var certificates: [Entry]
    }

    static func run(configuration: Configuration) -> Int32 {
        guard let address = configuration.address("ZTUNNEL_ADMIN_ADDR") else { return 1 }
        let body: [UInt8]
        do { body = try get(address, path: "/config_dump") } catch {
            FileHandleStderr.write("ztunnel certs: cannot read /config_dump from \(address): \(error)\n")
            return 1
        }
        let dump: Dump
        do { dump = try JSONDecoder().decode(Dump.self, from: Data(body)) } catch {
            FileHandleStderr.write("ztunnel certs: unexpected /config_dump: \(error)\n")
            return 1
        }
        var rows = [["IDENTITY", "STATE", "SERIAL", "NOT AFTER", "NEXT RENEWAL", "FAILED", "ISSUER"]]
        for entry in dump.certificates {
            rows.append([entry.identity, entry.state, entry.certChain.first?.serialNumber ?? "-",
                         entry.certChain.first?.expirationTime ?? "-", entry.nextRenewal ?? "-",
                         String(entry.failedRenewals ?? 0), entry.issuer ?? "-"])
        }
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        for row in rows {
            let cells = row.enumerated().map { $0.element + String(repeating: " ", count: widths[$0.offset] - $0.element.count) }
            print(cells.joined(separator: "  ").trimmingWhitespace())
        }
        return 0
    }

    /// One HTTP/1.1 GET over a plain socket; returns the body of a 200 response.
    static func get(_ address: SocketAddress, path: String) throws -> [UInt8] {
        let fd = try Syscall.retrying("socket") {
            socket(address.family == .ipv4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        defer { Syscall.close(fd) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        _ = try address.withSockAddr { pointer, length in try Syscall.retrying("connect") { connect(fd, pointer, length) } }
        try Syscall.writeAll(fd, Array("GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".utf8))
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = try chunk.withUnsafeMutableBytes { raw in try Syscall.retrying("read") { read(fd, raw.baseAddress, raw.count) } }
            if n == 0 { break }
            response += chunk[0..<n]
            if response.count > 16 << 20 { throw SyscallError(function: "read: response over 16 MiB", errno: EFBIG) }
        }
        let separator: [UInt8] = [13, 10, 13, 10]
        guard let split = (0...(max(0, response.count - 4))).first(where: { Array(response[$0..<min($0 + 4, response.count)]) == separator }),
              response.starts(with: Array("HTTP/1.1 200".utf8)) else {
            throw SyscallError(function: "GET \(path): not a 200 response", errno: EPROTO)
        }
        return Array(response[(split + 4)...])
    }
}
