import IPC
import Mesh
import XDS
import NIOCore
import NIOPosix
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// `ztunnel-net-worker`: confined first, then serves the listeners the Supervisor hands it.
/// The main thread reads the IPC channel (blocking); SwiftNIO's threads serve traffic.
enum NetWorkerMain {
    static func run() -> Never {
        // Read before the sandbox: NIO finds the CPU count in cgroup files, and the NetWorker's
        // allowlist has no open(2).
        let cores = System.coreCount
        let signer = SignerClient()
        let started = WorkerBootstrap.start(as: .netWorker) { _ in try TLSContext.installProvider(signer) }
        let channel = started.channel
        let configuration = started.configuration
        let state = NetWorkerState(configuration: configuration, index: started.setup.index)
        func optional(_ name: String) -> Int? { WorkerThreads.cpus(configuration.string(name)) }
        let total = WorkerThreads.total(setting: configuration.string("ZTUNNEL_WORKER_THREADS"), cpus: cores,
                                        cpuLimit: optional("ZTUNNEL_CPU_LIMIT"), limit: optional("ZTUNNEL_RESOURCE_CPU_LIMIT"),
                                        request: optional("ZTUNNEL_RESOURCE_CPU_REQUEST"))
        let threads = WorkerThreads.perNetWorker(total: total, netWorkers: configuration.int("ZTUNNEL_NET_WORKERS"))
        Log.info("data-plane threads", [("threads", "\(threads)"), ("in_all", "\(total)"), ("cpus", "\(cores)")])
        let loopMetrics = LoopMetrics(netWorker: started.setup.index)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads, metricsDelegate: loopMetrics)
        let tracker = ConnectionTracker()
        var proxyPorts: Set<UInt16> = []
        for name in ["ZTUNNEL_OUTBOUND_ADDR", "ZTUNNEL_INBOUND_PLAINTEXT_ADDR", "ZTUNNEL_INBOUND_ADDR", "ZTUNNEL_SOCKS5_ADDR"] {
            if let address = configuration.address(name) { proxyPorts.insert(address.port) }
        }
        let identities = IdentityTable()
        let reporter = BoundReporter()
        let metrics = TrafficMetrics()
        let dnsMetrics = DNSMetrics(enabled: configuration.isInPodMode)
        let hostnames = HostnameResolver()
        let share = MetricsShare()
        let counted: @Sendable () -> [String] = {
            reporter.metricLines() + metrics.metricLines() + dnsMetrics.metricLines() + hostnames.metricLines() + loopMetrics.metricLines()
                + Revocations.shared.metricLines()
        }
        let authorization = InboundAuthorization(state: state, live: AuthorizedConnections())
        if !configuration.string("CRL_PATH").isEmpty { Revocations.shared.enable() }
        signer.onIdentity = { material in identities.update(material) }
        signer.onStatus = { statuses in identities.update(statuses: statuses) }
        signer.onWithdraw = { spiffeId in identities.withdraw(spiffeId) }
        signer.onAttach = { identities.removeAll() }
        let bounds = Bounds(configuration)
        if configuration.isInPodMode {
            PodDialer.shared = PodDialer(poolTarget: configuration.int("ZTUNNEL_POD_SOCKET_POOL"),
                                         bindsOriginalSource: started.setup.seccomp.allows(syscall: "bind")) { uid, family, count in
                // Never blocks an event loop: a full channel drops the request; the connection
                // waiting for a socket gives up at its deadline and the next one asks again.
                try? channel.send(WorkerMessage.podSocketsWanted(uid: uid, family: family, count: count).frame(), blocking: false)
            }
        }
        // The pods' DNS proxy, the lookups of SOCKS5 names outside the mesh and of workloads
        // known by hostname: all use the nameserver sockets the Supervisor sends.
        DNSProxy.shared = DNSProxy(state: state, group: group, metrics: dnsMetrics)
        let onDemand = OnDemandLookups(isEnabled: configuration.bool("XDS_ON_DEMAND") && !configuration.string("XDS_ADDRESS").isEmpty) { key in
            // Never blocks an event loop: with the channel full the lookup is asked again shortly.
            (try? channel.send(WorkerMessage.demand(key).frame(), blocking: false)) != nil
        }
        let pools = HBONEPools(settings: HBONEPool.Settings(
            signer: signer, bounds: bounds, reporter: reporter, maxStreams: configuration.int("POOL_MAX_STREAMS_PER_CONNECTION"),
            idleRelease: .milliseconds(configuration.milliseconds("POOL_UNUSED_RELEASE_TIMEOUT"))))
        let factory = ListenerFactory(
            group: group,
            endpoints: HTTPEndpoints(state: state, identities: identities, liveConnections: { tracker.count },
                                     boundMetrics: {
                share.merged(counted()) + (state.xdsStats?.metricLines() ?? [])
                    + (configuration.isInPodMode ? state.inPod.metricLines : []) + state.processMetricLines
            }),
            tracker: tracker,
            guardrails: DestinationGuard(proxyPorts: proxyPorts),
            identities: identities,
            signer: signer,
            bounds: bounds,
            limiter: ConnectionLimiter(),
            reporter: reporter,
            authorization: authorization,
            metrics: metrics,
            pools: pools,
            onDemand: onDemand,
            hostnames: hostnames,
            onFollowUp: { followUp in
                switch followUp {
                case .none: break
                case .requestShutdown: try? channel.send(WorkerMessage.shutdownRequest.frame())
                case .setLogFilter(let filter):
                    _ = try? Log.setFilter(filter)
                    try? channel.send(WorkerMessage.logFilter(filter).frame(), blocking: false)
                case .injectFault(let kind, let port): FaultInjection.inject(kind, port: port, channel: channel, signer: signer, identities: identities)
                case .relayFault(let kind, let port): try? channel.send(WorkerMessage.faultRequest(kind, port: port).frame())
                }
            })
        share.startPublishing(on: group.next(), counted)
        var control = ControlLoop(channel: channel, state: state, factory: factory, tracker: tracker, signer: signer,
                                  authorization: authorization, share: share, identities: identities, onDemand: onDemand)
        control.run()
    }
}

/// Dispatches the Supervisor's messages on the main thread.
struct ControlLoop {
    let channel: IPCSocket
    let state: NetWorkerState
    let factory: ListenerFactory
    let tracker: ConnectionTracker
    let signer: SignerClient
    let authorization: InboundAuthorization
    let share: MetricsShare
    let identities: IdentityTable
    let onDemand: OnDemandLookups
    private var servers: [Channel] = []
    private var hasModel = false
    /// The two sources of the mesh model (ISTIO_COMPAT §19: LOCAL_XDS_PATH and XDS_ADDRESS may be
    /// set together): the local file's last good model and the xDS worker's last snapshot.
    private var localConfig: LocalConfig?
    /// The xDS worker's last snapshot, and what it changed that the model does not have yet.
    private var xds = SnapshotInForce()
    /// The model last put in force, which a new snapshot changes in place of a rebuild.
    private var builtModel: MeshModel?
    /// How long the last snapshot took to map and compare with the one before, for the model's
    /// log line.
    private var decodeMilliseconds: Int64 = 0
    private let usesXDS: Bool
    /// Data-plane listeners held back until the first mesh snapshot is in force (§6.4: nothing is
    /// accepted before the model is); the kernel queues connections meanwhile.
    private var heldListeners: [(String, OwnedFD, String?)] = []
    /// In-pod mode: each pod's listeners as served.
    private var podServers: [String: [Channel]] = [:]

    init(channel: IPCSocket, state: NetWorkerState, factory: ListenerFactory, tracker: ConnectionTracker, signer: SignerClient,
         authorization: InboundAuthorization, share: MetricsShare, identities: IdentityTable, onDemand: OnDemandLookups) {
        self.identities = identities
        self.onDemand = onDemand
        self.authorization = authorization
        self.share = share
        self.channel = channel
        self.state = state
        self.factory = factory
        self.tracker = tracker
        self.signer = signer
        usesXDS = !state.configuration.string("XDS_ADDRESS").isEmpty
        state.awaitingMesh = usesXDS
    }

    mutating func run() -> Never {
        while true {
            guard let message = WorkerBootstrap.nextMessage(from: channel, blocking: true) else { continue }
            switch message {
            case .listener("dns-upstream", let fd):
                DNSProxy.shared?.addUpstream(fd)
            case .listener(let name, let fd):
                if usesXDS && !xds.hasSnapshot && !ListenerFactory.controlListeners.contains(name) {
                    heldListeners.append((name, fd, nil))
                } else {
                    adopt(name: name, fd: fd)
                }
            case .podAdded(let uid, let info):
                PodDialer.shared?.add(uid, info)  // also fills its socket pool ahead of the first connection
            case .podListener(let uid, let name, let fd):
                guard PodDialer.shared?.isServed(uid) == true else { continue }
                if usesXDS && !xds.hasSnapshot {
                    heldListeners.append((name, fd, uid))
                } else {
                    adopt(name: name, fd: fd, pod: uid)
                }
            case .podRemoved(let uid):
                for server in podServers.removeValue(forKey: uid) ?? [] { server.close(promise: nil) }
                heldListeners.removeAll { $0.2 == uid }
                PodDialer.shared?.remove(uid)
                factory.pools.close(pod: uid)
            case .podSocket(let uid, let family, let fd):
                PodDialer.shared?.add(socket: fd, pod: uid, family: family)
            case .processStats(let open, let max):
                state.processStats = (open, max)
            case .inPodStatus(let synced, let pending, let started, let stopped):
                state.updateInPod {
                    $0.synced = synced
                    $0.pending = pending
                    $0.started = started
                    $0.stopped = stopped
                }
            case .meshSnapshot(let generation, let fd):
                applySnapshot(generation: generation, fd: fd)
            case .revocations(let generation, let fd):
                applyRevocations(generation: generation, fd: fd)
            case .xdsStats(let stats):
                state.xdsStats = stats
            case .metricsRegion(let index, let writable, let fd):
                share.attach(index: index, writable: writable, fd: fd)
            case .processTable(let entries):
                state.update(processTable: entries)
            case .localConfig(let generation, let bytes):
                applyLocalConfig(generation: generation, bytes)
            case .configured:
                do { try channel.send(WorkerMessage.ready.frame()) } catch { WorkerBootstrap.die("cannot send ready: \(error)") }
                Log.info("serving", [("listeners", "\(servers.count)")])
            case .drain(let deadline):
                drain(deadlineMilliseconds: Int64(deadline))
            case .signerChannel(let fd):
                signer.attach(IPCSocket(fd))
            case .logFilter(let filter):
                _ = try? Log.setFilter(filter)
            case .demandAnswered(let generation, let keys):
                onDemand.answered(keys, generation: generation)
            case .setup, .signerPeer, .caToken, .fault, .demand:
                WorkerBootstrap.die("unexpected \(message.code) from the supervisor")
            }
        }
    }

    private mutating func adopt(name: String, fd: OwnedFD, pod: String? = nil) {
        let server: Channel
        do { server = try factory.adopt(name: name, fd: fd, pod: pod).wait() } catch {
            WorkerBootstrap.die("cannot serve listener \(name): \(error)")
        }
        if let pod {
            podServers[pod, default: []].append(server)
            Log.debug("serving \(name) of pod \(pod)")
        } else {
            servers.append(server)
            Log.debug("serving \(name)")
        }
    }

    /// New CRL_PATH bytes (relayed by the Supervisor as a sealed memfd): parsed here, put in
    /// force, and every live HBONE connection whose peer they now revoke is closed. Lists that do
    /// not parse are refused and the ones in force stay.
    private func applyRevocations(generation: UInt64, fd: OwnedFD) {
        do {
            let outcome = try SealedMemfd.withContents(fd.rawValue, maxBytes: Revocations.maxBytes) {
                try Revocations.shared.install(Array($0))
            }
            Log.info("revocation lists in force", [("generation", "\(generation)"), ("lists", "\(outcome.lists)"),
                                                   ("revoked", "\(outcome.revoked)"), ("connections_closed", "\(outcome.closed)")])
            try? channel.send(WorkerMessage.revocationsApplied(generation: generation, accepted: true).frame())
        } catch {
            Log.error("CRL_PATH generation \(generation) refused: \(error); \(Revocations.shared.problem ?? "the revocation lists in force stay")")
            try? channel.send(WorkerMessage.revocationsApplied(generation: generation, accepted: false).frame())
        }
    }

    /// Maps a snapshot from the xDS worker (relayed by the Supervisor), finds what it changes
    /// from the last one (`SnapshotInForce`: on the bytes, checking what changed) and puts that in
    /// force with the local config's model. A snapshot that is not sealed, too large or not
    /// well formed is refused and the model in force stays; resources that do not convert are
    /// left out and logged (the xDS worker already refused them; this is the second check).
    private mutating func applySnapshot(generation: UInt64, fd: OwnedFD) {
        let started = Clock.monotonicMilliseconds()
        do {
            // `accept` changes nothing when it throws.
            try SealedMemfd.withContents(fd.rawValue, maxBytes: SealedMemfd.maxMeshSnapshotBytes) { try xds.accept($0) }
        } catch {
            Log.error("mesh snapshot \(generation) refused: \(error); keeping the model in force")
            onDemand.applied(generation: generation)
            try? channel.send(WorkerMessage.meshApplied(generation: generation, accepted: false).frame())
            return
        }
        decodeMilliseconds = Clock.monotonicMilliseconds() - started
        let refused = publishModel(reason: "xds", generation: "\(generation)", snapshotChanged: true)
        for reason in refused.prefix(16) { Log.warn("mesh snapshot resource left out: \(reason)") }
        state.awaitingMesh = false
        for (name, fd, pod) in heldListeners { adopt(name: name, fd: fd, pod: pod) }
        heldListeners = []
        onDemand.applied(generation: generation)
        try? channel.send(WorkerMessage.meshApplied(generation: generation, accepted: true).frame())
    }

    /// Builds the model from both sources, puts it in force, decides live connections again and
    /// asks for the identities of this node's workloads. Returns the snapshot resources left out.
    @discardableResult
    private mutating func publishModel(reason: String, generation: String, snapshotChanged: Bool = false) -> [String] {
        let started = Clock.monotonicMilliseconds()
        var refused: [String] = []
        var model: MeshModel
        // A new snapshot changes the model in force where it differs (the local config's
        // resources are untouched); anything else, or a change the local config's resources
        // collide with, rebuilds it from both sources.
        let base = localConfig?.model ?? MeshModel()
        var how = "rebuilt"
        if snapshotChanged, var previous = builtModel, xds.applyPending(to: &previous, base: base, refused: &refused) {
            model = previous
            how = "changed"
        } else {
            refused = []
            model = base
            xds.insertAll(into: &model, refused: &refused)
        }
        builtModel = model
        hasModel = true
        let node = state.configuration.string("NODE_NAME")
        var wanted = Set<String>()
        if let localConfig {
            let (identities, skipped) = localConfig.wantedIdentities(node: node)
            for reason in skipped { Log.warn(reason) }
            wanted.formUnion(identities)
        }
        if xds.hasSnapshot {
            // The workloads the snapshot brought (resource name = uid), from the merged model:
            // converted once. Only those on this node: without NODE_NAME none (certificates for
            // a whole mesh would be thousands of impersonated CSRs).
            for uid in node.isEmpty ? [] : model.workloadsByNode[node] ?? [] where xds.addressNames.contains(uid) {
                if let workload = model.workloads[uid], workload.tunnelProtocol == .hbone, let identity = workload.identity {
                    wanted.insert(identity)
                }
            }
        }
        // Expected before the model is in force: a new workload's first connection then waits
        // for its certificate instead of being refused.
        identities.expect(wanted)
        state.update(model: model)
        if let closed = authorization.live?.recheck(with: authorization), closed > 0 {
            Log.info("policy change closed \(closed) live connections")
        }
        // How it was built and what it cost: decoding the snapshot, then the model (`changed`:
        // in place, converting only what changed; `rebuilt`: from both sources).
        var timing = [("model", how), ("model_ms", "\(Clock.monotonicMilliseconds() - started)")]
        if snapshotChanged { timing.append(("decode_ms", "\(decodeMilliseconds)")) }
        Log.info("mesh model", [("source", reason), ("generation", generation), ("workloads", "\(model.workloads.count)"),
                                ("services", "\(model.services.count)"), ("policies", "\(model.policies.count)"),
                                ("identities", "\(wanted.count)")] + timing)
        signer.want(wanted.sorted())
        return refused
    }

    /// Parses a generation of the local config and puts it in force: the model is replaced whole,
    /// the wanted identities updated and every live authorized connection decided again. A file
    /// that does not parse keeps the model in force, and at start (no model yet) stops this
    /// worker: serving with no model would allow what the file was written to deny. Either way the
    /// Supervisor is told, so it never hands refused bytes to a new NetWorker.
    private mutating func applyLocalConfig(generation: UInt32, _ bytes: [UInt8]) {
        let config: LocalConfig
        do { config = try LocalConfig.parse(String(decoding: bytes, as: UTF8.self)) } catch {
            if !hasModel { WorkerBootstrap.die("\(error)") }
            Log.error("\(error); keeping the mesh model in force")
            try? channel.send(WorkerMessage.localConfigApplied(generation: generation, accepted: false).frame())
            return
        }
        localConfig = config
        publishModel(reason: "local config", generation: "\(generation)")
        try? channel.send(WorkerMessage.localConfigApplied(generation: generation, accepted: true).frame())
    }

    /// Stops accepting, lets live connections finish until the deadline, closes the rest, exits 0.
    private func drain(deadlineMilliseconds: Int64) -> Never {
        state.startDraining()
        let deadline = Clock.monotonicMilliseconds() + deadlineMilliseconds
        for server in servers + podServers.values.flatMap({ $0 }) { try? server.close().wait() }
        tracker.announceDrain()
        Log.info("draining", [("live", "\(tracker.count)"), ("deadline_ms", "\(deadlineMilliseconds)")])
        let remaining = tracker.waitUntilEmpty(deadline: deadline)
        if !remaining.isEmpty {
            Log.info("drain deadline passed; closing \(remaining.count) connections")
            for connection in remaining { try? connection.close().wait() }
        }
        Log.info("drained; exiting")
        exit(0)
    }
}

NetWorkerMain.run()
