internal import CShims
import IPC
#if canImport(Glibc)
import Glibc
#endif

/// Faults the tests inject through the admin port (only with ZTUNNEL_DEBUG_FAULT_INJECTION=true)
/// to prove that the seccomp allowlist kills and that the Supervisor refuses garbage IPC.
enum FaultInjection {
    enum Kind: String, Sendable {
        /// A syscall outside every worker allowlist: vhangup(2). Harmless if it ever ran (it
        /// needs CAP_SYS_TTY_CONFIG), so a broken filter shows up as a survivor, not damage.
        case seccomp
        /// Bytes that are no valid frame, on the IPC socket.
        case ipcGarbage = "ipc-garbage"
    }

    static func inject(_ kind: Kind, channel: IPCSocket) {
        switch kind {
        case .seccomp:
            _ = CShims_forbidden_syscall()
        case .ipcGarbage:
            try? channel.sendRaw([0xde, 0xad, 0xbe, 0xef, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x01])
        }
    }
}
