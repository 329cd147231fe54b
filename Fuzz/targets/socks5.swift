/// libFuzzer target: any bytes from a SOCKS5 client, fed to `Socks5Parser` in chunks whose sizes
/// the input's first byte chooses (a real client's bytes arrive split anywhere). Nothing may
/// trap; once the parser has decided (`connect` or `fail`) it stays decided, and a `connect`
/// names a port and a numeric host or a lowercased DNS-shaped name.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSocks5(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let first = bytes.first else { return 0 }
    let chunk = Int(first % 7) + 1
    var parser = Socks5Parser()
    var decided = false
    var offset = 1
    while offset <= bytes.count {
        let end = min(bytes.count, offset + chunk)
        var action = parser.feed(Array(bytes[offset..<end]))
        while case .reply = action { action = parser.feed([]) }
        switch action {
        case .needMore:
            break
        case .reply:
            fatalError("reply after the loop")
        case .connect(let host, _, _):
            if decided { fatalError("a second decision") }
            // A numeric address, or a name shaped like a DNS name (ATYP 3), lowercased.
            let shaped = host.allSatisfy { $0.isASCII && ($0.isNumber || ("a"..."z").contains($0) || $0 == "." || $0 == ":" || $0 == "-") }
            if host.isEmpty || !shaped || host.first == "-" { fatalError("host \(host)") }
            decided = true
        case .fail:
            if decided { fatalError("a second decision") }
            decided = true
        }
        if end == bytes.count { break }
        offset = end
    }
    return 0
}
