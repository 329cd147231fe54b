/// libFuzzer target for MetricsMerge: a peer NetWorker's counter region is another process's
/// bytes. Nothing may trap; every line out is one of our comments or a strictly shaped sample of
/// one of our families (a counter's samples end in _total; a histogram's in _bucket, _count or
/// _sum), and a peer can only add to a series, decimals (a histogram's sum) included.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let own = ["# HELP a_total A.", "# TYPE a counter", "a_total{x=\"1\"} 5",
               "# TYPE h histogram", "h_bucket{le=\"1\"} 2", "h_sum 0.500000000", "h_count 2"]
    let merged = MetricsMerge.merge(own: own, peers: [bytes, bytes])
    for line in merged where !line.hasPrefix("#") {
        guard let sample = MetricsMerge.parseSample(Substring(line)),
              ["a_total", "h_bucket", "h_sum", "h_count"].contains(sample.name) else {
            fatalError("merged line of another shape or family: \(line)")
        }
        if sample.series == "a_total{x=\"1\"}" && sample.value < 5 { fatalError("a peer lowered a sum: \(line)") }
        if sample.series == "h_sum" && sample.value == 0 && (sample.nanos ?? 0) < 500_000_000 {
            fatalError("a peer lowered a decimal sum: \(line)")
        }
    }
    for line in merged where line.hasPrefix("#") {
        guard own.contains(line) else { fatalError("a peer's comment came through: \(line)") }
    }
    return 0
}
