import IPC
import Shared

/// One place in the process tree: a role and index, and the process filling it now (if any).
/// A slot outlives its processes; restarts and the last exit cause accumulate here.
final class WorkerSlot {
    let spec: RoleSpec
    let index: UInt16

    var pid: Int32 = 0
    var pidfd: OwnedFD?
    var ipc: IPCSocket?
    var state: ProcessEntry.State = .stopped
    var restarts: UInt32 = 0
    var lastExitCause = ""
    /// Monotonic ms by which the setup handshake must finish.
    var setupDeadline: Int64?
    /// Monotonic ms at which a replacement starts.
    var restartAt: Int64?
    /// Why the Supervisor killed the current process, reported as its exit cause.
    var killReason: String?
    /// The current process missed its setup deadline (a start-up failure, not a crash).
    var killedForSetupTimeout = false

    init(spec: RoleSpec, index: UInt16) {
        self.spec = spec
        self.index = index
    }

    var name: String { "\(spec.role)[\(index)]" }
    var isAlive: Bool { pidfd != nil }

    var entry: ProcessEntry {
        ProcessEntry(role: spec.role, index: index, pid: pid, state: state, restarts: restarts, lastExitCause: lastExitCause)
    }

    var auditFields: [(String, JSON)] {
        [("role", .string("\(spec.role)")), ("index", .int(Int64(index))), ("pid", .int(Int64(pid)))]
    }
}
