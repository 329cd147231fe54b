/// libFuzzer target: any bytes as the request target of an admin/stats/readiness request
/// (issue #6: `GET /healthz/ready?= HTTP/1.1` used to trap here). Nothing may trap, the path
/// never contains the query, and no more than `maxParameters` parameters are kept.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRequestTarget(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let uri = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let target = RequestTarget(parsing: uri)
    if target.path.contains("?") { fatalError("path keeps the query: \(target.path)") }
    if target.query.count > RequestTarget.maxParameters { fatalError("\(target.query.count) parameters kept") }
    if !uri.hasPrefix(target.path) { fatalError("path is not a prefix of the target") }
    return 0
}
