/// libFuzzer target: any bytes as an HBONE CONNECT's `:authority` and as its `baggage`. Nothing
/// may trap; an authority that parses prints back to a form that parses to the same value; a
/// baggage read keeps its bounds, and what it reads writes back to a baggage that reads the same.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConnectAuthority(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    if let source = Workload(baggage: text, network: "remote") {
        for value in [source.namespace, source.clusterId, source.workloadName, source.canonicalName, source.canonicalRevision]
        where value.utf8.count > 253 || value.utf8.contains(where: { $0 <= 0x20 || $0 >= 0x7f || $0 == 0x22 || $0 == 0x3d || $0 == 0x2c }) {
            fatalError("baggage value that is not a short name: \(value.utf8.count) bytes")
        }
        guard Workload(baggage: source.baggage, network: "remote")?.baggage == source.baggage else {
            fatalError("\(text) -> \(source.baggage) does not read back the same")
        }
    }
    guard let parsed = ConnectAuthority.parse(text) else { return 0 }
    let printed: String
    switch parsed {
    case .address(let host, let port): printed = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    case .hostname(let host, let port): printed = "\(host):\(port)"
    }
    guard ConnectAuthority.parse(printed) == parsed else { fatalError("\(text) -> \(parsed) -> \(printed) does not round-trip") }
    return 0
}
