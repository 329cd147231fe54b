#if canImport(Glibc)
import Glibc
#endif
internal import CShims

/// The debug log: one line per event on stderr, plain or JSON (LOG_FORMAT), filtered by RUST_LOG's
/// level. Audit events do not go here; they go to the audit sink, which is kept apart.
public enum Log {
    public enum Level: Int, Comparable, Sendable {
        case error = 1, warn, info, debug, trace
        public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
        var name: String {
            switch self {
            case .error: return "error"
            case .warn: return "warn"
            case .info: return "info"
            case .debug: return "debug"
            case .trace: return "trace"
            }
        }
    }

    /// RUST_LOG as upstream writes it (tracing's `Targets`): comma-separated items, each a level
    /// (the default) or `target=level`. Our scopes are `access` and the processes; upstream's
    /// module paths map onto the process that does that work (`ztunnel` all of them,
    /// `ztunnel::proxy` the NetWorkers, `ztunnel::identity` the CertWorker, `ztunnel::xds` the
    /// xDS worker); other targets (hickory_server, h2, ...) are accepted and have nothing to
    /// filter here. A bad item is refused at start with its reason.
    public struct Directives: Equatable, Sendable {
        /// nil: off.
        public var fallback: Level? = .info
        public var byScope: [String: Level?] = [:]

        static let levels: [String: Level?] = ["off": nil, "error": .error, "warn": .warn, "info": .info, "debug": .debug,
                                               "trace": .trace]
        static let scopesOfTarget: [String: [String]] = [
            "access": ["access"], "supervisor": ["supervisor"], "cert-worker": ["cert-worker"], "net-worker": ["net-worker"],
            "xds-worker": ["xds-worker"], "ztunnel": ["supervisor", "cert-worker", "net-worker", "xds-worker"],
            "ztunnel::proxy": ["net-worker"], "ztunnel::identity": ["cert-worker"], "ztunnel::xds": ["xds-worker"],
        ]

        public init() {}

        public static func parse(_ text: String) throws -> Directives {
            var directives = Directives()
            var targeted: [(String, Level?)] = []
            for item in text.split(separator: ",", omittingEmptySubsequences: true).map({ $0.trimmingSpaces }) where !item.isEmpty {
                let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
                guard let level = levels[parts.last!.lowercased()] else { throw Refused("\"\(item)\": unknown level") }
                if parts.count == 1 {
                    directives.fallback = level
                    continue
                }
                let target = parts[0]
                guard !target.isEmpty, target.utf8.count <= 128,
                      target.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "_:-.".contains($0)) }) else {
                    throw Refused("\"\(item)\": a target is a module path such as ztunnel::proxy")
                }
                targeted.append((target, level))
            }
            // Broad targets first, so `ztunnel=warn,ztunnel::proxy=debug` gives the NetWorker debug.
            for (target, level) in targeted.sorted(by: { $0.0.count < $1.0.count }) {
                for scope in scopesOfTarget[target] ?? [] { directives.byScope[scope] = .some(level) }
            }
            return directives
        }

        public static func problem(with text: String) -> String? {
            do { _ = try parse(text) } catch { return "\(error); expected a level (off, error, warn, info, debug, trace) or target=level items" }
            return nil
        }

        /// The threshold for a scope (`net-worker[1]` is `net-worker`).
        func threshold(for scope: String) -> Level? {
            let base = scope.split(separator: "[").first.map(String.init) ?? scope
            if let level = byScope[base] { return level }
            return fallback
        }

        struct Refused: Error, CustomStringConvertible {
            let description: String
            init(_ description: String) { self.description = description }
        }
    }

    /// The thresholds, read on every event from any thread and replaced at run time by
    /// `/logging` (through the Supervisor): one word each, 0 = off, else the level's raw value.
    private static let thresholds: UnsafeMutablePointer<UInt64> = {
        let words = UnsafeMutablePointer<UInt64>.allocate(capacity: 2)
        words.initialize(repeating: UInt64(Level.info.rawValue), count: 2)
        return words
    }()
    nonisolated(unsafe) private static var json = false
    nonisolated(unsafe) private static var component = "ztunnel"
    /// The filter text in force (RUST_LOG syntax), and the one the process started with.
    nonisolated(unsafe) private static var filterText = "info"
    nonisolated(unsafe) private static var initialFilterText = "info"
    private static let lock = Mutex()

    /// Sets the filter (RUST_LOG, already checked), format and the component each line names.
    /// Call once at start, before other threads exist.
    public static func configure(level: String, format: String, component: String) {
        json = format == "json"
        self.component = component
        initialFilterText = level
        _ = try? setFilter(level)
    }

    /// Puts a filter (RUST_LOG syntax) in force from now on, on every thread; refuses one that
    /// does not parse and keeps the old.
    @discardableResult
    public static func setFilter(_ text: String) throws -> String {
        let directives = try Directives.parse(text)
        let encode = { (level: Level?) in UInt64(level?.rawValue ?? 0) }
        lock.withLock {
            filterText = text
            CShims_atomic_store_u64(thresholds, encode(directives.threshold(for: component)))
            CShims_atomic_store_u64(thresholds + 1, encode(directives.threshold(for: "access")))
        }
        return text
    }

    /// The filter in force, and the one RUST_LOG gave at start (what `/logging?reset` restores).
    public static var filter: String { lock.withLock { filterText } }
    public static var initialFilter: String { lock.withLock { initialFilterText } }

    public static func isEnabled(_ level: Level) -> Bool {
        UInt64(level.rawValue) <= CShims_atomic_load_u64(thresholds)
    }

    /// Whether access-log events of `level` are written.
    public static func isAccessEnabled(_ level: Level) -> Bool {
        UInt64(level.rawValue) <= CShims_atomic_load_u64(thresholds + 1)
    }

    public static func error(_ message: @autoclosure () -> String, _ fields: [(String, String)] = []) { emit(.error, message(), fields) }
    public static func warn(_ message: @autoclosure () -> String, _ fields: [(String, String)] = []) { emit(.warn, message(), fields) }
    public static func info(_ message: @autoclosure () -> String, _ fields: [(String, String)] = []) { emit(.info, message(), fields) }
    public static func debug(_ message: @autoclosure () -> String, _ fields: [(String, String)] = []) { emit(.debug, message(), fields) }

    /// An access-log event (upstream's `access` target, ISTIO_COMPAT §15.3): the scope is
    /// `access` instead of this process's component, so tools that read ztunnel's access lines
    /// find them.
    public static func access(_ level: Level, _ message: String, _ fields: [(String, String)]) {
        emit(level, message, fields, scope: "access")
    }

    private static func emit(_ level: Level, _ message: String, _ fields: [(String, String)], scope: String? = nil) {
        guard scope == "access" ? isAccessEnabled(level) : isEnabled(level) else { return }
        let time = Clock.rfc3339Now()
        let scope = scope ?? component
        var line: String
        if json {
            var members: [(String, JSON)] = [("time", .string(time)), ("level", .string(level.name)),
                                             ("scope", .string(scope)), ("message", .string(message))]
            members += fields.map { ($0.0, JSON.string($0.1)) }
            line = JSON.object(members).serialized()
        } else {
            line = "\(time)\t\(level.name)\t\(scope)\t\(message)"
            for (key, value) in fields { line += " \(key)=\(value)" }
        }
        line += "\n"
        lock.withLock {
            var bytes = Array(line.utf8)
            _ = bytes.withUnsafeMutableBytes { Glibc.write(STDERR_FILENO, $0.baseAddress, $0.count) }
        }
    }
}

/// A pthread mutex for the few places plain threads share state (the log line, IPC writes).
public final class Mutex: @unchecked Sendable {
    private var mutex = pthread_mutex_t()

    public init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }

    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }
}

extension Substring {
    /// Without leading and trailing spaces and tabs (no Foundation here).
    var trimmingSpaces: String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}
