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
        var members: [(String, JSON)] = [
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
        ]
        if state.configuration.isInPodMode { members.append(("workloadState", workloadState(state.inPod))) }
        return .object(members)
    }

    /// §17.2 `workloadState`: pod uid → state and the pod's info (our connections lists are not
    /// kept per pod yet, so they are left out rather than shown empty).
    static func workloadState(_ inPod: NetWorkerState.InPod) -> JSON {
        func info(_ pod: PodInfo) -> JSON {
            .object([("name", .string(pod.name)), ("namespace", .string(pod.namespace)), ("serviceAccount", .string(pod.serviceAccount))])
        }
        var entries: [(String, JSON)] = inPod.served.map { uid, pod in (uid, .object([("state", .string("Up")), ("info", info(pod))])) }
        for pending in inPod.pending where inPod.served[pending.uid] == nil {
            entries.append((pending.uid, .object([("state", .string("Pending")), ("info", info(pending.info)),
                                                  ("error", .string(pending.error))])))
        }
        return .object(entries.sorted { $0.0 < $1.0 })
    }

    /// `LOCAL_XDS_PATH` → `localXdsPath`.
    static func camelCase(_ name: String) -> String {
        let words = name.lowercased().split(separator: "_")
        guard let first = words.first else { return "" }
        return String(first) + words.dropFirst().map { $0.prefix(1).uppercased() + $0.dropFirst() }.joined()
    }
}
