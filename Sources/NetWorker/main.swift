import IPC
import Mesh
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
        let threads = configuration.int("ZTUNNEL_WORKER_THREADS")
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads > 0 ? threads : cores)
        let tracker = ConnectionTracker()
        var proxyPorts: Set<UInt16> = []
        for name in ["ZTUNNEL_OUTBOUND_ADDR", "ZTUNNEL_INBOUND_PLAINTEXT_ADDR", "ZTUNNEL_INBOUND_ADDR", "ZTUNNEL_SOCKS5_ADDR"] {
            if let address = configuration.address(name) { proxyPorts.insert(address.port) }
        }
        let identities = IdentityTable()
        let reporter = BoundReporter()
        let metrics = TrafficMetrics()
        let authorization = InboundAuthorization(state: state, live: AuthorizedConnections())
        signer.onIdentity = { material in identities.update(material) }
        signer.onStatus = { statuses in identities.update(statuses: statuses) }
        signer.onWithdraw = { spiffeId in identities.withdraw(spiffeId) }
        signer.onAttach = { identities.removeAll() }
        let bounds = Bounds(configuration)
        let pools = HBONEPools(settings: HBONEPool.Settings(
            signer: signer, bounds: bounds, reporter: reporter, maxStreams: configuration.int("POOL_MAX_STREAMS_PER_CONNECTION"),
            idleRelease: .milliseconds(configuration.milliseconds("POOL_UNUSED_RELEASE_TIMEOUT"))))
        let factory = ListenerFactory(
            group: group,
            endpoints: HTTPEndpoints(state: state, identities: identities, liveConnections: { tracker.count },
                                     boundMetrics: { reporter.metricLines() + metrics.metricLines() }),
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
            onFollowUp: { followUp in
                switch followUp {
                case .none: break
                case .requestShutdown: try? channel.send(WorkerMessage.shutdownRequest.frame())
                case .injectFault(let kind, let port): FaultInjection.inject(kind, port: port, channel: channel)
                }
            })
        var control = ControlLoop(channel: channel, state: state, factory: factory, tracker: tracker, signer: signer,
                                  authorization: authorization)
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
    private var servers: [Channel] = []
    private var hasModel = false

    init(channel: IPCSocket, state: NetWorkerState, factory: ListenerFactory, tracker: ConnectionTracker, signer: SignerClient,
         authorization: InboundAuthorization) {
        self.authorization = authorization
        self.channel = channel
        self.state = state
        self.factory = factory
        self.tracker = tracker
        self.signer = signer
    }

    mutating func run() -> Never {
        while true {
            guard let message = WorkerBootstrap.nextMessage(from: channel, blocking: true) else { continue }
            switch message {
            case .listener(let name, let fd):
                do { servers.append(try factory.adopt(name: name, fd: fd).wait()) } catch {
                    WorkerBootstrap.die("cannot serve listener \(name): \(error)")
                }
                Log.debug("serving \(name)")
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
            case .setup, .signerPeer, .caToken, .fault:
                WorkerBootstrap.die("unexpected \(message.code) from the supervisor")
            }
        }
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
        hasModel = true
        state.update(model: config.model)
        if let closed = authorization.live?.recheck(with: authorization), closed > 0 {
            Log.info("policy change closed \(closed) live connections")
        }
        let (wanted, skipped) = config.wantedIdentities(node: state.configuration.string("NODE_NAME"))
        for reason in skipped { Log.warn(reason) }
        Log.info("local config", [("generation", "\(generation)"), ("workloads", "\(config.model.workloads.count)"),
                                  ("services", "\(config.model.services.count)"), ("policies", "\(config.model.policies.count)"),
                                  ("identities", "\(wanted.count)")])
        signer.want(wanted)
        try? channel.send(WorkerMessage.localConfigApplied(generation: generation, accepted: true).frame())
    }

    /// Stops accepting, lets live connections finish until the deadline, closes the rest, exits 0.
    private func drain(deadlineMilliseconds: Int64) -> Never {
        state.startDraining()
        let deadline = Clock.monotonicMilliseconds() + deadlineMilliseconds
        for server in servers { try? server.close().wait() }
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
