#if canImport(Glibc)
import Glibc
#endif

/// `CA_ADDRESS` as upstream writes it (ISTIO_COMPAT §4.2): `[https://]host:port`, the host a DNS
/// name, an IPv4 literal or a bracketed IPv6 literal. Read by the CertWorker (to connect) and by
/// the Supervisor (the CertWorker's Landlock policy allows TCP to this port only).
public enum CAAddress {
    /// The host (without brackets) and port, or nil when `text` is not of that form.
    public static func parse(_ text: String) -> (host: String, port: UInt16)? {
        var address = Substring(text)
        for scheme in ["https://", "http://"] where address.hasPrefix(scheme) { address = address.dropFirst(scheme.count) }
        guard let colon = address.lastIndex(of: ":"), let port = UInt16(address[address.index(after: colon)...]), port > 0 else {
            return nil
        }
        var host = address[..<colon]
        if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        guard !host.isEmpty, !host.contains("/"), !host.contains("[") else { return nil }
        return (String(host), port)
    }

    public static func port(of text: String) -> UInt16? { parse(text)?.port }

    /// Whether reaching `text` takes a DNS lookup: its host is a name, not an IPv4 or IPv6
    /// literal. False for an address that does not parse (nothing is looked up for it).
    public static func needsLookup(_ text: String) -> Bool {
        guard let host = parse(text)?.host else { return false }
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) != 1 && inet_pton(AF_INET6, host, &v6) != 1
    }
}
