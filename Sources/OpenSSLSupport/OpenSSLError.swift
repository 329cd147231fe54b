internal import COpenSSL

/// An OpenSSL failure: what we were doing, and OpenSSL's error queue drained at the failure site
/// (STYLE.md §5).
public struct OpenSSLError: Error, CustomStringConvertible {
    public let operation: String
    public let queue: [String]

    public init(_ operation: String) {
        self.operation = operation
        var queue: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            queue.append(String(cString: buffer))
        }
        self.queue = queue
    }

    public var description: String {
        queue.isEmpty ? "\(operation) failed" : "\(operation) failed: \(queue.joined(separator: "; "))"
    }

    /// Clears stale errors so the next failure reports only its own.
    public static func clearQueue() { ERR_clear_error() }
}
