import IPC
import Mesh
import Shared

/// The admin /config_dump document (ISTIO_COMPAT §17.2) plus our `processes` section: the
/// supervised process table (role, pid, state, restarts, last exit cause).
enum ConfigDump {
    static func build(state: NetWorkerState, certificates: [CertificateStatus], materials: [String: IdentityMaterial]) -> JSON {
        let (table, _) = state.snapshot
        let processes = table.map { entry in
            JSON.object([("role", .string("\(entry.role)")), ("index", .int(Int64(entry.index))),
                         ("pid", .int(Int64(entry.pid))), ("state", .string("\(entry.state)")),
                         ("restarts", .int(Int64(entry.restarts))), ("lastExitCause", .string(entry.lastExitCause))])
        }
        // Only what this NetWorker was given (its role's settings), and never a secret.
        let config = state.configuration.displayable.map { (camelCase($0.name), JSON.string($0.value)) }
        let model = state.model
        let workloads = MeshDump.workloads(model), services = MeshDump.services(model), policies = MeshDump.policies(model)
        return .object([
            ("workloads", workloads),
            ("services", services),
            ("policies", policies),
            ("stagedServices", MeshDump.stagedServices(model)),
            // Local mode: the model is the local config file as parsed (no xDS source yet).
            ("staticConfig", .object([("workloads", workloads), ("policies", policies), ("services", services)])),
            ("version", .object([("version", .string("0.1.0")), ("gitRevision", .string("unknown")),
                                 ("rustVersion", .string("none (Swift)")), ("buildProfile", .string("debug")),
                                 ("buildStatus", .string("Modified")), ("istioVersion", .string("unknown")),
                                 ("cryptoProvider", .string("openssl"))])),
            ("config", .object(config)),
            ("certificates", .array(certificates.map { CertificateView.configDumpEntry($0, materials[$0.spiffeId]) })),
            ("processes", .array(processes)),
        ])
    }

    /// `LOCAL_XDS_PATH` → `localXdsPath`.
    static func camelCase(_ name: String) -> String {
        let words = name.lowercased().split(separator: "_")
        guard let first = words.first else { return "" }
        return String(first) + words.dropFirst().map { $0.prefix(1).uppercased() + $0.dropFirst() }.joined()
    }
}
