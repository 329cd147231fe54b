internal import COpenSSL
import HTTP2Client
import IPC
import OpenSSLSupport
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// `ztunnel-cert-worker`: the only process that holds workload private keys. Single-threaded:
/// one poll loop over the Supervisor's channel and one signer channel per NetWorker.
final class CertWorker {
    private let supervisor: IPCSocket
    private let store: KeyStore
    /// Identities from ZTUNNEL_STATIC_IDENTITY_DIR: fixed for the worker's life.
    private let staticIdentities: [StoredIdentity]
    private var manager: CertificateManager?
    private let executor: ThreadCSRExecutor
    private var peers: [UInt16: IPCSocket] = [:]
    /// Refused sign requests per NetWorker in the current minute (`refusalWindowStart`): a
    /// NetWorker probing the oracle is cut off, occasional refusals never add up to that.
    private var refusals: [UInt16: Int] = [:]
    private var refusalWindowStart: Int64 = 0
    /// When the signature counts were last pushed (monotonic ms); they are pushed at most every
    /// ten seconds, not per signature.
    private var lastStatusPush: Int64 = 0
    private var signaturesSinceStatus = false
    /// Where a CA token from the Supervisor goes (the Istio CA client), if anywhere.
    var tokenSink: ((String) -> Void)?
    /// ZTUNNEL_DEBUG_FAULT_INJECTION, checked here too: the Supervisor relays faults only when it
    /// is on, and this worker does not take its word for it.
    var faultInjectionEnabled = false
    /// Fault injection only: the CertificateVerify sides signed wrongly (`SigningOracle`).
    var badSignatures: Set<CertificateVerifyContent.Side> = []

    init(supervisor: IPCSocket, store: KeyStore, ca: CertificateAuthority, ttlSeconds: Int) throws {
        self.supervisor = supervisor
        self.store = store
        staticIdentities = store.identities
        executor = try ThreadCSRExecutor()
        manager = CertificateManager(ca: ca, executor: executor, store: store, ttlSeconds: ttlSeconds,
                                     audit: { [unowned self] in self.reportAudit($0, $1) },
                                     publish: { [unowned self] in self.publish($0) })
        manager?.onChange = { [unowned self] in self.publishStatus() }
        manager?.onForget = { [unowned self] spiffeId in
            let frame = CertWorkerMessage.withdraw(spiffeId: spiffeId).frame()
            for index in self.peers.keys { self.push(frame, to: index) }
        }
    }

    func run() -> Never {
        while true {
            var fds = [pollfd(fd: supervisor.fd.rawValue, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: executor.wakeFd.rawValue, events: Int16(POLLIN), revents: 0)]
            let order = peers.keys.sorted()
            fds += order.compactMap { peers[$0] }.map { pollfd(fd: $0.fd.rawValue, events: Int16(POLLIN), revents: 0) }
            var timeout: Int32 = signaturesSinceStatus ? 10_000 : -1
            if let deadline = manager?.nextDeadline {
                timeout = min(timeout < 0 ? Int32.max : timeout, Int32(clamping: max(0, deadline - Clock.monotonicMilliseconds())))
            }
            if poll(&fds, nfds_t(fds.count), timeout) < 0 { continue }
            if fds[0].revents != 0 { handleSupervisor() }
            if fds[1].revents != 0 { executor.drainCompleted() }
            for (offset, index) in order.enumerated() where fds[offset + 2].revents != 0 { handlePeer(index) }
            if manager?.runDue() == true || (signaturesSinceStatus && Clock.monotonicMilliseconds() - lastStatusPush >= 10_000) {
                publishStatus()
            }
        }
    }

    /// The identities a NetWorker should have now: static ones and each managed current one.
    private var currentIdentities: [StoredIdentity] {
        staticIdentities + (manager?.entries.values.compactMap(\.current) ?? [])
    }

    private func publish(_ material: IdentityMaterial) {
        for index in peers.keys { pushIdentity(material, to: index) }
    }

    /// An identity too large for one message (a CA answering with an enormous chain) is not sent
    /// at all: the NetWorker would refuse the frame and lose its whole channel.
    private func pushIdentity(_ material: IdentityMaterial, to index: UInt16) {
        guard material.fitsOneMessage else {
            reportAudit("identity_refused", [("identity", String(material.spiffeId.prefix(256))),
                                             ("reason", "certificate chain or roots too large to hand to the NetWorkers")])
            return
        }
        push(CertWorkerMessage.identity(material).frame(), to: index)
    }

    /// Sends to a NetWorker without ever waiting: the CertWorker serves every NetWorker from one
    /// loop, and one that stops reading (it parses network traffic; it may be compromised) must
    /// not stop signing for the others. Such a peer loses its channel, which is audited.
    /// `droppable` frames (status) are simply skipped when its queue is full.
    private func push(_ frame: IPCFrame, to index: UInt16, droppable: Bool = false) {
        guard let peer = peers[index] else { return }
        do { try peer.send(frame, blocking: false) } catch IPCError.wouldBlock where droppable {
            return
        } catch IPCError.wouldBlock {
            closePeer(index, reason: "not reading its signer channel")
        } catch IPCError.closed {
            peers[index] = nil  // closed: the NetWorker is gone; the Supervisor reconnects its successor
        } catch {
            // A frame this process could not encode (oversize): our bug, not the peer's. The
            // peer keeps its channel (issue #6: dropping it let one NetWorker cut them all).
            Log.error("cannot send a \(frame.type) frame to net-worker[\(index)]: \(error)")
        }
    }

    private func closePeer(_ index: UInt16, reason: String) {
        reportAudit("signer_violation", [("net_worker", "\(index)"), ("reason", reason)])  // the Supervisor marks it a security event
        Log.error("security: net-worker[\(index)]: \(reason); closing its signer channel")
        peers[index] = nil
        refusals[index] = nil
    }

    /// Every identity's state, pushed to the NetWorkers after anything changed.
    private func publishStatus() {
        var entries = staticIdentities.map { identity in
            CertificateStatus(spiffeId: identity.material.spiffeId, state: "Available", nextRenewal: 0, failedRenewals: 0,
                              signatures: UInt64(identity.signatures))
        }
        let wallNow = Clock.epochSeconds()
        let monotonicNow = Clock.monotonicMilliseconds()
        for entry in manager?.entries.values.sorted(by: { $0.id.description < $1.id.description }) ?? [] {
            entries.append(CertificateStatus(
                spiffeId: entry.id.description, state: entry.state.text.utf8Prefix(256),
                nextRenewal: wallNow + (entry.refreshAt - monotonicNow) / 1000,
                failedRenewals: UInt32(clamping: entry.totalFailures), signatures: UInt64(entry.current?.signatures ?? 0)))
        }
        // Refused identities too (`Unavailable: refused: ...`): every identity a NetWorker asked
        // for appears in the status once its list is processed.
        let listed = Set(entries.map(\.spiffeId))
        var refused: [String: String] = [:]
        for perNetWorker in manager?.refusedIdentities.values.map({ $0 }) ?? [] {
            for (identity, reason) in perNetWorker where !listed.contains(identity) { refused[identity] = reason }
        }
        // First, so a long list that does not fit one frame cuts accepted ones (which then
        // show as coming, and arrive) rather than refusals (which would hold readiness for good).
        entries = refused.sorted(by: { $0.key < $1.key }).map { identity, reason in
            CertificateStatus(spiffeId: identity, state: "Unavailable: refused: \(reason)".utf8Prefix(256),
                              nextRenewal: 0, failedRenewals: 0, signatures: 0)
        } + entries
        let frame = CertWorkerMessage.status(Self.fitting(entries)).frame()
        for index in peers.keys { push(frame, to: index, droppable: true) }
        lastStatusPush = Clock.monotonicMilliseconds()
        signaturesSinceStatus = false
    }

    /// As many statuses as one frame holds (ids are up to 2048 bytes each, so 128 of them may not
    /// fit); the rest are left out of /config_dump rather than breaking the channel.
    static func fitting(_ entries: [CertificateStatus]) -> [CertificateStatus] {
        var size = 2
        var kept: [CertificateStatus] = []
        for entry in entries.prefix(512) {
            size += 8 + entry.spiffeId.utf8.count + entry.state.utf8.count + 20
            guard size <= IPCFrame.maxPayload else {
                Log.warn("certificate status list truncated to \(kept.count) of \(entries.count) identities")
                break
            }
            kept.append(entry)
        }
        return kept
    }

    /// Sends an audit event, each field clamped to what the Supervisor accepts (values of 4 KiB,
    /// 32 fields): a CA's long issuer or many roots must not make the Supervisor read this
    /// worker's message as a violation and kill it (issue #6 review).
    func reportAudit(_ event: String, _ fields: [(String, String)]) {
        let clamped = fields.prefix(32).map { ($0.0.utf8Prefix(64), $0.1.utf8Prefix(4000)) }
        try? supervisor.send(WorkerMessage.audit(event: event, fields: Array(clamped)).frame())
    }

    private func handleSupervisor() {
        guard let message = WorkerBootstrap.nextMessage(from: supervisor, blocking: false) else { return }
        switch message {
        case .configured:
            do { try supervisor.send(WorkerMessage.ready.frame()) } catch { WorkerBootstrap.die("cannot send ready: \(error)") }
        case .signerPeer(let index, let fd):
            peers[index] = IPCSocket(fd)
            refusals[index] = nil
            for identity in currentIdentities { pushIdentity(identity.material, to: index) }
            Log.debug("signer channel to net-worker[\(index)] attached")
            publishStatus()
        case .drain:
            // Nothing outlives a sign request; there is nothing to wait for.
            Log.info("drain requested; exiting")
            exit(0)
        case .caToken(let token):
            guard let tokenSink else {
                // The Supervisor sends it only with CA_ADDRESS (threat model: a CertWorker with
                // the built-in CA has no use for istiod's credential); say so if that breaks.
                Log.warn("received istiod's token with no Istio CA to send it to; dropped")
                break
            }
            tokenSink(token)
        case .fault(.certAuditReservedKey, _) where faultInjectionEnabled:
            // The Supervisor adds the true pid; a CertWorker that names one itself is killed.
            try? supervisor.send(WorkerMessage.audit(event: "certificate_issued", fields: [("identity", "forged"), ("pid", "1")]).frame())
        case .fault(.certAuditUnlistedEvent, _) where faultInjectionEnabled:
            try? supervisor.send(WorkerMessage.audit(event: "worker_ready", fields: [("identity", "forged")]).frame())
        case .fault(.certAuditFlood, _) where faultInjectionEnabled:
            for index in 0..<2000 { reportAudit("certificate_issued", [("identity", "flood"), ("n", "\(index)")]) }
            Log.warn("fault cert-audit-flood: 2000 audit events sent")
        case .fault(.certSignerFlood, _) where faultInjectionEnabled:
            // What a compromised CertWorker can do to the NetWorkers without refusing to sign:
            // well-formed frames, all of them, waiting whenever a channel is full (which the real
            // one never does: `push`). Tests only.
            let entries = (0..<400).map {
                CertificateStatus(spiffeId: "spiffe://flood.example/ns/flood/sa/s\($0)", state: "Available", nextRenewal: 0,
                                  failedRenewals: 0, signatures: 0)
            }
            let frame = CertWorkerMessage.status(Self.fitting(entries)).frame()
            var sent = 0
            for _ in 0..<2000 {
                for peer in peers.values where (try? peer.send(frame)) != nil { sent += 1 }
            }
            Log.warn("fault cert-signer-flood: \(sent) of \(2000 * peers.count) status frames sent")
            publishStatus()
        case .fault(.certIdentityFlood, _) where faultInjectionEnabled:
            let frames = currentIdentities.filter(\.material.fitsOneMessage).map { CertWorkerMessage.identity($0.material).frame() }
            var sent = 0
            for _ in 0..<2000 {
                for peer in peers.values {
                    for frame in frames where (try? peer.send(frame)) != nil { sent += 1 }
                }
            }
            Log.warn("fault cert-identity-flood: \(sent) of \(2000 * peers.count * frames.count) identity frames sent")
        case .fault(.certBadClientSignature, _) where faultInjectionEnabled:
            badSignatures.insert(.client)
            Log.warn("fault cert-bad-client-signature: client CertificateVerify signatures are now made over a changed content")
        case .fault(.certBadServerSignature, _) where faultInjectionEnabled:
            badSignatures.insert(.server)
            Log.warn("fault cert-bad-server-signature: server CertificateVerify signatures are now made over a changed content")
        case .fault(.certShutdownRequest, _) where faultInjectionEnabled:
            // Only a NetWorker (its /quitquitquit) may ask the node to stop.
            try? supervisor.send(WorkerMessage.shutdownRequest.frame())
        case .fault(let kind, let port):
            FaultProbe.run(kind, port: port, enabled: faultInjectionEnabled && !kind.forXDSWorker)
        case .logFilter(let filter):
            _ = try? Log.setFilter(filter)
        case .setup, .listener, .processTable, .signerChannel, .localConfig, .meshSnapshot, .xdsStats, .metricsRegion, .demand,
             .demandAnswered, .podAdded, .podListener, .podRemoved, .podSocket, .inPodStatus,
             .processStats, .revocations:
            WorkerBootstrap.die("unexpected \(message.code) from the supervisor")
        }
    }

    /// One request from a NetWorker. Bad bytes from a NetWorker mean it may be compromised: its
    /// channel is closed (it gets no more signatures) and the refusal is audited; the Supervisor
    /// replaces the NetWorker when its sandbox or IPC checks trip.
    private func handlePeer(_ index: UInt16) {
        guard let peer = peers[index] else { return }
        do {
            guard case .frame(let frame) = try peer.receive(blocking: false) else { return }
            switch try SignerRequest.decode(frame) {
            case .sign(let handle, let algorithm, let content):
                switch SigningOracle(store: store, badSignatures: badSignatures).answer(handle: handle, algorithm: algorithm, content: content) {
                case .signature(let bytes):
                    push(CertWorkerMessage.signature(bytes).frame(requestId: frame.requestId), to: index)
                    signaturesSinceStatus = true
                case .refused(let reason):
                    refuse(reason, from: index, requestId: frame.requestId)
                case .retired(let reason):
                    push(CertWorkerMessage.signRefused(reason).frame(requestId: frame.requestId), to: index)
                case .violation(let reason):
                    closePeer(index, reason: reason)
                }
            case .want(let identities):
                // A static identity is fixed for the worker's life: it is not fetched again.
                let fixed = Set(staticIdentities.map(\.material.spiffeId))
                manager?.want(identities.filter { !fixed.contains($0) }, from: index)
                manager?.runDue()
                publishStatus()
            }
        } catch IPCError.closed {
            peers[index] = nil
        } catch {
            closePeer(index, reason: "malformed request: \(error)")
        }
    }

    /// A refused sign request. A few are normal (a handle retired during a handshake); many mean a
    /// NetWorker probing the oracle: the first are audited one by one, then the channel is closed.
    private func refuse(_ reason: String, from index: UInt16, requestId: UInt32) {
        let now = Clock.monotonicMilliseconds()
        if now - refusalWindowStart >= 60_000 {
            refusalWindowStart = now
            refusals.removeAll()
        }
        let count = (refusals[index] ?? 0) + 1
        refusals[index] = count
        if count <= 8 { reportAudit("sign_refused", [("net_worker", "\(index)"), ("reason", reason)]) }
        if count >= 64 {
            closePeer(index, reason: "\(count) refused sign requests")
            return
        }
        push(CertWorkerMessage.signRefused(reason).frame(requestId: requestId), to: index)
    }
}

enum CertWorkerMain {
    static func run() -> Never {
        let store = KeyStore()
        var authority: CertificateAuthority?
        let started = WorkerBootstrap.start(as: .certWorker) { configuration in
            // Still with start-up credentials: key files are typically readable by root only.
            // OpenSSL's one-time set-up (configuration file, providers) happens here too, so the
            // sandboxed worker never needs to open a file.
            guard OPENSSL_init_ssl(UInt64(OPENSSL_INIT_LOAD_CONFIG), nil) == 1 else { throw OpenSSLError("OPENSSL_init_ssl") }
            // libssl's lazy set-up (cipher tables, DRBG) runs on the first SSL_CTX; do it now.
            guard let probe = SSL_CTX_new(TLS_client_method()) else { throw OpenSSLError("SSL_CTX_new") }
            SSL_CTX_free(probe)
            try KeyStore.enableSecureHeap()
            let directory = configuration.string("ZTUNNEL_STATIC_IDENTITY_DIR")
            if !directory.isEmpty { try StaticIdentityLoader.load(directory: directory, into: store) }
            let caDirectory = configuration.string("ZTUNNEL_CA_DIR")
            if !configuration.string("CA_ADDRESS").isEmpty {
                authority = try IstioCAClient(configuration: configuration)
                HTTP2ClientConnection.warmUpResolver { path in
                    WorkerBootstrap.exitToReload("\(path) changed after the sandbox closed; exiting so a new CertWorker reads it")
                }
            } else {
                authority = caDirectory.isEmpty ? try BuiltinCA(selfSignedFor: configuration.string("TRUST_DOMAIN"))
                                                : try BuiltinCA(directory: caDirectory)
            }
        }
        guard let authority else { WorkerBootstrap.die("no certificate authority") }
        let ttl = Int(started.configuration.milliseconds("SECRET_TTL") / 1000)
        let worker: CertWorker
        do { worker = try CertWorker(supervisor: started.channel, store: store, ca: authority, ttlSeconds: max(1, ttl)) } catch {
            WorkerBootstrap.die("cannot start the CA thread: \(error)")
        }
        if let istio = authority as? IstioCAClient { worker.tokenSink = { istio.setToken($0) } }
        worker.faultInjectionEnabled = started.configuration.bool("ZTUNNEL_DEBUG_FAULT_INJECTION")
        Log.info("confined", [("pid", "\(getpid())"), ("identities", "\(store.identities.count)"),
                              ("openssl", String(cString: OpenSSL_version(OPENSSL_VERSION)))])
        for identity in store.identities {
            let (notBefore, notAfter) = identity.leaf.validity
            worker.reportAudit("certificate_loaded", [
                ("identity", identity.material.spiffeId), ("serial", identity.leaf.serialNumberHex),
                ("not_before", Clock.rfc3339(seconds: notBefore)), ("not_after", Clock.rfc3339(seconds: notAfter)),
                ("source", identity.source),
                ("key_handle", identity.material.handle.prefix(8).map { String(format2: $0) }.joined()),
            ])
        }
        worker.run()
    }
}

extension String {
    /// Two lowercase hex digits.
    init(format2 byte: UInt8) {
        let digits = Array("0123456789abcdef")
        self = String([digits[Int(byte >> 4)], digits[Int(byte & 0xf)]])
    }
}

CertWorkerMain.run()
