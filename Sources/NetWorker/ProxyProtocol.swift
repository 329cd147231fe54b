import Mesh

/// The PROXY protocol v2 header 15008 writes to an application that asked for one with an
/// application tunnel (ISTIO_COMPAT §5.7): a waypoint behind ztunnel learns from it who
/// connected (source address and SPIFFE identity) and which target the client asked for.
///
/// Layout (haproxy's proxy-protocol.txt, section 2.2): the 12-byte signature, version 2 with
/// command PROXY (0x21), the family with transport STREAM (0x11 TCP over IPv4, 0x21 over IPv6),
/// the length of what follows, the two addresses, the two ports, then TLVs. The only TLV is
/// 0xD0, the source's SPIFFE identity, as upstream ztunnel sends it (0xD1, the service
/// hostname, is documented in workload.proto but upstream does not send it; nor do we).
enum ProxyProtocolV2 {
    static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    static let identityTLV: UInt8 = 0xD0

    /// The header for a connection from `source` to `destination`. When one address is IPv6,
    /// both are written as IPv6 (an IPv4 one as `::ffff:a.b.c.d`), since the header has one
    /// family for both. An identity that would not fit a TLV is left out; nil identity or an
    /// empty one: no TLV.
    static func header(source: IPAddress, sourcePort: UInt16, destination: IPAddress, destinationPort: UInt16,
                       identity: String?) -> [UInt8] {
        let asIPv6 = !source.isIPv4 || !destination.isIPv4
        let addresses = (asIPv6 ? mapped(source) + mapped(destination) : source.bytes + destination.bytes)
            + bigEndian(sourcePort) + bigEndian(destinationPort)
        var tlvs: [UInt8] = []
        if let identity, !identity.isEmpty {
            let value = Array(identity.utf8)
            // The whole length (addresses and TLVs) is a 16-bit field.
            if value.count + 3 + addresses.count <= Int(UInt16.max) {
                tlvs = [identityTLV] + bigEndian(UInt16(value.count)) + value
            }
        }
        return signature + [0x21, asIPv6 ? 0x21 : 0x11] + bigEndian(UInt16(addresses.count + tlvs.count)) + addresses + tlvs
    }

    private static func mapped(_ address: IPAddress) -> [UInt8] {
        address.isIPv4 ? [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF] + address.bytes : address.bytes
    }

    private static func bigEndian(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xFF)] }
}
