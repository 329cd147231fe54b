#if canImport(Glibc)
import Glibc
#endif

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

    nonisolated(unsafe) private static var threshold: Level? = .info
    nonisolated(unsafe) private static var json = false
    nonisolated(unsafe) private static var component = "ztunnel"
    private static let lock = Mutex()

    /// Sets the level ("off" silences), format and the component each line names. Call once at
    /// start, before other threads exist.
    public static func configure(level: String, format: String, component: String) {
        switch level {
        case "off": threshold = nil
        case "error": threshold = .error
        case "warn": threshold = .warn
        case "debug": threshold = .debug
        case "trace": threshold = .trace
        default: threshold = .info
        }
        json = format == "json"
        self.component = component
    }

    public static func isEnabled(_ level: Level) -> Bool {
        guard let threshold else { return false }
        return level <= threshold
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
        guard isEnabled(level) else { return }
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
