/// libFuzzer target for MetricsMerge: a peer NetWorker's counter region is another process's
/// bytes. Nothing may trap, and every line out is a comment or `series value` of our shape.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let merged = MetricsMerge.merge(own: ["a_total 1", "# TYPE a counter"], peers: [bytes, bytes])
    for line in merged where !line.hasPrefix("#") {
        guard let space = line.lastIndex(of: " "), UInt64(line[line.index(after: space)...]) != nil,
              MetricsMerge.isSeries(String(line[..<space])) else {
            fatalError("merged line of another shape: \(line)")
        }
    }
    return 0
}
