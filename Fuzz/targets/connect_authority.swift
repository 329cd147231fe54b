/// libFuzzer target: any bytes as an HBONE CONNECT `:authority`. Nothing may trap; what parses
/// prints back to a form that parses to the same value.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConnectAuthority(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    guard let parsed = ConnectAuthority.parse(text) else { return 0 }
    let printed: String
    switch parsed {
    case .address(let host, let port): printed = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    case .hostname(let host, let port): printed = "\(host):\(port)"
    }
    guard ConnectAuthority.parse(printed) == parsed else { fatalError("\(text) -> \(parsed) -> \(printed) does not round-trip") }
    return 0
}
