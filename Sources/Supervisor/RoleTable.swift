import IPC
import Shared

/// Everything the Supervisor knows about a role, in one table (relayd's `procs[]`): the binary it
/// runs, how many, the listeners it is handed, its sandbox and the messages it may send.
struct RoleSpec {
    let role: WorkerRole
    let executable: String
    let seccompProfile: String
    /// Key holders are not dumpable and leave no core file.
    let isDumpable: Bool
    /// Whether the fd broker hands this role the listening sockets.
    let receivesListeners: Bool
    /// Whether this role gets the process table (readiness, /config_dump).
    let receivesProcessTable: Bool
    /// Messages this role may send once it is running; anything else is a violation.
    let permittedWhileRunning: Set<WorkerMessage.Code>

    static func table(netWorkers: Int) -> [(RoleSpec, Int)] {
        [
            (RoleSpec(role: .certWorker, executable: "ztunnel-cert-worker", seccompProfile: "cert-worker.json",
                      isDumpable: false, receivesListeners: false, receivesProcessTable: false,
                      permittedWhileRunning: [.audit]), 1),
            (RoleSpec(role: .netWorker, executable: "ztunnel-net-worker", seccompProfile: "net-worker.json",
                      isDumpable: true, receivesListeners: true, receivesProcessTable: true,
                      permittedWhileRunning: [.shutdownRequest]), netWorkers),
        ]
    }
}
