/// One configuration setting: its environment variable (real ztunnel's name where one exists,
/// `ZTUNNEL_*` for ours), its flag, its default and how a value is checked.
public struct Setting: Sendable {
    public enum Kind: Sendable {
        case string
        case path
        case bool
        case integer(ClosedRange<Int>)
        case duration
        case socketAddress
        case choice([String])
        /// RUST_LOG: `level` or `target=level` items, comma-separated (Log.Directives).
        case logDirectives
        /// ZTUNNEL_WORKER_THREADS: a number or `N%` of the CPUs (WorkerThreads).
        case threads
        /// A Kubernetes CPU quantity (`2`, `1.5`, `500m`), as the downward API or the chart's
        /// values give it.
        case cpus

        /// Whether "" stands for the default (numbers, switches, durations) rather than "off".
        var emptyMeansDefault: Bool {
            switch self {
            case .bool, .integer, .duration, .threads, .choice, .logDirectives, .cpus: return true
            case .string, .path, .socketAddress: return false
            }
        }
    }

    public let name: String
    public let kind: Kind
    public let defaultValue: String
    public let help: String
    /// A secret (a literal token) is sent to no worker and shown nowhere.
    public let isSecret: Bool

    public init(_ name: String, _ kind: Kind, default defaultValue: String, _ help: String, isSecret: Bool = false) {
        self.name = name
        self.kind = kind
        self.defaultValue = defaultValue
        self.help = help
        self.isSecret = isSecret
    }

    /// `--net-workers` for `ZTUNNEL_NET_WORKERS`, `--local-xds-path` for `LOCAL_XDS_PATH`.
    public var flag: String {
        var base = name
        if base.hasPrefix("ZTUNNEL_") { base.removeFirst("ZTUNNEL_".count) }
        return "--" + String(base.lowercased().map { $0 == "_" ? "-" : $0 })
    }

    /// Checks `value` against the kind; returns the reason it is wrong, or nil.
    public func problem(with value: String) -> String? {
        switch kind {
        case .string, .path:
            return nil
        case .bool:
            return Setting.parseBool(value) == nil ? "expected true or false, got \"\(value)\"" : nil
        case .integer(let range):
            guard let number = Int(value) else { return "expected a whole number, got \"\(value)\"" }
            return range.contains(number) ? nil : "\(number) is outside \(range.lowerBound)...\(range.upperBound)"
        case .duration:
            return Duration.parse(value) == nil ? "expected a duration such as 500ms, 5s, 2m or 1h, got \"\(value)\"" : nil
        case .socketAddress:
            return SocketAddress.parse(value) == nil ? "expected IP:PORT such as 127.0.0.1:15000 or [::]:15008, got \"\(value)\"" : nil
        case .choice(let options):
            return options.contains(value) ? nil : "expected one of \(options.joined(separator: ", ")), got \"\(value)\""
        case .threads:
            return WorkerThreads.problem(with: value)
        case .cpus:
            return WorkerThreads.cpus(value) == nil ? "expected a CPU quantity such as 2, 1.5 or 500m (at most 4096), got \"\(value)\"" : nil
        case .logDirectives:
            // It travels to every worker (and back with /logging?reset): bounded like a posted filter.
            guard value.utf8.count <= LogFilterChange.maxFilterBytes else { return "longer than \(LogFilterChange.maxFilterBytes) bytes" }
            return Log.Directives.problem(with: value)
        }
    }

    public static func parseBool(_ value: String) -> Bool? {
        switch value.lowercased() {
        case "true", "1", "yes", "on": return true
        case "false", "0", "no", "off": return false
        default: return nil
        }
    }
}

/// Durations in the forms ztunnel's configuration uses: `250ms`, `5s`, `2m`, `1h`, or bare seconds.
public enum Duration {
    /// The longest duration accepted: ten years. Longer values are refused, so that deadlines
    /// computed from them (now + duration) cannot overflow and trap.
    public static let maxMilliseconds: Int64 = 10 * 365 * 24 * 3_600_000

    /// Milliseconds, or nil if `text` is not a duration (or is longer than ten years).
    public static func parse(_ text: String) -> Int64? {
        guard let value = parseUnbounded(text), value <= maxMilliseconds else { return nil }
        return value
    }

    private static func parseUnbounded(_ text: String) -> Int64? {
        let units: [(String, Int64)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)]
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            let number = text.dropLast(suffix.count)
            // "5ms" also ends in "s": only accept when what is left is a number.
            if let value = Int64(number), value >= 0, value < Int64.max / factor { return value * factor }
        }
        if let seconds = Int64(text), seconds >= 0, seconds < Int64.max / 1000 { return seconds * 1000 }
        return nil
    }
}
