#if canImport(Glibc)
import Glibc
#endif

/// How a worker ended, in words for the audit log, the debug log and /config_dump.
enum ExitCause {
    static func describe(waitStatus status: Int32) -> String {
        let signal = status & 0x7f
        if signal == 0 { return "exited with status \((status >> 8) & 0xff)" }
        var text = "killed by signal \(signalName(signal))"
        if signal == SIGSYS { text += " (seccomp: syscall outside the allowlist)" }
        return text
    }

    static func signalName(_ signal: Int32) -> String {
        switch signal {
        case SIGKILL: return "SIGKILL"
        case SIGSYS: return "SIGSYS"
        case SIGSEGV: return "SIGSEGV"
        case SIGABRT: return "SIGABRT"
        case SIGTERM: return "SIGTERM"
        case SIGILL: return "SIGILL"
        case SIGBUS: return "SIGBUS"
        case SIGTRAP: return "SIGTRAP"
        default: return "\(signal)"
        }
    }
}
