/// What `POST /logging` (ISTIO_COMPAT §17.1) does to the log filter, as a pure function so it
/// can be tested without a process: no parameter reports the filter; `level=<items>` appends
/// RUST_LOG items (`debug`, `ztunnel::proxy=debug,access=off`); `reset` goes back to the filter
/// the daemon started with, then applies `level` if given. A bad item changes nothing.
public enum LogFilterChange {
    public static let usage = """
        usage: POST /logging                 report the log filter in force
               POST /logging?level=<items>   append items: a level (off, error, warn, info, debug, trace)
                                             or target=level (ztunnel::proxy, ztunnel::identity, ztunnel::xds, access), comma-separated
               POST /logging?reset[&level=<items>]  back to the filter at start (RUST_LOG), then the items

        """
    /// A longer filter is refused: it travels to every worker and is matched on every event.
    public static let maxFilterBytes = 1024

    public enum Outcome: Equatable, Sendable {
        /// Nothing to change; report `current`.
        case report
        /// Put this filter in force everywhere.
        case change(String)
        /// 400 with this reason and the usage text.
        case refused(String)
    }

    /// `query`: the request's parameters, values still percent-encoded.
    public static func outcome(current: String, initial: String, query: [String: String]) -> Outcome {
        let unknown = query.keys.filter { $0 != "level" && $0 != "reset" }.sorted()
        if !unknown.isEmpty { return .refused("unknown parameter \(unknown.joined(separator: ", "))") }
        let reset = query["reset"] != nil
        guard let raw = query["level"] else { return reset ? .change(initial) : .report }
        guard let items = percentDecoded(raw), !items.isEmpty else { return .refused("level is empty or badly encoded") }
        if let problem = Log.Directives.problem(with: items) { return .refused(problem) }
        let base = reset ? initial : current
        let filter = base.isEmpty ? items : base + "," + items
        guard filter.utf8.count <= maxFilterBytes else {
            return .refused("the filter would be longer than \(maxFilterBytes) bytes; use reset")
        }
        return .change(filter)
    }

    /// `%2C` → `,` and `+` → space; nil when an escape is broken or decodes to invalid UTF-8.
    static func percentDecoded(_ text: String) -> String? {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            switch byte {
            case UInt8(ascii: "%"):
                guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else { return nil }
                bytes.append(high << 4 | low)
            case UInt8(ascii: "+"): bytes.append(UInt8(ascii: " "))
            default: bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
