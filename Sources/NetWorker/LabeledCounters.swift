import Shared

/// Counters per label set, for the TCP and DNS families of §15.1: at most `maxLabelSets` sets
/// (past it, new ones are not counted: a bound on what a stream of distinct peers can make this
/// process hold), rendered as Prometheus counter families on a scrape.
final class LabeledCounters<Key: Hashable, Counters>: @unchecked Sendable {
    typealias Family = (name: String, help: String, value: (Counters) -> UInt64)

    private let lock = Mutex()
    private var counters: [Key: Counters] = [:]
    private let maxLabelSets: Int
    private let empty: Counters
    private let render: (Key) -> String

    init(maxLabelSets: Int, empty: Counters, render: @escaping (Key) -> String) {
        self.maxLabelSets = maxLabelSets
        self.empty = empty
        self.render = render
    }

    func update(_ key: Key, _ body: (inout Counters) -> Void) {
        lock.withLock {
            if counters[key] == nil && counters.count >= maxLabelSets { return }
            body(&counters[key, default: empty])
        }
    }

    /// Each label set rendered, with its counters, in a stable order.
    func snapshot() -> [(String, Counters)] {
        lock.withLock { counters }.map { (render($0.key), $0.value) }.sorted { $0.0 < $1.0 }
    }

    /// `# HELP`, `# TYPE … counter` and one `<name>_total{labels} value` per label set, for each
    /// family, label sets in a stable order.
    func lines(_ families: [Family]) -> [String] {
        let snapshot = snapshot()
        var lines: [String] = []
        for family in families {
            lines += ["# HELP \(family.name) \(family.help)", "# TYPE \(family.name) counter"]
            for (rendered, counters) in snapshot { lines.append("\(family.name)_total\(rendered) \(family.value(counters))") }
        }
        return lines
    }
}
