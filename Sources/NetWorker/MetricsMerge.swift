/// Sums the Prometheus sample lines of several NetWorkers (its own and what the others published
/// in their counter regions) into one set, as a scrape that lands on any NetWorker must show.
/// A sample line is `series value`, where the series is everything before the last space and the
/// value a non-negative integer (our counters and gauges are); the same series from several
/// workers is summed. Comment lines (`# HELP`, `# TYPE`) are kept once. Order: first seen. A
/// peer's text is another process's bytes: lines that do not parse are dropped, never trusted.
/// Pure Swift, no imports (fuzzed as `metrics_merge`).
enum MetricsMerge {
    /// The most lines taken from one peer and the longest line (a region is 4 MiB).
    static let maxLinesPerText = 100_000
    static let maxLineBytes = 4096

    static func merge(own: [String], peers: [[UInt8]]) -> [String] {
        var order: [String] = []
        var sums: [String: UInt64] = [:]
        var comments = Set<String>()
        func take(_ line: Substring) {
            guard !line.isEmpty, line.utf8.count <= maxLineBytes else { return }
            if line.hasPrefix("#") {
                let comment = String(line)
                if comments.insert(comment).inserted { order.append(comment) }
                return
            }
            guard let space = line.lastIndex(of: " "), space > line.startIndex else { return }
            let series = String(line[..<space])
            guard let value = UInt64(line[line.index(after: space)...]), isSeries(series) else { return }
            if let sum = sums[series] {
                sums[series] = sum &+ value
            } else {
                sums[series] = value
                order.append(series)
            }
        }
        for line in own { take(Substring(line)) }
        for text in peers {
            let lines = String(decoding: text, as: UTF8.self).split(separator: "\n", maxSplits: maxLinesPerText, omittingEmptySubsequences: true)
            for line in lines.prefix(maxLinesPerText) { take(line) }
        }
        return order.map { line in sums[line].map { "\(line) \($0)" } ?? line }
    }

    /// A metric name with optional `{labels}`: no spaces or newlines, and a name of
    /// `[a-zA-Z_:][a-zA-Z0-9_:]*`, so a peer cannot inject a line of another shape.
    static func isSeries(_ series: String) -> Bool {
        let name = series.prefix { $0 != "{" }
        guard let first = name.first, first.isASCII, first.isLetter || first == "_" || first == ":" else { return false }
        guard name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == ":") }) else { return false }
        let labels = series.dropFirst(name.count)
        if labels.isEmpty { return true }
        return labels.hasPrefix("{") && labels.hasSuffix("}") && !labels.contains("\n") && !labels.contains("\r")
    }
}
