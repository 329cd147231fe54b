import Foundation
import HTTP2Client
import IPC
import Mesh
import Shared
import SwiftProtobuf
import XDS
#if canImport(Glibc)
import Glibc
#endif

/// `ztunnel-xds-worker`: the one delta ADS stream to istiod (ISTIO_COMPAT §6). One poll loop over
/// the Supervisor's channel and the stream's socket; a connection is made (name lookup, TCP,
/// TLS: up to 10 s) on a thread of its own, so the loop keeps answering the Supervisor meanwhile. Every resource is checked
/// (`DeltaADS`) before it is accepted; the accepted set is published as a sealed memfd snapshot
/// once both types have been received (§6.4: NetWorkers never serve half a mesh), then after every
/// change. It holds no key and opens no file; its only outside input is istiod.
final class XDSWorker {
    static let path = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
    /// Upstream's bound on one inbound message.
    static let maxMessageBytes = 200 << 20
    static let connectTimeoutMilliseconds: Int64 = 10_000

    private let supervisor: IPCSocket
    private let host: String
    private let port: UInt16
    private let serverName: String
    private let roots: TrustRoots
    private let clusterId: String
    private let extraHeaders: [(String, String)]
    private var token: String?
    private var ads: DeltaADS
    /// Encodes each published snapshot, again only where `ads` changed.
    private var writer = SnapshotWriter()
    private var connection: HTTP2ClientConnection?
    /// A connection being made on its thread (checked every `connectingPollMilliseconds`).
    private var connecting: ConnectAttempt?
    static let connectingPollMilliseconds: Int64 = 20
    private var stream: Int32 = 0
    private var framer = GRPCFramer(maxMessageBytes: XDSWorker.maxMessageBytes)
    private var connectionId = 0
    private var configured = false
    /// Whether the current stream answered with headers yet, and what its trailers said.
    private var responseStarted = false
    private var grpcStatus: (code: Int, message: String)?
    /// Reconnect backoff (§6.4): 10 ms doubling to 15 s after errors; 10 ms after a benign end.
    private var backoffMilliseconds: Int64 = 10
    private var nextAttempt: Int64 = 0
    private var publishedGeneration: UInt64?
    /// Counters for /metrics (§15), sent to the Supervisor at most once a second when changed.
    private var stats = XDSStats()
    private var statsChanged = false
    private var nextStatsSend: Int64 = 0
    private var everSynced = false
    /// ZTUNNEL_DEBUG_FAULT_INJECTION: the sandbox tests' probes may run here.
    private let faultInjectionEnabled: Bool

    init(supervisor: IPCSocket, configuration: Configuration, roots: TrustRoots) throws {
        guard let (host, port) = CAAddress.parse(configuration.string("XDS_ADDRESS")) else {
            throw ConfigurationError("invalid XDS_ADDRESS \"\(configuration.string("XDS_ADDRESS"))\"")
        }
        self.supervisor = supervisor
        self.host = host
        self.port = port
        let alternative = configuration.string("ALT_XDS_HOSTNAME")
        serverName = alternative.isEmpty ? host : alternative
        self.roots = roots
        clusterId = configuration.string("ISTIO_META_CLUSTER_ID")
        faultInjectionEnabled = configuration.bool("ZTUNNEL_DEBUG_FAULT_INJECTION")
        extraHeaders = configuration.headers("XDS_HEADER_")
        ads = DeltaADS(node: Self.node(configuration), onDemand: configuration.bool("XDS_ON_DEMAND"))
    }

    struct ConfigurationError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    /// The node of §6.2: `ztunnel~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local` and
    /// string metadata.
    static func node(_ configuration: Configuration) -> Envoy_Service_Discovery_V3_Node {
        let ip = configuration.string("INSTANCE_IP")
        let pod = configuration.string("POD_NAME")
        let namespace = configuration.string("POD_NAMESPACE")
        var node = Envoy_Service_Discovery_V3_Node()
        node.id = "ztunnel~\(ip.isEmpty ? "1.1.1.1" : ip)~\(pod).\(namespace)~\(namespace).svc.cluster.local"
        var metadata = Google_Protobuf_Struct()
        for (key, value) in [("NAME", pod), ("NAMESPACE", namespace), ("INSTANCE_IPS", ip),
                             ("NODE_NAME", configuration.string("NODE_NAME")),
                             ("CLUSTER_ID", configuration.string("ISTIO_META_CLUSTER_ID")),
                             ("ISTIO_VERSION", configuration.string("ISTIO_META_ISTIO_VERSION"))] where !value.isEmpty {
            metadata.fields[key] = Google_Protobuf_Value(stringValue: value)
        }
        // Every ISTIO_META_<K> as a string, every ISTIO_METAJSON_<K> as the JSON it holds (§6.2).
        for (key, value) in configuration.passthrough("ISTIO_META_") { metadata.fields[key] = Google_Protobuf_Value(stringValue: value) }
        for (key, value) in configuration.passthrough("ISTIO_METAJSON_") {
            do { metadata.fields[key] = try Google_Protobuf_Value(jsonString: value) } catch {
                Log.warn("ISTIO_METAJSON_\(key) is not JSON; left out of the node metadata", [("error", "\(error)")])
            }
        }
        node.metadata = metadata
        return node
    }

    func run() -> Never {
        while true {
            var fds = [pollfd(fd: supervisor.fd.rawValue, events: Int16(POLLIN), revents: 0)]
            if let connection {
                fds.append(pollfd(fd: connection.fd, events: Int16(POLLIN) | (connection.wantsWrite ? Int16(POLLOUT) : 0), revents: 0))
            }
            // The earliest of: input TLS already holds, the stats due, the next connection attempt.
            let now = Clock.monotonicMilliseconds()
            var waits: [Int64] = []
            if connection?.hasBufferedInput == true { waits.append(0) }
            if statsChanged { waits.append(max(0, nextStatsSend - now)) }
            if connection == nil && configured { waits.append(connecting != nil ? Self.connectingPollMilliseconds : max(0, nextAttempt - now)) }
            let timeout = waits.min().map { Int32(clamping: $0) } ?? -1
            if poll(&fds, nfds_t(fds.count), timeout) < 0 { continue }
            if fds[0].revents != 0 { handleSupervisor() }
            sendStatsIfDue()
            if connection == nil {
                if let attempt = connecting {
                    if let result = attempt.result { connecting = nil; opened(result) }
                } else if configured && Clock.monotonicMilliseconds() >= nextAttempt {
                    connect()
                }
                continue
            }
            if fds.count > 1 && (fds[1].revents != 0 || connection?.hasBufferedInput == true) { service() }
        }
    }

    // MARK: - The Supervisor

    private func handleSupervisor() {
        guard let message = WorkerBootstrap.nextMessage(from: supervisor, blocking: false) else { return }
        switch message {
        case .configured:
            do { try supervisor.send(WorkerMessage.ready.frame()) } catch { WorkerBootstrap.die("cannot send ready: \(error)") }
            configured = true
        case .caToken(let value):
            token = value
        case .meshSnapshot(let generation, let fd):
            // The model this role published before it was restarted: resubscribe from it.
            guard !configured else { WorkerBootstrap.die("a mesh snapshot after set-up") }
            do {
                let snapshot = try SealedMemfd.withContents(fd.rawValue, maxBytes: SealedMemfd.maxMeshSnapshotBytes) { try MeshSnapshot.decode($0) }
                ads = DeltaADS(node: ads.node, state: snapshot, onDemand: ads.onDemand)
                writer = SnapshotWriter()
                publishedGeneration = generation
                everSynced = true
                Log.info("resuming from the published mesh", [("generation", "\(generation)"),
                                                              ("resources", "\(snapshot.resources.values.map(\.count).reduce(0, +))")])
            } catch {
                Log.warn("cannot read the published mesh; subscribing afresh", [("error", "\(error)")])
            }
        case .drain:
            Log.info("drain requested; exiting")
            exit(0)
        case .logFilter(let filter):
            _ = try? Log.setFilter(filter)
        case .demand(let key):
            // Sent now when the stream is up; otherwise it goes with the next stream's first request.
            guard let request = ads.demand(key, now: Clock.monotonicMilliseconds()) else { return }
            Log.debug("on-demand lookup", [("key", key)])
            guard let connection else { return }
            do {
                try connection.send(GRPCFramer.frame(try request.serializedBytes()), on: stream)
                try connection.flush()
            } catch {
                Log.debug("cannot send the on-demand lookup now: \(error)")
            }
        case .fault(.xdsBadSnapshot, _) where faultInjectionEnabled:
            if let fd = try? SealedMemfd.makeUnsealed(name: "ztunnel-fault") {
                try? supervisor.send(WorkerMessage.meshSnapshot(generation: ads.state.generation, fd: fd).frame())
            }
        case .fault(.xdsSnapshotStorm, _) where faultInjectionEnabled:
            var sent = 0
            for _ in 0..<200 {
                guard let fd = try? SealedMemfd.make(name: "ztunnel-mesh", writer.encode(ads.state, touched: ads.takeTouched())),
                      (try? supervisor.send(WorkerMessage.meshSnapshot(generation: 7, fd: fd).frame())) != nil else { break }
                sent += 1
            }
            Log.warn("fault xds-snapshot-storm: \(sent) snapshots sent")
        case .fault(let kind, let port):
            FaultProbe.run(kind, port: port, enabled: faultInjectionEnabled && kind.forXDSWorker)
        case .setup, .listener, .processTable, .signerChannel, .signerPeer, .localConfig, .xdsStats, .metricsRegion,
             .demandAnswered, .podAdded, .podListener, .podRemoved, .podSocket, .inPodStatus,
             .processStats, .revocations:
            WorkerBootstrap.die("unexpected \(message.code) from the supervisor")
        }
    }

    private func sendStatsIfDue() {
        let now = Clock.monotonicMilliseconds()
        guard statsChanged, configured, now >= nextStatsSend else { return }
        statsChanged = false
        nextStatsSend = now + 1000
        try? supervisor.send(WorkerMessage.xdsStats(stats).frame())
    }

    // MARK: - The stream

    /// Starts making a connection on a thread of its own; `run` takes it when it is done.
    private func connect() {
        connectionId += 1
        let deadline = Clock.monotonicMilliseconds() + Self.connectTimeoutMilliseconds
        let (host, port, serverName, roots) = (self.host, self.port, self.serverName, self.roots)
        let attempt = ConnectAttempt {
            try HTTP2ClientConnection.connect(host: host, port: port, serverName: serverName, roots: roots,
                                              deadline: deadline, maxReceivedPerStream: Int.max)
        }
        if attempt.start() {
            connecting = attempt
        } else {
            terminate(reason: "ConnectionError", "cannot start the connecting thread", benign: false)
        }
    }

    /// Opens the stream on a connection the connecting thread made (or ends the attempt).
    private func opened(_ result: Result<HTTP2ClientConnection, Error>) {
        do {
            let connection = try result.get()
            var headers = [("content-type", "application/grpc"), ("te", "trailers")]
            if let token { headers += [("authorization", "Bearer \(token)")] }
            headers += [("clusterid", clusterId)]
            // XDS_HEADER_<K>: gRPC metadata, whose names are lowercase.
            headers += extraHeaders
            var body: [UInt8] = []
            for request in ads.streamOpened() { body += GRPCFramer.frame(try request.serializedBytes()) }
            stream = try connection.request(authority: "\(serverName):\(port)", path: Self.path, headers: headers, body: body, endStream: false)
            self.connection = connection
            framer = GRPCFramer(maxMessageBytes: Self.maxMessageBytes)
            responseStarted = false
            grpcStatus = nil
            try connection.flush()
            Log.info("xds stream opened", [("id", "\(connectionId)"), ("address", "\(host):\(port)"),
                                           ("resources", "\(ads.state.resources.values.map(\.count).reduce(0, +))")])
        } catch {
            terminate(reason: "ConnectionError", "\(error)", benign: false)
        }
    }

    /// Reads and answers what the stream brought, then writes what is queued.
    private func service() {
        guard let connection else { return }
        do {
            for event in try connection.readAvailable() {
                switch event {
                case .headers(let id, let headers) where id == stream:
                    try received(headers: headers)
                case .data(let id, let bytes) where id == stream:
                    for message in try framer.append(bytes) { try handle(message) }
                case .closed(let id, let errorCode) where id == stream:
                    streamEnded(errorCode: errorCode)
                    return
                case .goaway:
                    // Open streams finish; the next one goes on a new connection.
                    Log.debug("istiod sent GOAWAY")
                default:
                    break
                }
            }
            try connection.flush()
        } catch {
            terminate(reason: "ConnectionError", "\(error)", benign: false)
        }
    }

    private func received(headers: [HTTP2ClientConnection.Header]) throws {
        let status = headers.first { $0.name == "grpc-status" }
        if !responseStarted {
            responseStarted = true
            guard let code = headers.first(where: { $0.name == ":status" })?.value, code == "200" else {
                throw ConfigurationError("istiod answered HTTP \(headers.first { $0.name == ":status" }?.value ?? "?")")
            }
            if status == nil { return }  // trailers-only responses carry grpc-status here
        }
        if let status {
            grpcStatus = (Int(status.value) ?? 2, headers.first { $0.name == "grpc-message" }?.value ?? "")
        }
    }

    private func handle(_ message: [UInt8]) throws {
        let response: Envoy_Service_Discovery_V3_DeltaDiscoveryResponse
        do {
            response = try XDSConversion.response(message)
        } catch {
            throw ConfigurationError("a response that does not decode: \(error)")
        }
        stats.countMessage(typeURL: response.typeURL, bytes: response.resources.reduce(0) { $0 + $1.resource.value.count })
        statsChanged = true
        let outcome = ads.handle(response)
        let typeName = response.typeURL.split(separator: ".").last.map(String.init) ?? response.typeURL
        if outcome.refused.isEmpty {
            Log.debug("xds response accepted", [("type", typeName), ("applied", "\(outcome.applied)"), ("removed", "\(outcome.removed)")])
        } else {
            Log.warn("xds resources rejected", [("type", typeName), ("applied", "\(outcome.applied)"),
                                                ("rejected", "\(outcome.refused.count)"),
                                                ("errors", String(outcome.reply.errorDetail.message.prefix(2000)))])
        }
        if ads.isSynced && !everSynced {
            everSynced = true
            backoffMilliseconds = 10
            Log.info("xds synced", [("workloads_and_services", "\(ads.state.entries(XDSConversion.addressType).count)"),
                                    ("policies", "\(ads.state.entries(XDSConversion.authorizationType).count)")])
        }
        if ads.isSynced { backoffMilliseconds = 10 }
        if everSynced && ads.state.generation != publishedGeneration { publish() }
        // After the snapshot that holds the answers, on the same channel: the Supervisor relays
        // them in that order. Chunks fit a frame with room for what the Supervisor adds.
        var chunk: [String] = []
        var bytes = 0
        for key in outcome.answered where DemandKey.isValid(key) {
            if chunk.count == DemandKey.maxPerMessage || bytes + key.utf8.count + 4 > 48 * 1024 {
                try? supervisor.send(WorkerMessage.demandAnswered(chunk).frame())
                chunk = []
                bytes = 0
            }
            chunk.append(key)
            bytes += key.utf8.count + 4
        }
        if !chunk.isEmpty { try? supervisor.send(WorkerMessage.demandAnswered(chunk).frame()) }
        // The answer after publishing: a response that arrived with the stream's end is still put
        // in force, and a stream already closed for sending is no connection error.
        do {
            try connection?.send(GRPCFramer.frame(try outcome.reply.serializedBytes()), on: stream)
            if let followUp = outcome.followUp { try connection?.send(GRPCFramer.frame(try followUp.serializedBytes()), on: stream) }
        } catch {
            Log.debug("cannot answer on the closed stream: \(error)")
        }
    }

    /// Hands the accepted set to the Supervisor as a sealed memfd.
    private func publish() {
        do {
            let bytes = writer.encode(ads.state, touched: ads.takeTouched())
            guard bytes.count <= SealedMemfd.maxMeshSnapshotBytes else {
                Log.error("the mesh is \(bytes.count) bytes, over the snapshot limit of \(SealedMemfd.maxMeshSnapshotBytes); the last one stays in force")
                publishedGeneration = ads.state.generation
                return
            }
            let fd = try SealedMemfd.make(name: "ztunnel-mesh", bytes)
            try supervisor.send(WorkerMessage.meshSnapshot(generation: ads.state.generation, fd: fd).frame())
            publishedGeneration = ads.state.generation
            Log.info("mesh published", [("generation", "\(ads.state.generation)"), ("bytes", "\(bytes.count)")])
        } catch {
            Log.error("cannot publish the mesh: \(error)")
        }
    }

    private func streamEnded(errorCode: UInt32) {
        if let (code, message) = grpcStatus {
            // Benign ends (§6.4): Unknown, Cancelled, DeadlineExceeded, Unavailable on a closing transport.
            let benign = code == 0 || code == 1 || code == 2 || code == 4
                || (code == 14 && (message.contains("transport is closing") || message.contains("received prior goaway")))
            terminate(reason: code == 0 ? "Complete" : (benign ? "Reconnect" : "Error"), "grpc-status \(code) \(message)", benign: benign)
        } else {
            terminate(reason: "Error", errorCode == 0 ? "stream ended without a status" : "stream reset (HTTP/2 error \(errorCode))",
                      benign: false)
        }
    }

    /// Ends the connection and schedules the next: after 10 ms when benign, else after the
    /// backoff, which doubles up to 15 s.
    private func terminate(reason: String, _ detail: String, benign: Bool) {
        connection?.close()
        connection = nil
        stats.countTermination(reason)
        statsChanged = true
        let delay = benign ? 10 : backoffMilliseconds
        if !benign { backoffMilliseconds = min(backoffMilliseconds * 2, 15_000) }
        nextAttempt = Clock.monotonicMilliseconds() + delay
        Log.warn("xds stream ended", [("id", "\(connectionId)"), ("reason", reason), ("detail", detail), ("retry_ms", "\(delay)")])
    }
}

enum XDSWorkerMain {
    static func run() -> Never {
        var roots: TrustRoots?
        let started = WorkerBootstrap.start(as: .xdsWorker) { configuration in
            // Before the sandbox: the trust anchor is a file, and the resolver reads its own.
            roots = try TrustRoots(setting: "XDS_ROOT_CA", value: configuration.string("XDS_ROOT_CA"))
            HTTP2ClientConnection.warmUpResolver { path in
                WorkerBootstrap.exitToReload("\(path) changed after the sandbox closed; exiting so a new xDS worker reads it")
            }
        }
        guard let roots else { WorkerBootstrap.die("no XDS_ROOT_CA") }
        do {
            let worker = try XDSWorker(supervisor: started.channel, configuration: started.configuration, roots: roots)
            Log.info("confined", [("pid", "\(getpid())"), ("xds", started.configuration.string("XDS_ADDRESS"))])
            worker.run()
        } catch {
            WorkerBootstrap.die("\(error)")
        }
    }
}

/// One connection being made on its own thread: the blocking name lookup, TCP connect and TLS
/// handshake (bounded by their deadline) run there; the poll loop reads `result` when it is set.
/// The connection is used by the loop's thread only once handed over.
final class ConnectAttempt: @unchecked Sendable {
    private let lock = Mutex()
    private var outcome: Result<HTTP2ClientConnection, Error>?
    private let work: () throws -> HTTP2ClientConnection

    init(_ work: @escaping () throws -> HTTP2ClientConnection) { self.work = work }

    var result: Result<HTTP2ClientConnection, Error>? { lock.withLock { outcome } }

    /// False when no thread could be started.
    func start() -> Bool {
        let box = Unmanaged.passRetained(self)
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            guard let raw else { return nil }
            let attempt = Unmanaged<ConnectAttempt>.fromOpaque(raw).takeRetainedValue()
            let result = Result { try attempt.work() }
            attempt.lock.withLock { attempt.outcome = result }
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            return false
        }
        pthread_detach(thread)
        return true
    }
}
