/// libFuzzer target: text as an IP address and as a CIDR prefix (the mesh model's parsers, which
/// the local config and xDS feed). Nothing may trap; a parsed address prints canonically and
/// parses back to itself; a prefix contains its own address.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzIPAddress(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    if let address = IPAddress(text) {
        guard IPAddress(address.description) == address else { fatalError("\(text) prints as \(address) which does not parse back") }
        guard address.bytes.count == 4 || address.bytes.count == 16 else { fatalError("\(address.bytes.count) bytes") }
    }
    // The IPv4-mapped fast path takes nothing the general IPv6 parser reads differently.
    if let fast = IPAddress.parseIPv4Mapped(text), IPAddress.parseIPv6(text) != fast {
        fatalError("\(text): the mapped fast path and the IPv6 parser disagree")
    }
    if let prefix = IPPrefix(text) {
        guard prefix.contains(prefix.address) else { fatalError("\(prefix) does not contain its address") }
    }
    return 0
}
