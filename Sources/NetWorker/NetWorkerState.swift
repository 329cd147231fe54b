import IPC
import Mesh
import Shared

/// What the NetWorker's handlers read from any event-loop thread: the process table the Supervisor
/// sends, the configuration and the drain flag. Guarded by one lock; handlers take snapshots.
final class NetWorkerState: @unchecked Sendable {
    let configuration: Configuration
    let index: UInt16
    /// ENABLE_RESPONSE_BAGGAGE (§18): the destination's baggage on a CONNECT's 200, and a
    /// request's baggage read (describing a source behind a network gateway).
    let usesBaggage: Bool
    private let lock = Mutex()
    private var processTable: [ProcessEntry] = []
    private var draining = false
    private var meshModel = MeshModel()
    private var meshPending = false
    private var xdsCounters: XDSStats?

    init(configuration: Configuration, index: UInt16) {
        self.configuration = configuration
        self.index = index
        usesBaggage = !configuration.available.contains("ENABLE_RESPONSE_BAGGAGE") || configuration.bool("ENABLE_RESPONSE_BAGGAGE")
    }

    func update(processTable: [ProcessEntry]) { lock.withLock { self.processTable = processTable } }
    /// Replaces the mesh model as a whole: a connection works on the snapshot it took.
    func update(model: MeshModel) { lock.withLock { meshModel = model } }
    var model: MeshModel { lock.withLock { meshModel } }

    /// The workload of `model` owning `address` (IP text) on this node's network, if any.
    func workload(at address: String?, in model: MeshModel) -> Workload? {
        guard let address, let ip = IPAddress(address) else { return nil }
        return model.workload(at: NetworkAddress(network: configuration.string("NETWORK"), ip: ip))
    }
    func startDraining() { lock.withLock { draining = true } }

    /// The xDS worker's counters as the Supervisor last relayed them (nil without xDS).
    var xdsStats: XDSStats? {
        get { lock.withLock { xdsCounters } }
        set { lock.withLock { xdsCounters = newValue } }
    }

    /// Whether the first mesh snapshot from xDS is still awaited (readiness names it "xds").
    var awaitingMesh: Bool {
        get { lock.withLock { meshPending } }
        set { lock.withLock { meshPending = newValue } }
    }

    var snapshot: (table: [ProcessEntry], isDraining: Bool) { lock.withLock { (processTable, draining) } }

    /// In-pod mode: the pods served, whether istio-cni's snapshot arrived, the pods not served.
    struct InPod: Sendable {
        /// Filled when read (`inPod`), from PodDialer.
        var served: [String: PodInfo] = [:]
        var synced = false
        var pending: [PendingPod] = []
        var started: UInt64 = 0
        var stopped: UInt64 = 0

        /// §15's `workload_manager_*` families (no `istio_` prefix, as upstream names them).
        var metricLines: [String] {
            ["# TYPE workload_manager_active_proxy_count gauge", "workload_manager_active_proxy_count \(served.count)",
             "# TYPE workload_manager_pending_proxy_count gauge", "workload_manager_pending_proxy_count \(pending.count)",
             "# TYPE workload_manager_proxies_started counter", "workload_manager_proxies_started_total \(started)",
             "# TYPE workload_manager_proxies_stopped counter", "workload_manager_proxies_stopped_total \(stopped)"]
        }
    }
    private var inPodState = InPod()
    /// The pods served are PodDialer's (their one record); the rest is the Supervisor's status.
    var inPod: InPod {
        var value = lock.withLock { inPodState }
        value.served = PodDialer.shared?.served ?? [:]
        return value
    }

    /// Open descriptors in all of the daemon's processes and their limit, as the Supervisor
    /// last counted them (§15 `process_open_fds`, `process_max_fds`).
    private var processCounts: (open: UInt32, max: UInt32)?
    var processStats: (open: UInt32, max: UInt32)? {
        get { lock.withLock { processCounts } }
        set { lock.withLock { processCounts = newValue } }
    }
    var processMetricLines: [String] {
        guard let (open, max) = processStats else { return [] }
        return ["# TYPE process_open_fds gauge", "process_open_fds \(open)", "# TYPE process_max_fds gauge", "process_max_fds \(max)"]
    }
    func updateInPod(_ body: (inout InPod) -> Void) { lock.withLock { body(&inPodState) } }

    /// The workers that are not yet up and set up; empty means ready (ISTIO_COMPAT §16).
    func pendingReadiness() -> [String] {
        let (table, isDraining) = snapshot
        if isDraining { return ["draining"] }
        if table.isEmpty { return ["process table"] }
        var pending = table.filter { $0.state != .running }.map { "\($0.role)[\($0.index)]" }.sorted() + (awaitingMesh ? ["state manager"] : [])
        // §16: until istio-cni's snapshot arrived on the current connection and every pod is
        // served; the pods still waiting are named by namespace/name (their listeners failed).
        if configuration.isInPodMode {
            let inPod = self.inPod
            if !inPod.synced || !inPod.pending.isEmpty { pending.append("workload proxy manager") }
            pending += inPod.pending.prefix(3).map { "pod \($0.info.namespace)/\($0.info.name)" }
        }
        return pending
    }
}
