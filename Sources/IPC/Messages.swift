import Shared

/// Every IPC message of the daemon, in one place (STYLE.md §3). One enum per direction; each type
/// code is unique across both, so a message sent the wrong way is an unknown type to its receiver.
/// Bump `IPCProtocol.version` on any change to a payload.
public enum IPCProtocol {
    public static let version: UInt16 = 8  // 8: Landlock bind ports in the setup; 7: revocations, revocationsApplied
}

/// The role of a worker process. The wire value is part of the protocol.
public enum WorkerRole: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case certWorker = 1
    case netWorker = 2
    case xdsWorker = 3

    public var description: String {
        switch self {
        case .certWorker: return "cert-worker"
        case .netWorker: return "net-worker"
        case .xdsWorker: return "xds-worker"
        }
    }
}

/// A fault the tests ask the CertWorker to commit (only with ZTUNNEL_DEBUG_FAULT_INJECTION=true,
/// which the Supervisor and the CertWorker both check), to show its walls hold from inside.
public enum FaultKind: UInt8, Sendable, CaseIterable {
    /// Open a file (/etc/hostname): seccomp answers EACCES, Landlock denies every path.
    case openFile = 1
    /// A TCP connect to 127.0.0.1:<port>: Landlock allows only the CA's port.
    case connect = 2
    /// mkdir(2) under /tmp: outside the seccomp allowlist (a kill), and denied by Landlock when
    /// seccomp only logs (audit mode): the live proof of the second wall.
    case makeDirectory = 3
    /// The same three, run by the xDS worker (whose Landlock allows only XDS_ADDRESS's port).
    case xdsOpenFile = 4
    case xdsConnect = 5
    case xdsMakeDirectory = 6
    /// The xDS worker publishes an unsealed memfd as its mesh snapshot: the Supervisor kills it.
    case xdsBadSnapshot = 7
    /// The NetWorker's own wall probes (`Wall`), tried in the CertWorker (8-15) and in the xDS
    /// worker (16-23): each is outside both workers' profiles (a kill, SIGSYS) but an AF_UNIX
    /// socket, which they answer EACCES (glibc's resolver probes nscd's socket).
    case certCloneNamespace = 8, certNetlinkSocket, certUnixSocket, certRawSocket, certSetns, certUnshare, certPtrace, certSignalOther
    case xdsCloneNamespace = 16, xdsNetlinkSocket, xdsUnixSocket, xdsRawSocket, xdsSetns, xdsUnshare, xdsPtrace, xdsSignalOther
    /// The CertWorker misuses its own Supervisor channel (sent by the CertWorker itself): an
    /// `audit` frame with a reserved key (`pid`), one with an event name not on its list, and a
    /// `shutdownRequest`, which only a NetWorker may send. Each is a violation: it is killed.
    case certAuditReservedKey = 24, certAuditUnlistedEvent, certShutdownRequest
    /// The xDS worker publishes its current snapshot 200 times at once, each claiming generation
    /// 7 (sent by the xDS worker itself): the Supervisor numbers them itself and keeps one in
    /// flight per NetWorker, which ends with the last.
    case xdsSnapshotStorm = 27
    /// The CertWorker sends 2,000 `certificate_issued` audit frames at once (identity `flood`):
    /// the Supervisor writes its budget a second and sums up the rest.
    case certAuditFlood = 28
    /// A UDP datagram to 127.0.0.1:<port>, from the CertWorker (29) or the xDS worker (30): a
    /// kill (SIGSYS) when the worker looks no name up, which takes UDP out of its policy; sent
    /// otherwise, to any address (Landlock does not see UDP).
    case certUDPSocket = 29, xdsUDPSocket = 30
    /// The CertWorker floods every NetWorker's signer channel (sent by the CertWorker itself):
    /// 2,000 rounds of a ~30 KiB `status` frame each, waiting whenever a channel is full.
    case certSignerFlood = 31
    /// The same with every identity it holds pushed again 2,000 times (each one makes the
    /// NetWorker build a TLS context).
    case certIdentityFlood = 32
    /// From now on the CertWorker signs every client (33) or server (34) CertificateVerify over
    /// a content with one byte changed: a signature of the right form and key that does not
    /// verify, as a peer holding another key would send. The other side must refuse it.
    case certBadClientSignature = 33, certBadServerSignature = 34
    /// stat(2) of /etc/shadow by the CertWorker: allowed (`newfstatat` stays in its profile,
    /// glibc's fstat is built on it; Landlock does not cover stat). The known gap, pinned.
    case certStatFile = 35

    /// A forbidden operation, by the name the NetWorker's fault endpoint gives it.
    public enum Wall: String, Sendable, CaseIterable {
        case cloneNamespace = "clone-namespace", netlinkSocket = "netlink-socket", unixSocket = "unix-socket"
        case rawSocket = "raw-socket", setns, unshare, ptrace, signalOther = "signal-other"
    }

    /// Which worker runs it: the xDS worker for the xds kinds, else the CertWorker.
    public var forXDSWorker: Bool {
        (4...7).contains(rawValue) || (16...23).contains(rawValue) || self == .xdsSnapshotStorm || self == .xdsUDPSocket
    }

    /// The wall a probe kind tries, nil for the others.
    public var wall: Wall? {
        guard (8...23).contains(rawValue) else { return nil }
        return Wall.allCases[Int(rawValue - 8) % Wall.allCases.count]
    }

    /// `cert-<wall>` or `xds-<wall>` (as the fault endpoint names it), or nil.
    public init?(probeName name: String) {
        for (prefix, first) in [("cert-", FaultKind.certCloneNamespace), ("xds-", .xdsCloneNamespace)] where name.hasPrefix(prefix) {
            guard let index = Wall.allCases.firstIndex(where: { $0.rawValue == name.dropFirst(prefix.count) }) else { return nil }
            self.init(rawValue: first.rawValue + UInt8(index))
            return
        }
        return nil
    }

    /// The name the probe's log line carries (`cert-unshare`); the kind's own for the others.
    public var probeName: String {
        if self == .certUDPSocket || self == .xdsUDPSocket { return (forXDSWorker ? "xds-" : "cert-") + "udp-socket" }
        guard let wall else { return "\(self)" }
        return (forXDSWorker ? "xds-" : "cert-") + wall.rawValue
    }
}

/// Messages from the Supervisor to a worker.
public enum SupervisorMessage {
    /// First message on a new worker's channel: everything it needs to confine itself and run.
    case setup(WorkerSetup)
    /// A listening socket the Supervisor made (fd broker); the worker serves it.
    case listener(name: String, fd: OwnedFD)
    /// Setup is complete: the worker may serve (its first configuration epoch).
    case configured
    /// The process table, for readiness and /config_dump (NetWorkers only).
    case processTable([ProcessEntry])
    /// Stop accepting; give live connections up to the deadline, then exit 0.
    case drain(deadlineMilliseconds: UInt32)
    /// To a NetWorker: its end of a new signer channel to the CertWorker (replaces any old one).
    case signerChannel(fd: OwnedFD)
    /// To the CertWorker: its end of the signer channel of NetWorker `index`.
    case signerPeer(index: UInt16, fd: OwnedFD)
    /// To a NetWorker: the local configuration file's bytes (LOCAL_XDS_PATH), which the
    /// NetWorker parses; the Supervisor only reads the file.
    case localConfig(generation: UInt32, [UInt8])
    /// To the CertWorker and the xDS worker: the bearer token for istiod (AUTH_TOKEN's file, read
    /// by the Supervisor, or its literal value), trimmed; sent at set-up and whenever it changes.
    /// No worker opens a file after its sandbox, so the token comes to it.
    case caToken(String)
    /// To a NetWorker (and to a new xDS worker, which resubscribes from it): the mesh model the
    /// xDS worker published, as a sealed memfd holding a `MeshSnapshot` (Sources/XDS).
    case meshSnapshot(generation: UInt64, fd: OwnedFD)
    /// To a NetWorker: the xDS worker's counters, summed over its restarts, for /metrics.
    case xdsStats(XDSStats)
    /// To a NetWorker (with several): the counter region of NetWorker `index`, its own
    /// read-write, every other one read-only (Shared/CounterRegion).
    case metricsRegion(index: UInt16, writable: Bool, fd: OwnedFD)
    /// To the CertWorker, relayed from a NetWorker's `faultRequest` (tests only).
    case fault(FaultKind, port: UInt16)
    /// To every worker: the log filter now in force (RUST_LOG syntax, checked), after an
    /// operator's `POST /logging` on some NetWorker's admin port.
    case logFilter(String)
    /// To the xDS worker (XDS_ON_DEMAND): a NetWorker wants the Address resource for this key
    /// (`<network>/<IP>`, a workload uid or `<namespace>/<hostname>`, ISTIO_COMPAT §6.3).
    case demand(String)
    /// To a NetWorker: istiod has answered the lookups for these keys; what it sent is in
    /// snapshot `generation` (or an earlier one), so once that is in force a key still unknown
    /// is not in the mesh.
    case demandAnswered(generation: UInt64, keys: [String])
    /// To a NetWorker (in-pod mode): a pod istio-cni enrolled is served; its listeners follow.
    case podAdded(uid: String, info: PodInfo)
    /// To a NetWorker: one of the pod's listeners, made in the pod's network namespace.
    case podListener(uid: String, name: String, fd: OwnedFD)
    /// To a NetWorker: the pod is gone (or its namespace changed): close its listeners and
    /// connections now.
    case podRemoved(uid: String)
    /// To a NetWorker: an unconnected TCP socket made in the pod's network namespace and marked
    /// (SO_MARK), for a connection on the pod's behalf; answers `podSocketsWanted`.
    case podSocket(uid: String, family: PodSocketFamily, fd: OwnedFD)
    /// To a NetWorker: in-pod readiness (ISTIO_COMPAT §16 "workload proxy manager"): whether the
    /// CNI's snapshot arrived on the current connection, the pods not yet served, and how many
    /// pods were started and stopped since the daemon started (`workload_manager_*`, §15).
    case inPodStatus(synced: Bool, pending: [PendingPod], started: UInt64, stopped: UInt64)
    /// To a NetWorker, every 10 s: the descriptors open in all of the daemon's processes, and
    /// the limit each has (§15 `process_open_fds`, `process_max_fds`; a NetWorker cannot read
    /// /proc, the Supervisor can).
    case processStats(openFds: UInt32, maxFds: UInt32)
    /// To a NetWorker: the bytes of CRL_PATH (certificate revocation lists, PEM or DER) as a
    /// sealed memfd, which the NetWorker parses; the Supervisor only reads the file. Empty when
    /// the file is empty or missing (nothing revoked).
    case revocations(generation: UInt64, fd: OwnedFD)

    public enum Code: UInt16, CaseIterable {
        case setup = 0x0101, listener = 0x0102, configured = 0x0103, processTable = 0x0104, drain = 0x0105
        case signerChannel = 0x0106, signerPeer = 0x0107, localConfig = 0x0108, caToken = 0x0109, fault = 0x010a
        case meshSnapshot = 0x010b, xdsStats = 0x010c, metricsRegion = 0x010d, logFilter = 0x010e, demand = 0x010f
        case demandAnswered = 0x0110, podAdded = 0x0111, podListener = 0x0112, podRemoved = 0x0113, podSocket = 0x0114
        case inPodStatus = 0x0115, processStats = 0x0116, revocations = 0x0117

        /// The fds a message of this type carries: only these types may carry any.
        public var fdCount: Int {
            switch self {
            case .listener, .signerChannel, .signerPeer, .meshSnapshot, .metricsRegion, .podListener, .podSocket, .revocations: return 1
            case .setup, .configured, .processTable, .drain, .localConfig, .caToken, .fault, .xdsStats, .logFilter, .demand,
                 .demandAnswered, .podAdded, .podRemoved, .inPodStatus, .processStats: return 0
            }
        }
    }

    public var code: Code {
        switch self {
        case .setup: return .setup
        case .listener: return .listener
        case .configured: return .configured
        case .processTable: return .processTable
        case .drain: return .drain
        case .signerChannel: return .signerChannel
        case .signerPeer: return .signerPeer
        case .localConfig: return .localConfig
        case .caToken: return .caToken
        case .fault: return .fault
        case .meshSnapshot: return .meshSnapshot
        case .xdsStats: return .xdsStats
        case .metricsRegion: return .metricsRegion
        case .logFilter: return .logFilter
        case .demand: return .demand
        case .demandAnswered: return .demandAnswered
        case .podAdded: return .podAdded
        case .podListener: return .podListener
        case .podRemoved: return .podRemoved
        case .podSocket: return .podSocket
        case .inPodStatus: return .inPodStatus
        case .processStats: return .processStats
        case .revocations: return .revocations
        }
    }

    public func frame(requestId: UInt32 = 0) -> IPCFrame {
        var writer = WireWriter()
        var fds: [OwnedFD] = []
        switch self {
        case .setup(let setup): setup.encode(into: &writer)
        case .revocations(let generation, let fd): writer.u64(generation); fds = [fd]
        case .listener(let name, let fd): writer.string(name); fds = [fd]
        case .configured: break
        case .processTable(let entries):
            writer.u16(UInt16(entries.count))
            for entry in entries { entry.encode(into: &writer) }
        case .drain(let deadline): writer.u32(deadline)
        case .signerChannel(let fd): fds = [fd]
        case .signerPeer(let index, let fd): writer.u16(index); fds = [fd]
        case .localConfig(let generation, let bytes): writer.u32(generation); writer.data(bytes)
        case .caToken(let token): writer.string(token)
        case .fault(let kind, let port): writer.u8(kind.rawValue); writer.u16(port)
        case .meshSnapshot(let generation, let fd): writer.u64(generation); fds = [fd]
        case .xdsStats(let stats): stats.encode(into: &writer)
        case .metricsRegion(let index, let writable, let fd): writer.u16(index); writer.bool(writable); fds = [fd]
        case .logFilter(let filter): writer.string(filter)
        case .demand(let key): writer.string(key)
        case .demandAnswered(let generation, let keys):
            writer.u64(generation)
            writer.u16(UInt16(keys.count))
            for key in keys { writer.string(key) }
        case .podAdded(let uid, let info): writer.string(uid); info.encode(into: &writer)
        case .podListener(let uid, let name, let fd): writer.string(uid); writer.string(name); fds = [fd]
        case .podRemoved(let uid): writer.string(uid)
        case .podSocket(let uid, let family, let fd): writer.string(uid); writer.u8(family.rawValue); fds = [fd]
        case .inPodStatus(let synced, let pending, let started, let stopped):
            writer.bool(synced)
            writer.u16(UInt16(pending.count))
            for pod in pending { pod.encode(into: &writer) }
            writer.u64(started)
            writer.u64(stopped)
        case .processStats(let open, let max): writer.u32(open); writer.u32(max)
        }
        return IPCFrame(type: code.rawValue, requestId: requestId, payload: writer.bytes, fds: fds)
    }

    /// Decodes a frame; refuses unknown types, wrong fd counts, short and trailing payloads.
    public static func decode(_ frame: IPCFrame) throws -> SupervisorMessage {
        guard let code = Code(rawValue: frame.type) else { throw IPCError.unknownType(frame.type) }
        let name = "\(code)"
        guard frame.fds.count == code.fdCount else {
            throw IPCError.wrongFdCount(type: name, expected: code.fdCount, actual: frame.fds.count)
        }
        var reader = WireReader(frame.payload)
        let message: SupervisorMessage
        switch code {
        case .setup: message = .setup(try WorkerSetup(from: &reader))
        case .listener: message = .listener(name: try reader.string("listener name", max: 64), fd: frame.fds[0])
        case .configured: message = .configured
        case .processTable:
            let count = try reader.count("process table", max: 256)
            var entries: [ProcessEntry] = []
            for _ in 0..<count { entries.append(try ProcessEntry(from: &reader)) }
            message = .processTable(entries)
        case .drain: message = .drain(deadlineMilliseconds: try reader.u32("drain deadline"))
        case .signerChannel: message = .signerChannel(fd: frame.fds[0])
        case .signerPeer: message = .signerPeer(index: try reader.u16("signer peer index"), fd: frame.fds[0])
        case .localConfig:
            message = .localConfig(generation: try reader.u32("local config generation"), try reader.data("local config"))
        case .caToken:
            let token = try reader.string("CA token", max: CAToken.maxBytes)
            guard CAToken.problem(with: token) == nil else { throw IPCError.malformed("CA token is not a header value") }
            message = .caToken(token)
        case .fault:
            let (kind, port) = try FaultKind.decode(&reader)
            message = .fault(kind, port: port)
        case .meshSnapshot:
            message = .meshSnapshot(generation: try reader.u64("snapshot generation"), fd: frame.fds[0])
        case .xdsStats:
            message = .xdsStats(try XDSStats(from: &reader))
        case .metricsRegion:
            message = .metricsRegion(index: try reader.u16("region index"), writable: try reader.bool("region writable"), fd: frame.fds[0])
        case .logFilter:
            message = .logFilter(try LogFilterText.decode(&reader))
        case .demand:
            message = .demand(try DemandKey.decode(&reader))
        case .demandAnswered:
            let generation = try reader.u64("snapshot generation")
            let count = try reader.count("answered keys", max: DemandKey.maxPerMessage)
            var keys: [String] = []
            for _ in 0..<count { keys.append(try DemandKey.decode(&reader)) }
            message = .demandAnswered(generation: generation, keys: keys)
        case .podAdded:
            message = .podAdded(uid: try PodInfo.uid(&reader), info: try PodInfo(from: &reader))
        case .podListener:
            message = .podListener(uid: try PodInfo.uid(&reader), name: try reader.string("pod listener name", max: 64), fd: frame.fds[0])
        case .podRemoved:
            message = .podRemoved(uid: try PodInfo.uid(&reader))
        case .podSocket:
            let uid = try PodInfo.uid(&reader)
            message = .podSocket(uid: uid, family: try PodSocketFamily.decode(&reader), fd: frame.fds[0])
        case .inPodStatus:
            let synced = try reader.bool("in-pod synced")
            let count = try reader.count("pending pods", max: PendingPod.maxPerMessage)
            var pending: [PendingPod] = []
            for _ in 0..<count { pending.append(try PendingPod(from: &reader)) }
            message = .inPodStatus(synced: synced, pending: pending, started: try reader.u64("pods started"),
                                   stopped: try reader.u64("pods stopped"))
        case .processStats:
            message = .processStats(openFds: try reader.u32("open fds"), maxFds: try reader.u32("max fds"))
        case .revocations:
            message = .revocations(generation: try reader.u64("revocations generation"), fd: frame.fds[0])
        }
        try reader.finish(name)
        return message
    }
}

/// Messages from a worker to the Supervisor. The Supervisor treats every one as untrusted input
/// from a possibly compromised process.
public enum WorkerMessage: Equatable {
    /// The worker is confined and speaks this protocol version.
    case hello(protocolVersion: UInt16, role: WorkerRole, pid: Int32)
    /// The worker has its listeners and configuration and is serving.
    case ready
    /// An operator asked for shutdown (admin POST /quitquitquit); NetWorkers only.
    case shutdownRequest
    /// An audit event for the Supervisor's sink (CertWorker only): the event name and string
    /// fields. The Supervisor adds time, sequence and the sender.
    case audit(event: String, fields: [(String, String)])
    /// A test asks (through the admin port) for a fault in the CertWorker; NetWorkers only, and
    /// only when fault injection is enabled, else a violation.
    case faultRequest(FaultKind, port: UInt16)
    /// A NetWorker's answer to `localConfig`: whether that generation parsed and is in force.
    case localConfigApplied(generation: UInt32, accepted: Bool)
    /// The xDS worker publishes a new mesh model: a sealed memfd holding a `MeshSnapshot`. The
    /// only fd a worker may send; the Supervisor checks its seals and size before relaying it.
    case meshSnapshot(generation: UInt64, fd: OwnedFD)
    /// A NetWorker's answer to `meshSnapshot`: whether that generation is in force. The
    /// Supervisor sends the next snapshot only after it (one in flight per NetWorker).
    case meshApplied(generation: UInt64, accepted: Bool)
    /// The xDS worker's counters since it started (sent at most once a second when they change).
    case xdsStats(XDSStats)
    /// A NetWorker's admin port took `POST /logging`: the filter to put in force everywhere.
    case logFilter(String)
    /// A NetWorker (XDS_ON_DEMAND) needs the Address resource for a key it cannot resolve.
    case demand(String)
    /// The xDS worker: istiod answered the lookups for these keys (sent after the snapshot
    /// that holds the answer).
    case demandAnswered([String])
    /// A NetWorker wants `count` more unconnected sockets made in pod `uid`'s network namespace.
    case podSocketsWanted(uid: String, family: PodSocketFamily, count: UInt16)
    /// A NetWorker's answer to `revocations`: whether those lists parsed and are in force.
    case revocationsApplied(generation: UInt64, accepted: Bool)

    /// The audit events a CertWorker may report, and the keys the Supervisor writes itself (a
    /// worker must not be able to forge them).
    public static let certWorkerAuditEvents: Set<String> = [
        "certificate_loaded", "csr_sent", "certificate_issued", "certificate_failed", "certificate_expired",
        "certificate_forgotten", "trust_bundle_changed", "identity_refused", "sign_refused", "signer_violation",
    ]
    public static let reservedAuditKeys: Set<String> = ["time", "seq", "event", "role", "index", "pid", "security"]
    /// The CertWorker's events the Supervisor marks `security: true` (and budgets apart).
    public static let certWorkerSecurityEvents: Set<String> = ["signer_violation"]

    public static func == (a: WorkerMessage, b: WorkerMessage) -> Bool {
        switch (a, b) {
        case (.hello(let v1, let r1, let p1), .hello(let v2, let r2, let p2)): return v1 == v2 && r1 == r2 && p1 == p2
        case (.ready, .ready), (.shutdownRequest, .shutdownRequest): return true
        case (.audit(let e1, let f1), .audit(let e2, let f2)):
            return e1 == e2 && f1.map { $0.0 + "=" + $0.1 } == f2.map { $0.0 + "=" + $0.1 }
        case (.faultRequest(let k1, let p1), .faultRequest(let k2, let p2)): return k1 == k2 && p1 == p2
        case (.localConfigApplied(let g1, let a1), .localConfigApplied(let g2, let a2)): return g1 == g2 && a1 == a2
        case (.meshSnapshot(let g1, _), .meshSnapshot(let g2, _)): return g1 == g2
        case (.meshApplied(let g1, let a1), .meshApplied(let g2, let a2)): return g1 == g2 && a1 == a2
        case (.xdsStats(let s1), .xdsStats(let s2)): return s1 == s2
        case (.logFilter(let f1), .logFilter(let f2)): return f1 == f2
        case (.demand(let k1), .demand(let k2)): return k1 == k2
        case (.demandAnswered(let k1), .demandAnswered(let k2)): return k1 == k2
        case (.podSocketsWanted(let u1, let f1, let c1), .podSocketsWanted(let u2, let f2, let c2)): return u1 == u2 && f1 == f2 && c1 == c2
        case (.revocationsApplied(let g1, let a1), .revocationsApplied(let g2, let a2)): return g1 == g2 && a1 == a2
        default: return false
        }
    }

    public enum Code: UInt16, CaseIterable {
        case hello = 0x0201, ready = 0x0202, shutdownRequest = 0x0203, audit = 0x0204, faultRequest = 0x0205
        case localConfigApplied = 0x0206, meshSnapshot = 0x0207, meshApplied = 0x0208, xdsStats = 0x0209
        case logFilter = 0x020a, demand = 0x020b, demandAnswered = 0x020c, podSocketsWanted = 0x020d
        case revocationsApplied = 0x020e

        /// Only a snapshot carries an fd (its memfd); every other fd flows from the Supervisor.
        public var fdCount: Int { self == .meshSnapshot ? 1 : 0 }
    }

    public var code: Code {
        switch self {
        case .hello: return .hello
        case .ready: return .ready
        case .shutdownRequest: return .shutdownRequest
        case .audit: return .audit
        case .faultRequest: return .faultRequest
        case .localConfigApplied: return .localConfigApplied
        case .meshSnapshot: return .meshSnapshot
        case .meshApplied: return .meshApplied
        case .xdsStats: return .xdsStats
        case .logFilter: return .logFilter
        case .demand: return .demand
        case .demandAnswered: return .demandAnswered
        case .podSocketsWanted: return .podSocketsWanted
        case .revocationsApplied: return .revocationsApplied
        }
    }

    public func frame(requestId: UInt32 = 0) -> IPCFrame {
        var writer = WireWriter()
        var fds: [OwnedFD] = []
        switch self {
        case .hello(let version, let role, let pid):
            writer.u16(version); writer.u8(role.rawValue); writer.i32(pid)
        case .ready, .shutdownRequest: break
        case .audit(let event, let fields):
            writer.string(event)
            writer.u16(UInt16(fields.count))
            for (key, value) in fields { writer.string(key); writer.string(value) }
        case .faultRequest(let kind, let port): writer.u8(kind.rawValue); writer.u16(port)
        case .localConfigApplied(let generation, let accepted): writer.u32(generation); writer.bool(accepted)
        case .meshSnapshot(let generation, let fd): writer.u64(generation); fds = [fd]
        case .meshApplied(let generation, let accepted): writer.u64(generation); writer.bool(accepted)
        case .xdsStats(let stats): stats.encode(into: &writer)
        case .logFilter(let filter): writer.string(filter)
        case .demand(let key): writer.string(key)
        case .demandAnswered(let keys):
            writer.u16(UInt16(keys.count))
            for key in keys { writer.string(key) }
        case .podSocketsWanted(let uid, let family, let count): writer.string(uid); writer.u8(family.rawValue); writer.u16(count)
        case .revocationsApplied(let generation, let accepted): writer.u64(generation); writer.bool(accepted)
        }
        return IPCFrame(type: code.rawValue, requestId: requestId, payload: writer.bytes, fds: fds)
    }

    public static func decode(_ frame: IPCFrame) throws -> WorkerMessage {
        guard let code = Code(rawValue: frame.type) else { throw IPCError.unknownType(frame.type) }
        let name = "\(code)"
        guard frame.fds.count == code.fdCount else {
            throw IPCError.wrongFdCount(type: name, expected: code.fdCount, actual: frame.fds.count)
        }
        var reader = WireReader(frame.payload)
        let message: WorkerMessage
        switch code {
        case .hello:
            let version = try reader.u16("hello version")
            let rawRole = try reader.u8("hello role")
            guard let role = WorkerRole(rawValue: rawRole) else { throw IPCError.malformed("unknown role \(rawRole)") }
            message = .hello(protocolVersion: version, role: role, pid: try reader.i32("hello pid"))
        case .ready: message = .ready
        case .shutdownRequest: message = .shutdownRequest
        case .audit:
            let event = try reader.string("audit event", max: 64)
            guard !event.isEmpty, event.allSatisfy({ $0.isLetter || $0 == "_" }) else {
                throw IPCError.malformed("audit event name \"\(event)\"")
            }
            let count = try reader.count("audit fields", max: 32)
            var fields: [(String, String)] = []
            for _ in 0..<count { fields.append((try reader.string("audit key", max: 64), try reader.string("audit value", max: 4096))) }
            message = .audit(event: event, fields: fields)
        case .faultRequest:
            let (kind, port) = try FaultKind.decode(&reader)
            message = .faultRequest(kind, port: port)
        case .localConfigApplied:
            message = .localConfigApplied(generation: try reader.u32("local config generation"), accepted: try reader.bool("accepted"))
        case .meshSnapshot:
            message = .meshSnapshot(generation: try reader.u64("snapshot generation"), fd: frame.fds[0])
        case .meshApplied:
            message = .meshApplied(generation: try reader.u64("snapshot generation"), accepted: try reader.bool("accepted"))
        case .xdsStats:
            message = .xdsStats(try XDSStats(from: &reader))
        case .logFilter:
            message = .logFilter(try LogFilterText.decode(&reader))
        case .demand:
            message = .demand(try DemandKey.decode(&reader))
        case .demandAnswered:
            let count = try reader.count("answered keys", max: DemandKey.maxPerMessage)
            var keys: [String] = []
            for _ in 0..<count { keys.append(try DemandKey.decode(&reader)) }
            message = .demandAnswered(keys)
        case .podSocketsWanted:
            let uid = try PodInfo.uid(&reader)
            let family = try PodSocketFamily.decode(&reader)
            let count = try reader.u16("pod socket count")
            guard count >= 1, count <= PodSocketFamily.maxPerRequest else { throw IPCError.malformed("pod socket count \(count)") }
            message = .podSocketsWanted(uid: uid, family: family, count: count)
        case .revocationsApplied:
            message = .revocationsApplied(generation: try reader.u64("revocations generation"), accepted: try reader.bool("accepted"))
        }
        try reader.finish(name)
        return message
    }
}

/// A pod istio-cni enrolled (ZDS WorkloadInfo, ISTIO_COMPAT §7.4): Kubernetes names.
public struct PodInfo: Equatable, Sendable {
    public var name: String
    public var namespace: String
    public var serviceAccount: String

    public init(name: String, namespace: String, serviceAccount: String) {
        self.name = name
        self.namespace = namespace
        self.serviceAccount = serviceAccount
    }

    public static let maxUIDBytes = 128

    func encode(into writer: inout WireWriter) {
        writer.string(name); writer.string(namespace); writer.string(serviceAccount)
    }

    init(from reader: inout WireReader) throws {
        name = try Self.name(&reader, "pod name")
        namespace = try Self.name(&reader, "pod namespace")
        serviceAccount = try Self.name(&reader, "pod service account")
    }

    static func name(_ reader: inout WireReader, _ what: String) throws -> String {
        let text = try reader.string(what, max: 253)
        guard text.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "\"") }) else { throw IPCError.malformed("\(what) is not a name") }
        return text
    }

    static func uid(_ reader: inout WireReader) throws -> String {
        let uid = try reader.string("pod uid", max: maxUIDBytes)
        guard !uid.isEmpty, uid.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "\"") }) else {
            throw IPCError.malformed("pod uid is empty or not printable")
        }
        return uid
    }
}

/// A pod the Supervisor could not serve yet, and why (readiness, /config_dump).
public struct PendingPod: Equatable, Sendable {
    public var uid: String
    public var info: PodInfo
    public var error: String
    /// Each is at most ~1.4 KB: 32 keep a status frame well under 64 KiB.
    public static let maxPerMessage = 32

    public init(uid: String, info: PodInfo, error: String) {
        self.uid = uid
        self.info = info
        self.error = error
    }

    func encode(into writer: inout WireWriter) {
        writer.string(uid); info.encode(into: &writer); writer.string(String(error.utf8.prefix(512)) ?? "")
    }

    init(from reader: inout WireReader) throws {
        uid = try PodInfo.uid(&reader)
        info = try PodInfo(from: &reader)
        error = try reader.string("pending pod error", max: 512)
    }
}

public enum PodSocketFamily: UInt8, Sendable {
    case ipv4 = 4, ipv6 = 6
    /// The most sockets one request asks for.
    public static let maxPerRequest: UInt16 = 64

    static func decode(_ reader: inout WireReader) throws -> PodSocketFamily {
        let raw = try reader.u8("pod socket family")
        guard let family = PodSocketFamily(rawValue: raw) else { throw IPCError.malformed("pod socket family \(raw)") }
        return family
    }
}

/// A log filter on the wire: RUST_LOG syntax that parses, of bounded length.
enum LogFilterText {
    static func decode(_ reader: inout WireReader) throws -> String {
        let text = try reader.string("log filter", max: LogFilterChange.maxFilterBytes)
        if let problem = Log.Directives.problem(with: text) { throw IPCError.malformed("log filter: \(problem)") }
        return text
    }
}

/// An on-demand lookup key (ISTIO_COMPAT §6.3): `<network>/<IP>`, a workload uid or
/// `<namespace>/<hostname>`; printable ASCII without spaces, at most 320 bytes.
public enum DemandKey {
    public static let maxBytes = 320
    /// Keys in one `demandAnswered`; a sender with more sends several messages.
    public static let maxPerMessage = 256

    public static func isValid(_ key: String) -> Bool {
        !key.isEmpty && key.utf8.count <= maxBytes && key.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7f }
    }

    static func decode(_ reader: inout WireReader) throws -> String {
        let key = try reader.string("demand key", max: maxBytes)
        guard isValid(key) else { throw IPCError.malformed("demand key is empty or not printable ASCII") }
        return key
    }
}

extension FaultKind {
    static func decode(_ reader: inout WireReader) throws -> (FaultKind, UInt16) {
        let raw = try reader.u8("fault kind")
        guard let kind = FaultKind(rawValue: raw) else { throw IPCError.malformed("fault kind \(raw)") }
        return (kind, try reader.u16("fault port"))
    }
}
