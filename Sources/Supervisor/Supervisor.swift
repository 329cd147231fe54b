internal import CShims
import IPC
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// The privileged parent. Single-threaded: one poll loop over a signalfd, each worker's pidfd and
/// IPC socket, and the nearest deadline. It parses no network traffic; what it reads from workers
/// is checked against each worker's state before anything is done (relayd `parent_dispatch_*`).
final class Supervisor {
    private let configuration: Configuration
    private let audit: AuditSink
    private let broker: FdBroker
    private let binDirectory: String
    private let policies: [WorkerRole: SeccompPolicy]
    private var slots: [WorkerSlot] = []
    private var restartPolicy: RestartPolicy
    private let signalFd: OwnedFD
    /// The LOCAL_XDS_PATH bytes a NetWorker last accepted (at first: as read at start), which a
    /// new NetWorker is given. The file is looked at again every `fileCheckMilliseconds`;
    /// bytes that changed and then stayed the same for one more look (not a file caught half
    /// written) are sent to the NetWorkers as a new generation, and become the accepted bytes
    /// once a NetWorker says they parsed. The Supervisor itself parses nothing.
    private var localConfig: [UInt8]
    private var localConfigGeneration: UInt32 = 0
    /// The file as last looked at, and the generation sent but not yet acknowledged.
    private var localConfigFile: SettledFile
    private var trialLocalConfig: (generation: UInt32, bytes: [UInt8])?
    private var nextFileCheck: Int64?
    static let fileCheckMilliseconds: Int64 = 2_000
    /// CRL_PATH: read at start and looked at again as LOCAL_XDS_PATH is; its bytes go to every
    /// NetWorker as a sealed memfd (the latest is what a new NetWorker gets), and the NetWorkers
    /// parse them. Nil when CRL_PATH is unset.
    private var crlFile: SettledFile?
    /// The last generation a NetWorker said is in force, and the ones published after it (≤ 8,
    /// oldest first): a new NetWorker gets them all, in order, and ends with what the others
    /// have (lists that do not parse never replace lists in force).
    private var crlInForce: (generation: UInt64, fd: OwnedFD)?
    private var crlPending: [(generation: UInt64, fd: OwnedFD)] = []
    /// The latest generation published (nil: none yet).
    private var crl: (generation: UInt64, fd: OwnedFD)? { crlPending.last ?? crlInForce }
    /// The last generation whose refusal was audited.
    private var crlAnswered: UInt64 = 0
    static let crlMaxBytes = 16 << 20
    private let tokenSource: CATokenSource
    /// The CA token as last read and sent; the last refusal, logged once until it changes.
    private var caToken: String?
    private var caTokenProblem: CATokenError?
    private var nextTokenRead: Int64?
    /// The mesh model the xDS worker last published (a sealed memfd, checked here): relayed to
    /// every NetWorker, given to each new one before its listeners, and to a restarted xDS worker
    /// so it resubscribes with the versions it names. The Supervisor never parses it.
    private var snapshots = SnapshotRelay<OwnedFD>()
    /// The xDS worker's counters: what earlier incarnations counted, and the current one's.
    private var xdsStatsBefore = XDSStats()
    private var xdsStatsCurrent = XDSStats()
    /// The counters are relayed at most once a second, whatever the xDS worker sends, and a
    /// NetWorker whose channel is full skips them (review of issue #8: a stats flood must not
    /// get NetWorkers killed as unresponsive).
    private var nextXDSStatsRelay: Int64?
    static let xdsStatsRelayMilliseconds: Int64 = 1_000
    private var lastXDSStatsRelay: Int64 = 0
    /// One counter region per NetWorker index (only with several NetWorkers): each NetWorker
    /// publishes its counters in its own and reads the others', so a scrape sees the sum.
    private var counterRegions: [OwnedFD] = []
    /// The log filter in force (RUST_LOG syntax): the setting at start, then what an operator
    /// last posted to `/logging` on a NetWorker. Changes
    /// are relayed at most every `logFilterRelayMilliseconds`, the latest one winning, so a
    /// NetWorker cannot flood the others' channels with them. A new worker's setup carries
    /// RUST_LOG as at start, then this.
    private var logFilter: String
    private var logFilterRelayPending = false
    private var logFilterPrevious = ""
    private var logFilterChangedBy: WorkerSlot?
    private var nextLogFilterRelay: Int64?
    private var lastLogFilterRelay: Int64 = 0
    static let logFilterRelayMilliseconds: Int64 = 250
    /// In-pod mode (INPOD_UDS): the connection to istio-cni and the pods it enrolled.
    private let inPod: InPod?
    /// Upstream sockets made for each NetWorker index in the current second (a bound on what a
    /// NetWorker can make the Supervisor do in pods' namespaces).
    private var podSocketBudget = PerSecondBudget<UInt16>(perSecond: podSocketsPerSecond)
    static let podSocketsPerSecond = 4096
    /// On-demand lookups relayed per NetWorker per second.
    private var demandBudget = PerSecondBudget<UInt16>(perSecond: demandsPerSecond)
    static let demandsPerSecond = 1024
    /// The audit events each worker may cause per second (its own audit frames, its snapshots
    /// and answers); the rest are counted and summed up in `audit_events_dropped`.
    private var auditBudget = AuditBudget(perSecond: auditEventsPerSecond)
    static let auditEventsPerSecond = 100
    /// The next count of open descriptors for the NetWorkers' /metrics.
    private var nextProcessStats: Int64 = 0
    static let processStatsMilliseconds: Int64 = 10_000
    private var isDraining = false
    private var drainDeadline: Int64?
    private var exitCode: Int32?

    init(configuration: Configuration, audit: AuditSink, broker: FdBroker, binDirectory: String,
         policies: [WorkerRole: SeccompPolicy], signalFd: OwnedFD, localConfig: [UInt8]) {
        self.localConfig = localConfig
        localConfigFile = SettledFile(path: configuration.string("LOCAL_XDS_PATH"), limit: 60 * 1024, settled: localConfig)
        let crlPath = configuration.string("CRL_PATH")
        crlFile = crlPath.isEmpty ? nil : SettledFile(path: crlPath, limit: Self.crlMaxBytes, settled: [])
        self.configuration = configuration
        logFilter = configuration.string("RUST_LOG")
        inPod = configuration.isInPodMode
            ? InPod(configuration: configuration, audit: audit, transparentSockets: policies[.netWorker]?.allows(syscall: "bind") == true)
            : nil
        self.audit = audit
        self.broker = broker
        self.binDirectory = binDirectory
        self.policies = policies
        self.signalFd = signalFd
        restartPolicy = RestartPolicy(
            limit: configuration.int("ZTUNNEL_CRASH_LOOP_LIMIT"),
            windowMilliseconds: configuration.milliseconds("ZTUNNEL_CRASH_LOOP_WINDOW"),
            initialBackoffMilliseconds: configuration.milliseconds("ZTUNNEL_RESTART_BACKOFF"),
            maxBackoffMilliseconds: configuration.milliseconds("ZTUNNEL_RESTART_BACKOFF_MAX"))
        tokenSource = CATokenSource(configuration: configuration)
        for (spec, count) in RoleSpec.table(netWorkers: configuration.int("ZTUNNEL_NET_WORKERS"),
                                             xds: !configuration.string("XDS_ADDRESS").isEmpty) {
            for index in 0..<count { slots.append(WorkerSlot(spec: spec, index: UInt16(index))) }
        }
        let netWorkers = configuration.int("ZTUNNEL_NET_WORKERS")
        if netWorkers > 1 {
            do {
                counterRegions = try (0..<netWorkers).map { try CounterRegion.make(name: "ztunnel-counters-\($0)") }
            } catch {
                Log.error("no shared counters across NetWorkers (each scrape shows one NetWorker's): \(error)")
            }
        }
    }

    /// Runs until drained or given up; returns the process exit code.
    func run() -> Int32 {
        refreshCAToken()
        if configuration.isLocalMode || crlFile != nil {
            nextFileCheck = Clock.monotonicMilliseconds() + Self.fileCheckMilliseconds
        }
        readCRLAtStart()
        for slot in slots { start(slot) }
        while exitCode == nil {
            pollOnce()
            handleDeadlines()
            if isDraining && slots.allSatisfy({ !$0.isAlive }) {
                flushAuditSummaries()
                audit.record("supervisor_exit", [("code", .int(0))])
                Log.info("drain complete; all workers exited")
                exitCode = 0
            }
        }
        return exitCode ?? 1
    }

    // MARK: - Spawning and the setup handshake

    private func start(_ slot: WorkerSlot) {
        let path = binDirectory + "/" + slot.spec.executable
        slot.restartAt = nil
        slot.killReason = nil
        slot.killedForSetupTimeout = false
        if slot.spec.receivesListeners { snapshots.forget(slot.index) }
        do {
            let spawned = try WorkerSpawner.spawn(executable: path)
            slot.pid = spawned.pid
            slot.pidfd = spawned.pidfd
            slot.ipc = spawned.ipc
            slot.state = .starting
            slot.setupDeadline = Clock.monotonicMilliseconds() + configuration.milliseconds("ZTUNNEL_WORKER_SETUP_TIMEOUT")
            audit.record("worker_start", slot.auditFields + [("restarts", .int(Int64(slot.restarts)))])
            Log.info("started \(slot.name)", [("pid", "\(slot.pid)"), ("binary", path)])
            try spawned.ipc.send(SupervisorMessage.setup(setup(for: slot)).frame())
        } catch {
            Log.error("cannot start \(slot.name): \(error)")
            audit.record("worker_start_failed", slot.auditFields + [("error", .string("\(error)"))])
            if slot.isAlive { kill(slot, reason: "setup could not be sent: \(error)") } else { workerGone(slot, cause: "spawn failed: \(error)", isStartupFailure: true) }
        }
        broadcastProcessTable()
    }

    private func setup(for slot: WorkerSlot) -> WorkerSetup {
        let settings = slot.spec.settings.map { name -> (String, String) in
            // Unset, the pods' DNS proxy strips ztunnel's own search domains (§13): read here,
            // since a NetWorker reads no files.
            if name == "ZTUNNEL_DNS_SEARCH_DOMAINS", configuration.string(name).isEmpty, configuration.dnsProxyEnabled {
                return (name, DNSUpstreams.searchDomains().joined(separator: " "))
            }
            return (name, configuration.string(name))
        }
            + configuration.passthroughValues.filter { entry in slot.spec.settingPrefixes.contains { entry.key.hasPrefix($0) } }
                .sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        return WorkerSetup(role: slot.spec.role, index: slot.index, settings: settings,
                           uid: UInt32(configuration.int(slot.spec.uidSetting)),
                           gid: UInt32(configuration.int(slot.spec.gidSetting)),
                           isDumpable: slot.spec.isDumpable,
                           seccomp: policies[slot.spec.role] ?? SeccompPolicy(isAuditMode: false, rules: []),
                           landlock: slot.spec.landlock(configuration, seccomp: policies[slot.spec.role]))
    }

    /// Dispatches one message from a worker. Each case checks the worker's state first: a message
    /// out of turn is a violation, exactly like bytes that do not decode (openssh MON_PERMIT).
    private func handle(_ message: WorkerMessage, from slot: WorkerSlot) throws {
        switch (message, slot.state) {
        case (.hello(let version, let role, let pid), .starting):
            guard version == IPCProtocol.version, role == slot.spec.role, pid == slot.pid else {
                throw Violation("hello mismatch: version \(version), role \(role), pid \(pid)")
            }
            slot.state = .settingUp
            try handOver(to: slot)
        case (.ready, .settingUp):
            slot.state = .running
            slot.setupDeadline = nil
            audit.record("worker_ready", slot.auditFields)
            Log.info("\(slot.name) is ready", [("pid", "\(slot.pid)")])
            if isDraining { try slot.ipc?.send(SupervisorMessage.drain(deadlineMilliseconds: 0).frame(), blocking: false) }
            broadcastProcessTable()
        case (.shutdownRequest, .running) where slot.spec.permittedWhileRunning.contains(.shutdownRequest):
            // Once: later requests while draining change nothing and are not written again.
            if !isDraining { audit.record("shutdown_requested", slot.auditFields) }
            beginDrain(reason: "admin /quitquitquit via \(slot.name)")
        case (.faultRequest(let kind, let port), .running) where slot.spec.permittedWhileRunning.contains(.faultRequest):
            // Tests only: with fault injection off this message has no business existing.
            guard configuration.bool("ZTUNNEL_DEBUG_FAULT_INJECTION") else {
                throw Violation("fault request while fault injection is disabled")
            }
            recordCaused("fault_injected", slot.auditFields + [("kind", .string("\(kind)")), ("port", .int(Int64(port)))], by: slot)
            let frame = SupervisorMessage.fault(kind, port: port).frame()
            let target: WorkerRole = kind.forXDSWorker ? .xdsWorker : .certWorker
            for worker in slots where worker.spec.role == target && worker.state == .running { sendWithoutWaiting(frame, to: worker) }
        case (.meshSnapshot(let generation, let fd), .running) where slot.spec.permittedWhileRunning.contains(.meshSnapshot):
            try acceptSnapshot(generation: generation, fd: fd, from: slot)
        case (.xdsStats(let stats), .running) where slot.spec.permittedWhileRunning.contains(.xdsStats):
            xdsStatsCurrent = stats
            if nextXDSStatsRelay == nil {
                nextXDSStatsRelay = max(Clock.monotonicMilliseconds(), lastXDSStatsRelay + Self.xdsStatsRelayMilliseconds)
            }
        case (.logFilter(let filter), .running) where slot.spec.permittedWhileRunning.contains(.logFilter):
            changeLogFilter(filter, by: slot)
        case (.demand(let key), .running) where slot.spec.permittedWhileRunning.contains(.demand):
            guard configuration.bool("XDS_ON_DEMAND") else { throw Violation("on-demand lookup while XDS_ON_DEMAND is off") }
            // Best effort: dropped (the NetWorker stops waiting at its deadline) over the
            // NetWorker's budget or when the xDS worker's channel is filling, so a NetWorker can
            // neither flood the xDS worker nor get it killed as unresponsive by what follows.
            let now = Clock.monotonicMilliseconds()
            guard demandBudget.spend(slot.index, nowMilliseconds: now) == 1 else {
                if demandBudget.refusals(slot.index, nowMilliseconds: now) == 1 {  // once a second per NetWorker
                    Log.warn("\(slot.name) asked for more than \(Self.demandsPerSecond) on-demand lookups this second; dropping the rest")
                }
                return
            }
            let frame = SupervisorMessage.demand(key).frame()
            for xds in slots where xds.spec.role == .xdsWorker && xds.state == .running && xds.ipc?.hasHeadroom(below: 256 << 10) == true {
                try? xds.ipc?.send(frame, blocking: false)
            }
        // Also while setting up: a NetWorker serves its pods' listeners (and asks for sockets)
        // as soon as it has them, before it reports ready.
        case (.podSocketsWanted(let uid, let family, let count), .running) where slot.spec.permittedWhileRunning.contains(.podSocketsWanted),
             (.podSocketsWanted(let uid, let family, let count), .settingUp) where slot.spec.permittedWhileRunning.contains(.podSocketsWanted):
            guard let inPod else { throw Violation("pod sockets asked for outside in-pod mode") }
            givePodSockets(inPod, uid: uid, family: family, count: Int(count), to: slot)
        case (.demandAnswered(let keys), .running) where slot.spec.permittedWhileRunning.contains(.demandAnswered):
            guard configuration.bool("XDS_ON_DEMAND") else { throw Violation("on-demand answers while XDS_ON_DEMAND is off") }
            // The snapshot with the answers came before this message on the same channel. Best
            // effort likewise: a NetWorker that misses it decides at its deadline.
            let frame = SupervisorMessage.demandAnswered(generation: snapshots.latest?.generation ?? 0, keys: keys).frame()
            for net in liveNetWorkers where net.ipc?.hasHeadroom(below: 256 << 10) == true { try? net.ipc?.send(frame, blocking: false) }
        case (.meshApplied(let generation, let accepted), .settingUp) where slot.spec.receivesListeners,
             (.meshApplied(let generation, let accepted), .running) where slot.spec.receivesListeners:
            try snapshotApplied(generation: generation, accepted: accepted, from: slot)
        case (.revocationsApplied(let generation, let accepted), .settingUp) where slot.spec.receivesListeners,
             (.revocationsApplied(let generation, let accepted), .running) where slot.spec.receivesListeners:
            revocationsApplied(generation: generation, accepted: accepted, from: slot)
        case (.localConfigApplied(let generation, let accepted), .settingUp) where slot.spec.receivesListeners,
             (.localConfigApplied(let generation, let accepted), .running) where slot.spec.receivesListeners:
            localConfigApplied(generation: generation, accepted: accepted, from: slot)
        case (.audit(let event, let fields), .settingUp), (.audit(let event, let fields), .running):
            guard slot.spec.permittedWhileRunning.contains(.audit) else {
                throw Violation("audit events are not permitted from \(slot.spec.role)")
            }
            guard WorkerMessage.certWorkerAuditEvents.contains(event),
                  !fields.contains(where: { WorkerMessage.reservedAuditKeys.contains($0.0) }) else {
                throw Violation("audit event \(event) is not one the CertWorker may write, or forges a reserved key")
            }
            let security: [(String, JSON)] = WorkerMessage.certWorkerSecurityEvents.contains(event) ? [("security", .bool(true))] : []
            recordCaused(event, slot.auditFields + fields.map { ($0.0, JSON.string($0.1)) } + security, by: slot)
            // The CertWorker closed a NetWorker's signer channel for bad requests: that NetWorker
            // can no longer complete a handshake, and it may be compromised. It is replaced (with
            // a new channel), as for a violation of its own IPC.
            if event == "signer_violation", let index = fields.first(where: { $0.0 == "net_worker" }).flatMap({ UInt16($0.1) }),
               let net = liveNetWorkers.first(where: { $0.index == index }) {
                Log.error("security: the CertWorker closed \(net.name)'s signer channel; replacing it", [("pid", "\(net.pid)")])
                kill(net, reason: "killed by the supervisor: signer violation reported by the CertWorker")
            }
        default:
            throw Violation("\(message.code) is not permitted from \(slot.spec.role) in state \(slot.state)")
        }
    }

    /// Replays what a (new) worker needs: its listeners, the process table, then the go-ahead.
    private func handOver(to slot: WorkerSlot) throws {
        guard let ipc = slot.ipc else { return }
        // RUST_LOG in the setup is the filter at start (what /logging?reset restores); one an
        // operator posted since then follows.
        if logFilter != configuration.string("RUST_LOG") {
            try ipc.send(SupervisorMessage.logFilter(logFilter).frame(), blocking: false)
        }
        // The revocation lists and the mesh model before the listeners: nothing is accepted
        // before they are in force.
        if slot.spec.receivesListeners {
            for lists in (crlInForce.map { [$0] } ?? []) + crlPending {
                try ipc.send(SupervisorMessage.revocations(generation: lists.generation, fd: lists.fd).frame(), blocking: false)
            }
        }
        if slot.spec.receivesListeners && configuration.isLocalMode {
            try ipc.send(SupervisorMessage.localConfig(generation: localConfigGeneration, localConfig).frame(), blocking: false)
        }
        // The xDS worker gets it back too: a new one resumes from it without istiod.
        if slot.spec.role == .xdsWorker, let latest = snapshots.latest {
            try ipc.send(SupervisorMessage.meshSnapshot(generation: latest.generation, fd: latest.held).frame(), blocking: false)
        }
        if slot.spec.receivesListeners, let snapshot = snapshots.take(for: slot.index) {
            try ipc.send(SupervisorMessage.meshSnapshot(generation: snapshot.generation, fd: snapshot.held).frame(), blocking: false)
        }
        if slot.spec.receivesListeners {
            for listener in broker.listeners where Int(slot.index) < listener.fds.count {
                try ipc.send(SupervisorMessage.listener(name: listener.name, fd: listener.fds[Int(slot.index)]).frame(), blocking: false)
            }
        }
        // Always: besides the pods' DNS proxy and SOCKS5 names, any mesh may hold workloads known
        // by hostname only (§9 step 6), resolved when a connection goes to one.
        if slot.spec.receivesListeners {
            for fd in DNSUpstreams.connectedSockets() {
                try ipc.send(SupervisorMessage.listener(name: "dns-upstream", fd: fd).frame(), blocking: false)
            }
        }
        if slot.spec.receivesListeners, let inPod {
            for uid in inPod.pods.keys.sorted() {
                for frame in podFrames(uid, inPod, for: slot) { try ipc.send(frame, blocking: false) }
            }
            try ipc.send(SupervisorMessage.inPodStatus(synced: inPod.isSynced, pending: inPod.pending, started: inPod.started, stopped: inPod.stopped).frame(), blocking: false)
        }
        if slot.spec.receivesProcessTable {
            try ipc.send(SupervisorMessage.processTable(slots.map(\.entry)).frame(), blocking: false)
            try ipc.send(processStats().frame(), blocking: false)
        }
        if slot.spec.role == .netWorker && counterRegions.count > 1 {
            for (index, region) in counterRegions.enumerated() {
                let own = index == Int(slot.index)
                let fd: OwnedFD
                do { fd = own ? region : try CounterRegion.readOnly(region) } catch {
                    // Our failure (out of fds), not the worker's: it serves without that peer's counters.
                    Log.error("cannot hand \(slot.name) counter region \(index): \(error)")
                    continue
                }
                try ipc.send(SupervisorMessage.metricsRegion(index: UInt16(index), writable: own, fd: fd).frame(), blocking: false)
            }
        }
        if slot.spec.receivesListeners && !configuration.string("XDS_ADDRESS").isEmpty {
            try ipc.send(SupervisorMessage.xdsStats(xdsStatsBefore.adding(xdsStatsCurrent)).frame(), blocking: false)
        }
        if slot.spec.role == .xdsWorker {
            // A new incarnation counts from zero; what the last one counted is kept.
            xdsStatsBefore = xdsStatsBefore.adding(xdsStatsCurrent)
            xdsStatsCurrent = XDSStats()
        }
        if tokenSource.recipients.contains(slot.spec.role), let caToken {
            try ipc.send(SupervisorMessage.caToken(caToken).frame(), blocking: false)
        }
        connectSigners(newcomer: slot)
        try ipc.send(SupervisorMessage.configured.frame(), blocking: false)
    }

    /// A snapshot from the xDS worker: a sealed memfd of bounded size, or a violation. It replaces
    /// the one held and goes to every NetWorker; each maps and parses it. The generation the
    /// worker names is logged only: ordering is the Supervisor's own count, so a worker cannot
    /// pin the NetWorkers to its snapshot by naming a huge generation (review of issue #8).
    private func acceptSnapshot(generation: UInt64, fd: OwnedFD, from slot: WorkerSlot) throws {
        let size: Int
        do { size = try SealedMemfd.checkedSize(fd.rawValue, maxBytes: SealedMemfd.maxMeshSnapshotBytes) } catch {
            throw Violation("mesh snapshot refused: \(error)")
        }
        let relayed = snapshots.publish(fd)
        recordCaused("mesh_snapshot", slot.auditFields + [("generation", .int(Int64(truncatingIfNeeded: relayed))),
                                                          ("worker_generation", .string(String(generation))),
                                                          ("bytes", .int(Int64(size)))], by: slot)
        Log.debug("mesh snapshot", [("generation", "\(relayed)"), ("bytes", "\(size)")])
        for net in liveNetWorkers {
            sendSnapshot(to: net)
        }
    }

    /// An event a worker caused (its audit frames, its snapshots and answers): written within
    /// that worker's budget, else counted and summed up once the second is over (`AuditBudget`).
    private func recordCaused(_ event: String, _ fields: [(String, JSON)], by slot: WorkerSlot) {
        // Security events (a signer violation) have a budget of their own: a burst of ordinary
        // ones (many pods enrolling) cannot crowd them out.
        let budget = fields.contains { $0.0 == "security" && $0.1 == .bool(true) } ? slot.name + " security" : slot.name
        let (admitted, summary) = auditBudget.admit(event, by: budget, nowMilliseconds: Clock.monotonicMilliseconds())
        if let summary { recordDropped(summary) }
        if admitted { audit.record(event, fields) }
    }

    /// Before exiting: what was left out in the last second is said too.
    private func flushAuditSummaries() {
        for summary in auditBudget.due(nowMilliseconds: .max) { recordDropped(summary) }
    }

    private func recordDropped(_ summary: AuditBudget.Summary) {
        audit.record("audit_events_dropped", [("worker", .string(summary.worker)), ("dropped", .int(Int64(summary.dropped))),
                                              ("events", .string(summary.events)), ("security", .bool(true))])
        Log.warn("\(summary.worker) caused \(summary.dropped) audit events in one second, over its \(Self.auditEventsPerSecond); not written: \(summary.events)")
    }

    /// The NetWorkers set up or running: those the snapshot and the xDS counters go to.
    private var liveNetWorkers: [WorkerSlot] {
        slots.filter { $0.spec.receivesListeners && ($0.state == .settingUp || $0.state == .running) }
    }

    /// Sends the held snapshot to a NetWorker that has none in flight; one with a snapshot in
    /// flight gets the latest when it answers. Snapshots in between are skipped: each is whole.
    private func sendSnapshot(to net: WorkerSlot) {
        guard let snapshot = snapshots.take(for: net.index) else { return }
        sendWithoutWaiting(SupervisorMessage.meshSnapshot(generation: snapshot.generation, fd: snapshot.held).frame(), to: net)
    }

    /// A NetWorker's answer to a snapshot: only for the one in flight, else a violation.
    private func snapshotApplied(generation: UInt64, accepted: Bool, from slot: WorkerSlot) throws {
        do { try snapshots.answered(generation, by: slot.index) } catch { throw Violation("\(error)") }
        if !accepted {
            recordCaused("mesh_snapshot_refused", slot.auditFields + [("generation", .int(Int64(truncatingIfNeeded: generation)))], by: slot)
        }
        sendSnapshot(to: slot)  // the latest, if a newer one came meanwhile
    }

    /// Looks at the files the NetWorkers are given again (LOCAL_XDS_PATH, CRL_PATH).
    private func reloadFiles() {
        nextFileCheck = Clock.monotonicMilliseconds() + Self.fileCheckMilliseconds
        if crlFile != nil { reloadCRL() }
        if configuration.isLocalMode { reloadLocalConfig() }
    }

    /// Reads LOCAL_XDS_PATH again and hands changed bytes to every NetWorker, which parses them
    /// and keeps its current model if they do not parse (the Supervisor parses nothing). A file
    /// that cannot be read is logged once and the last good bytes stay in force.
    private func reloadLocalConfig() {
        let path = localConfigFile.path
        switch localConfigFile.look() {
        case .unchanged, .settling:
            return
        case .unreadable(let error, let firstTime, _):
            if firstTime { Log.warn("cannot read LOCAL_XDS_PATH (\(path)) again: \(error); the last one read stays in force") }
        case .changed(let bytes):
            localConfigGeneration &+= 1
            trialLocalConfig = (localConfigGeneration, bytes)
            audit.record("local_config_changed", [("path", .string(path)), ("bytes", .int(Int64(bytes.count))),
                                                  ("generation", .int(Int64(localConfigGeneration)))])
            Log.info("LOCAL_XDS_PATH changed; sending it to the NetWorkers", [("bytes", "\(bytes.count)"),
                                                                              ("generation", "\(localConfigGeneration)")])
            let frame = SupervisorMessage.localConfig(generation: localConfigGeneration, bytes).frame()
            for slot in liveNetWorkers { sendWithoutWaiting(frame, to: slot) }
        }
    }

    /// CRL_PATH at start. A missing file revokes nothing until it appears (as upstream: a
    /// ConfigMap may be mounted later). Any other failure to read it (permissions, too large,
    /// not a regular file) publishes nothing, so every NetWorker refuses every mTLS peer until
    /// it can be read: CRL_PATH is set, and "nothing revoked" would be failing open.
    private func readCRLAtStart() {
        guard var file = crlFile else { return }
        do {
            let bytes = try file.readNow()
            crlFile = file
            _ = publishCRL(bytes)
        } catch where SettledFile.isMissing(error) {
            Log.warn("CRL_PATH (\(file.path)) does not exist: nothing is revoked until it appears")
            audit.record("crl_unreadable", [("path", .string(file.path)), ("error", .string("\(error)"))])
            _ = publishCRL([])
        } catch {
            Log.error("cannot read CRL_PATH (\(file.path)): \(error); every mTLS peer is refused until it can be read")
            audit.record("crl_unreadable", [("path", .string(file.path)), ("error", .string("\(error)")), ("security", .bool(true))])
        }
    }

    /// CRL_PATH looked at again: settled new bytes go to every NetWorker. An unreadable file
    /// keeps the lists in force (a ConfigMap update swaps a symlink; a read in between fails).
    /// Bytes that could not be handed over are looked at again, not taken as sent.
    private func reloadCRL() {
        guard var file = crlFile else { return }
        switch file.look() {
        case .settling:
            crlFile = file
        case .unchanged:
            crlFile = file
            if crl == nil { _ = publishCRL(file.settled) }  // nothing in force yet (unreadable at start)
        case .unreadable(let error, let firstTime, let missing):
            crlFile = file
            if crl == nil && missing {
                // Unreadable at start, and now gone: as a file missing at start, nothing revoked.
                Log.warn("CRL_PATH (\(file.path)) does not exist: nothing is revoked until it appears")
                _ = publishCRL([])
            } else if firstTime {
                Log.warn("cannot read CRL_PATH (\(file.path)) again: \(error); "
                         + (crl == nil ? "every mTLS peer stays refused" : "the revocation lists in force stay"))
            }
        case .changed(let bytes):
            if publishCRL(bytes) { crlFile = file }
        }
    }

    /// A NetWorker's verdict on a generation of CRL_PATH. Every NetWorker parses the same bytes
    /// alike, so one that says they are in force is believed: a compromised NetWorker saying
    /// "refused" cannot keep newer lists from the NetWorkers started later (saying "accepted"
    /// for bad bytes only makes those refuse every peer). Refusals are audited once.
    private func revocationsApplied(generation: UInt64, accepted: Bool, from slot: WorkerSlot) {
        if accepted {
            guard let lists = crlPending.first(where: { $0.generation == generation }) else { return }  // known already
            crlInForce = lists
            crlPending.removeAll { $0.generation <= generation }
        } else if generation > crlAnswered, generation <= crl?.generation ?? 0 {
            crlAnswered = generation
            audit.record("crl_refused", slot.auditFields + [("generation", .int(Int64(generation))), ("security", .bool(true))])
            Log.warn("the NetWorkers refused CRL_PATH generation \(generation) (see their log); the lists in force stay")
        }
    }

    private func publishCRL(_ bytes: [UInt8]) -> Bool {
        guard let path = crlFile?.path else { return false }
        let fd: OwnedFD
        do { fd = try SealedMemfd.make(name: "ztunnel-crl", bytes) } catch {
            Log.error("cannot hand CRL_PATH to the NetWorkers: \(error); the lists in force stay, and it is tried again")
            return false
        }
        let generation = (crl?.generation ?? 0) &+ 1
        crlPending.append((generation, fd))
        if crlPending.count > 8 { crlPending.removeFirst() }
        audit.record("crl_changed", [("path", .string(path)), ("bytes", .int(Int64(bytes.count))), ("generation", .int(Int64(generation)))])
        Log.info("CRL_PATH read; sending it to the NetWorkers", [("bytes", "\(bytes.count)"), ("generation", "\(generation)")])
        let frame = SupervisorMessage.revocations(generation: generation, fd: fd).frame()
        for slot in liveNetWorkers { sendWithoutWaiting(frame, to: slot) }
        return true
    }

    /// A NetWorker's verdict on a generation of the local config: accepted bytes become what new
    /// NetWorkers get; refused ones are recorded and never handed to a restarted NetWorker (which
    /// would refuse to start on them).
    private func localConfigApplied(generation: UInt32, accepted: Bool, from slot: WorkerSlot) {
        guard let trial = trialLocalConfig, trial.generation == generation else { return }
        trialLocalConfig = nil
        if accepted {
            localConfig = trial.bytes
            audit.record("local_config_applied", slot.auditFields + [("generation", .int(Int64(generation)))])
        } else {
            audit.record("local_config_refused", slot.auditFields + [("generation", .int(Int64(generation)))])
            Log.warn("the NetWorkers refused LOCAL_XDS_PATH generation \(generation) (see their log); the previous one stays in force")
        }
    }

    /// Reads the CA token again (a file is re-read every 10 s: projected tokens rotate) and hands
    /// a changed one to its recipients (`CATokenSource.recipients`). A token that cannot be read
    /// or used is logged and audited once; the recipients keep the last good one.
    private func refreshCAToken() {
        if tokenSource.isRefreshed { nextTokenRead = Clock.monotonicMilliseconds() + CATokenSource.refreshMilliseconds }
        switch tokenSource.read() {
        case .success(let token):
            caTokenProblem = nil
            guard let token, token != caToken else { return }
            caToken = token
            let frame = SupervisorMessage.caToken(token).frame()
            for slot in slots where tokenSource.recipients.contains(slot.spec.role)
                && (slot.state == .settingUp || slot.state == .running) {
                sendWithoutWaiting(frame, to: slot)
            }
        case .failure(let problem):
            guard problem != caTokenProblem else { return }
            caTokenProblem = problem
            Log.warn("\(problem); the token's recipients keep the last good one")
            audit.record("ca_token_refused", [("reason", .string(problem.description))])
        }
    }

    /// The Supervisor makes every socketpair (STYLE.md §2): a signer channel between the
    /// CertWorker and each NetWorker. A new NetWorker gets one to the current CertWorker; a new
    /// CertWorker gets one to every NetWorker, which replaces its old channel.
    private func connectSigners(newcomer: WorkerSlot) {
        let isUp: (WorkerSlot) -> Bool = { $0.state == .settingUp || $0.state == .running }
        let pairs: [(cert: WorkerSlot, net: WorkerSlot)]
        switch newcomer.spec.role {
        case .netWorker:
            // Only a CertWorker that has said hello (confined, speaking our protocol): one still
            // starting may never get there, and is paired with every NetWorker when it does.
            pairs = slots.filter { $0.spec.role == .certWorker && isUp($0) }.map { ($0, newcomer) }
        case .certWorker:
            pairs = slots.filter { $0.spec.role == .netWorker && isUp($0) }.map { (newcomer, $0) }
        case .xdsWorker:
            return
        }
        for (cert, net) in pairs {
            do {
                let (certEnd, netEnd) = try IPCSocket.pair()
                try cert.ipc?.send(SupervisorMessage.signerPeer(index: net.index, fd: certEnd.fd).frame(), blocking: false)
                try net.ipc?.send(SupervisorMessage.signerChannel(fd: netEnd.fd).frame(), blocking: false)
            } catch {
                Log.warn("cannot connect \(cert.name) and \(net.name): \(error)")
            }
        }
    }

    struct Violation: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    private func broadcastProcessTable() {
        let frame = SupervisorMessage.processTable(slots.map(\.entry)).frame()
        for slot in slots where slot.spec.receivesProcessTable && (slot.state == .settingUp || slot.state == .running) {
            sendWithoutWaiting(frame, to: slot)
        }
    }

    /// The Supervisor never blocks on a worker: one that stops reading its channel is killed
    /// (and replaced), instead of wedging the only privileged process. A closed channel means the
    /// worker is exiting; its pidfd says how.
    private func sendWithoutWaiting(_ frame: IPCFrame, to slot: WorkerSlot) {
        do { try slot.ipc?.send(frame, blocking: false) } catch IPCError.wouldBlock {
            audit.record("worker_unresponsive", slot.auditFields)
            kill(slot, reason: "killed by the supervisor: not reading its control channel")
        } catch {}
    }

    // MARK: - The loop

    private func pollOnce() {
        var pollFds = [pollfd(fd: signalFd.rawValue, events: Int16(POLLIN), revents: 0)]
        var owners: [(WorkerSlot, Bool)] = []  // (slot, isPidfd) for pollFds[1...]
        for slot in slots {
            if let pidfd = slot.pidfd {
                pollFds.append(pollfd(fd: pidfd.rawValue, events: Int16(POLLIN), revents: 0))
                owners.append((slot, true))
            }
            if let ipc = slot.ipc {
                pollFds.append(pollfd(fd: ipc.fd.rawValue, events: Int16(POLLIN), revents: 0))
                owners.append((slot, false))
            }
        }
        let cni = isDraining ? nil : inPod?.pollFd
        if let cni { pollFds.append(pollfd(fd: cni, events: Int16(POLLIN), revents: 0)) }
        let rc = poll(&pollFds, nfds_t(pollFds.count), pollTimeout())
        if rc < 0 {
            if errno != EINTR { Log.error("poll: \(String(cString: strerror(errno)))") }
            return
        }
        if pollFds[0].revents != 0 { handleSignals() }
        for (offset, (slot, isPidfd)) in owners.enumerated() where pollFds[offset + 1].revents != 0 {
            if isPidfd { reap(slot) } else { readMessages(from: slot) }
        }
        if cni != nil, let last = pollFds.last, last.revents != 0, let inPod {
            inPod.readable()
            relayInPodEvents()
        }
    }

    private func pollTimeout() -> Int32 {
        var deadlines = slots.compactMap { $0.setupDeadline } + slots.compactMap { $0.restartAt }
        if let nextTokenRead { deadlines.append(nextTokenRead) }
        if let nextFileCheck { deadlines.append(nextFileCheck) }
        if let drainDeadline { deadlines.append(drainDeadline) }
        if let nextXDSStatsRelay { deadlines.append(nextXDSStatsRelay) }
        if let nextLogFilterRelay { deadlines.append(nextLogFilterRelay) }
        if let next = auditBudget.nextDue { deadlines.append(next) }
        if !isDraining { deadlines.append(nextProcessStats) }
        if !isDraining, let next = inPod?.nextDeadline { deadlines.append(next) }
        guard let next = deadlines.min() else { return -1 }
        return Int32(clamping: max(0, next - Clock.monotonicMilliseconds()))
    }

    private func readMessages(from slot: WorkerSlot) {
        // Take what is queued, a bounded number per turn so one chatty worker cannot keep the
        // loop from signals, deadlines and the others; stop at the first refusal.
        var budget = 64
        while let ipc = slot.ipc, budget > 0 {
            budget -= 1
            do {
                guard case .frame(let frame) = try ipc.receive(blocking: false, defusingFds: true) else { return }
                try handle(try WorkerMessage.decode(frame), from: slot)
            } catch IPCError.closed {
                // The worker is exiting; its pidfd reports how.
                slot.ipc = nil
                return
            } catch {
                securityViolation(slot, "\(error)")
                return
            }
        }
    }

    /// A worker sent bytes that do not decode, or a message out of turn: it is treated as
    /// compromised. Kill it, record a security event, and let the lost-child policy decide.
    private func securityViolation(_ slot: WorkerSlot, _ reason: String) {
        audit.record("ipc_violation", slot.auditFields + [("security", .bool(true)), ("reason", .string(reason))])
        Log.error("security: \(slot.name) violated the IPC protocol; killing it", [("pid", "\(slot.pid)"), ("reason", reason)])
        kill(slot, reason: "killed by the supervisor: IPC violation (\(reason))")
    }

    private func kill(_ slot: WorkerSlot, reason: String) {
        slot.killReason = reason
        slot.ipc = nil
        if let pidfd = slot.pidfd { _ = CShims_pidfd_send_signal(pidfd.rawValue, SIGKILL) }
    }

    private func reap(_ slot: WorkerSlot) {
        var status: Int32 = 0
        let rc = waitpid(slot.pid, &status, WNOHANG)
        guard rc == slot.pid else { return }
        // Its last messages (a shutdown request, an audit event) are still queued: take them
        // before the channel is forgotten, unless it was killed for what it sent.
        if slot.killReason == nil { readMessages(from: slot) }
        let cause = slot.killReason ?? ExitCause.describe(waitStatus: status)
        workerGone(slot, cause: cause, isStartupFailure: Self.isStartupFailure(state: slot.state, waitStatus: status,
                                                                                killedForSetupTimeout: slot.killedForSetupTimeout))
    }

    /// Whether an exit says the worker could not start (a broken set-up), as opposed to a worker
    /// that may have been killed by what it read. A worker reads outside bytes from the moment it
    /// is handed its listeners or signer peers, which is before it reports ready, so "not yet
    /// ready" is not enough (issue #6 review: a poisoned backlog would make replacements die in
    /// SettingUp and count towards giving up). Start-up failures are: dying before the hello
    /// (nothing from outside read yet), a worker's own EX_CONFIG exit (78: it cannot confine
    /// itself or use its configuration), and missing the setup deadline.
    static func isStartupFailure(state: ProcessEntry.State, waitStatus: Int32, killedForSetupTimeout: Bool) -> Bool {
        if state == .running { return false }
        if killedForSetupTimeout || state == .starting { return true }
        let exitedNormally = waitStatus & 0x7f == 0
        return exitedNormally && (waitStatus >> 8) & 0xff == 78
    }

    private func workerGone(_ slot: WorkerSlot, cause: String, isStartupFailure: Bool) {
        let wasReady = !isStartupFailure
        slot.pidfd = nil
        slot.ipc = nil
        slot.setupDeadline = nil
        slot.lastExitCause = cause
        slot.state = .stopped
        audit.record("worker_exit", slot.auditFields + [("cause", .string(cause))])
        if isDraining {
            Log.info("\(slot.name) exited during drain: \(cause)", [("pid", "\(slot.pid)")])
            return
        }
        Log.warn("\(slot.name) exited: \(cause)", [("pid", "\(slot.pid)")])
        switch restartPolicy.workerExited(slot: slot.name, at: Clock.monotonicMilliseconds(), wasReady: wasReady) {
        case .restart(let delay):
            slot.restarts += 1
            slot.state = .backoff
            slot.restartAt = Clock.monotonicMilliseconds() + delay
            audit.record("worker_restart", slot.auditFields + [("backoff_ms", .int(delay)), ("restarts", .int(Int64(slot.restarts))),
                                                               ("was_serving", .bool(wasReady))])
            broadcastProcessTable()
        case .giveUp(let exits, let window):
            let line = "crash loop: \(exits) workers exited before becoming ready within \(window / 1000)s (last: \(slot.name) \(cause)); giving up so the pod is restarted"
            flushAuditSummaries()
            audit.record("crash_loop", [("exits", .int(Int64(exits))), ("window_ms", .int(window)), ("last", .string(slot.name))])
            Log.error(line)
            terminateAll()
            exitCode = 1
        }
    }

    /// The descriptors open in this process and every live worker (counted in /proc), and the
    /// descriptor limit (RLIMIT_NOFILE, raised at start and inherited by the workers).
    private func processStats() -> SupervisorMessage {
        func count(_ pid: Int32) -> UInt32 {
            // Since Linux 6.2 the directory's size is its count: no listing, and no read
            // permission on another uid's directory (the Supervisor keeps no DAC capability).
            var status = stat()
            if stat("/proc/\(pid)/fd", &status) == 0, status.st_size > 0 { return UInt32(clamping: status.st_size) }
            guard let directory = opendir("/proc/\(pid)/fd") else { return 0 }
            defer { closedir(directory) }
            var entries: UInt32 = 0
            while let entry = readdir(directory) {
                if entry.pointee.d_name.0 != UInt8(ascii: ".") { entries += 1 }
            }
            return entries
        }
        var open = count(getpid())
        for slot in slots where slot.isAlive { open &+= count(slot.pid) }
        var limit = rlimit()
        _ = getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        return .processStats(openFds: open, maxFds: UInt32(clamping: limit.rlim_cur))
    }

    // MARK: - In-pod mode

    /// A served pod and its listeners (NetWorker `slot.index`'s copies), for one NetWorker.
    private func podFrames(_ uid: String, _ inPod: InPod, for slot: WorkerSlot) -> [IPCFrame] {
        guard let pod = inPod.pods[uid], pod.isUp else { return [] }
        return [SupervisorMessage.podAdded(uid: uid, info: pod.info).frame()]
            + inPod.listeners(of: uid, index: Int(slot.index)).map { SupervisorMessage.podListener(uid: uid, name: $0.name, fd: $0.fd).frame() }
    }

    /// Tells the NetWorkers what changed among the pods.
    private func relayInPodEvents() {
        guard let inPod else { return }
        var statusChanged = false
        for event in inPod.takeEvents() {
            switch event {
            case .up(let uid):
                for net in liveNetWorkers {
                    for frame in podFrames(uid, inPod, for: net) { sendWithoutWaiting(frame, to: net) }
                }
            case .down(let uid):
                let frame = SupervisorMessage.podRemoved(uid: uid).frame()
                for net in liveNetWorkers { sendWithoutWaiting(frame, to: net) }
            case .updated(let uid):
                guard let pod = inPod.pods[uid] else { continue }
                let frame = SupervisorMessage.podAdded(uid: uid, info: pod.info).frame()
                for net in liveNetWorkers { sendWithoutWaiting(frame, to: net) }
            case .status:
                statusChanged = true
            }
        }
        if statusChanged {
            let frame = SupervisorMessage.inPodStatus(synced: inPod.isSynced, pending: inPod.pending, started: inPod.started, stopped: inPod.stopped).frame()
            for net in liveNetWorkers { sendWithoutWaiting(frame, to: net) }
        }
    }

    /// Unconnected sockets made in a served pod's namespace for a NetWorker, within its budget
    /// (sockets per second); a pod that is gone or pending gets none (the NetWorker stops waiting
    /// at its deadline), and a NetWorker over its budget gets none this second.
    private func givePodSockets(_ inPod: InPod, uid: String, family: PodSocketFamily, count: Int, to slot: WorkerSlot) {
        let granted = podSocketBudget.spend(slot.index, upTo: count, nowMilliseconds: Clock.monotonicMilliseconds())
        guard granted > 0 else {
            Log.warn("\(slot.name) asked for more than \(Self.podSocketsPerSecond) pod sockets this second; refused")
            return
        }
        guard let sockets = inPod.upstreamSockets(for: uid, family: family, count: granted) else {
            Log.debug("pod sockets asked for a pod not served", [("uid", uid), ("by", slot.name)])
            return
        }
        // Best effort: a NetWorker whose channel is filling gets fewer (it asks again); it is
        // never killed for a burst of its own asking.
        // (The channel has a 4 MiB buffer; a quarter of it is the line.)
        for fd in sockets where slot.ipc?.hasHeadroom(below: 1 << 20) == true {
            try? slot.ipc?.send(SupervisorMessage.podSocket(uid: uid, family: family, fd: fd).frame(), blocking: false)
        }
    }

    /// An operator changed the log filter through a NetWorker's `/logging` (already checked by
    /// the decoder): in force here at once, relayed to every worker when due.
    private func changeLogFilter(_ filter: String, by slot: WorkerSlot) {
        guard filter != logFilter else { return }
        do { try Log.setFilter(filter) } catch { return }
        Log.info("log filter changed", [("filter", filter), ("by", slot.name)])
        if !logFilterRelayPending { logFilterPrevious = logFilter }
        logFilterChangedBy = slot
        logFilter = filter
        logFilterRelayPending = true
        if nextLogFilterRelay == nil {
            nextLogFilterRelay = max(Clock.monotonicMilliseconds(), lastLogFilterRelay + Self.logFilterRelayMilliseconds)
        }
    }

    private func relayLogFilter(now: Int64) {
        guard let due = nextLogFilterRelay, now >= due else { return }
        nextLogFilterRelay = nil
        lastLogFilterRelay = now
        guard logFilterRelayPending else { return }
        logFilterRelayPending = false
        // Audited as relayed (at most every 250 ms), not per request: posts cannot flood the sink.
        audit.record("log_filter_changed", (logFilterChangedBy?.auditFields ?? []) + [("filter", .string(logFilter)),
                                                                                     ("previous", .string(logFilterPrevious))])
        let frame = SupervisorMessage.logFilter(logFilter).frame()
        for slot in slots where slot.state == .settingUp || slot.state == .running { sendWithoutWaiting(frame, to: slot) }
    }

    /// Relays the xDS counters when due; a NetWorker that is not reading skips this round.
    private func relayXDSStats(now: Int64) {
        guard let due = nextXDSStatsRelay, now >= due else { return }
        nextXDSStatsRelay = nil
        lastXDSStatsRelay = now
        let frame = SupervisorMessage.xdsStats(xdsStatsBefore.adding(xdsStatsCurrent)).frame()
        for net in liveNetWorkers {
            try? net.ipc?.send(frame, blocking: false)
        }
    }

    private func handleDeadlines() {
        let now = Clock.monotonicMilliseconds()
        relayXDSStats(now: now)
        relayLogFilter(now: now)
        for summary in auditBudget.due(nowMilliseconds: now) { recordDropped(summary) }
        if !isDraining && now >= nextProcessStats {
            nextProcessStats = now + Self.processStatsMilliseconds
            let frame = processStats().frame()
            for net in liveNetWorkers where net.ipc?.hasHeadroom(below: 256 << 10) == true { try? net.ipc?.send(frame, blocking: false) }
        }
        if !isDraining, let inPod {
            inPod.tick(now: now)
            relayInPodEvents()
        }
        for slot in slots {
            if let deadline = slot.setupDeadline, now >= deadline, slot.isAlive {
                slot.setupDeadline = nil
                audit.record("worker_setup_timeout", slot.auditFields)
                slot.killedForSetupTimeout = true
                kill(slot, reason: "killed by the supervisor: setup handshake timed out in state \(slot.state)")
            }
            if let at = slot.restartAt, now >= at, !isDraining, exitCode == nil { start(slot) }
        }
        if let nextTokenRead, now >= nextTokenRead { refreshCAToken() }
        if let nextFileCheck, now >= nextFileCheck {
            // No reloads while draining (and no deadline left in the past to spin the loop on).
            if isDraining { self.nextFileCheck = nil } else { reloadFiles() }
        }
        if let drainDeadline, now >= drainDeadline {
            self.drainDeadline = nil
            for slot in slots where slot.isAlive {
                Log.warn("\(slot.name) did not exit by the drain deadline; killing it")
                kill(slot, reason: "killed by the supervisor: drain deadline passed")
            }
        }
    }

    // MARK: - Signals and drain

    private func handleSignals() {
        var info = signalfd_siginfo()
        while read(signalFd.rawValue, &info, MemoryLayout<signalfd_siginfo>.size) == MemoryLayout<signalfd_siginfo>.size {
            let signal = Int32(info.ssi_signo)
            if signal == SIGINT && isDraining {
                // A second SIGINT: stop now (ISTIO_COMPAT §20).
                Log.info("second SIGINT: exiting now")
                flushAuditSummaries()
                audit.record("supervisor_exit", [("code", .int(0)), ("reason", .string("second SIGINT"))])
                terminateAll()
                exitCode = 0
                return
            }
            beginDrain(reason: signal == SIGINT ? "SIGINT" : "SIGTERM")
        }
    }

    private func beginDrain(reason: String) {
        guard !isDraining else { return }
        isDraining = true
        let deadline = configuration.drainDeadlineMilliseconds
        audit.record("drain_start", [("reason", .string(reason)), ("deadline_ms", .int(deadline))])
        Log.info("draining: \(reason); live connections get \(deadline) ms")
        broker.closeAll()
        inPod?.close()
        let frame = SupervisorMessage.drain(deadlineMilliseconds: UInt32(clamping: deadline)).frame()
        for slot in slots {
            slot.restartAt = nil
            if slot.state == .running || slot.state == .settingUp { sendWithoutWaiting(frame, to: slot) }
            if slot.state == .backoff { slot.state = .stopped }
        }
        // Workers exit themselves at the deadline; a margin later the stragglers are killed.
        drainDeadline = Clock.monotonicMilliseconds() + deadline + 2000
    }

    /// Kills every live worker and waits for each, so none outlives the Supervisor.
    private func terminateAll() {
        for slot in slots where slot.isAlive {
            if let pidfd = slot.pidfd { _ = CShims_pidfd_send_signal(pidfd.rawValue, SIGKILL) }
            var status: Int32 = 0
            _ = waitpid(slot.pid, &status, 0)
            slot.pidfd = nil
            slot.ipc = nil
            slot.state = .stopped
        }
    }
}
