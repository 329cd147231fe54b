import Shared
#if canImport(Glibc)
import Glibc
#endif

/// The audit sink: one JSON line per event with an RFC 3339 UTC time and a sequence number, kept
/// apart from the debug log (a file of its own, or stderr). Only the Supervisor writes it, so the
/// sequence is total across the process tree.
final class AuditSink {
    private let fd: Int32
    private let ownsFd: Bool
    private var sequence: UInt64 = 0

    /// `destination` is "stderr" or a file path, opened for appending.
    init(destination: String) throws {
        if destination == "stderr" {
            fd = STDERR_FILENO
            ownsFd = false
        } else {
            fd = try Syscall.retrying("open(\(destination))") {
                open(destination, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
            }
            ownsFd = true
        }
    }

    deinit { if ownsFd { Syscall.close(fd) } }

    /// Writes one event. A failed write is reported on the debug log and does not stop the daemon.
    func record(_ event: String, _ fields: [(String, JSON)] = []) {
        sequence += 1
        let line = JSON.object([("time", .string(Clock.rfc3339Now())), ("seq", .int(Int64(sequence))),
                                ("event", .string(event))] + fields).serialized() + "\n"
        do { try Syscall.writeAll(fd, Array(line.utf8)) } catch {
            Log.error("audit sink write failed: \(error)")
        }
    }
}
