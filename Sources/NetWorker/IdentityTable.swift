import IPC
import NIOCore
import OpenSSLSupport
import Shared

/// The identities the CertWorker has pushed (public material and key handles only) and the TLS
/// contexts built for each: the server side (15008) and the client side (the outbound pool). Read from event-loop threads, written by the signer reader.
final class IdentityTable: @unchecked Sendable {
    private let lock = Mutex()
    private var contexts: [String: (server: TLSContext, client: TLSContext)] = [:]
    private var materials: [String: IdentityMaterial] = [:]
    private var statuses: [CertificateStatus] = []
    /// The identities this NetWorker asked the CertWorker for (the local workloads'): readiness
    /// waits for them, and a connection that needs one not yet here waits for it (bounded).
    private var expected: Set<String> = []

    private let arrivals = KeyedWaiters(capacity: 4096, timeout: IdentityTable.certificateWait)
    static let certificateWait: TimeAmount = .seconds(5)

    /// The CertWorker's latest certificate states, sorted by identity.
    var certificateStatuses: [CertificateStatus] { lock.withLock { statuses } }

    func update(statuses: [CertificateStatus]) {
        lock.withLock { self.statuses = statuses.sorted { $0.spiffeId < $1.spiffeId } }
    }

    func update(_ material: IdentityMaterial) {
        do {
            let context = (server: try TLSContext(material: material, side: .server),
                           client: try TLSContext(material: material, side: .client))
            lock.withLock {
                contexts[material.spiffeId] = context
                materials[material.spiffeId] = material
            }
            Log.info("identity available", [("identity", material.spiffeId)])
            arrivals.release(material.spiffeId)
        } catch {
            Log.error("cannot use identity \(material.spiffeId): \(error)")
        }
    }

    /// Drops an identity the CertWorker withdrew: new handshakes no longer use its handle
    /// (issue #6: before, a departed identity stayed here with a handle nobody knew, and each
    /// handshake for it drew a refusal that counted against this NetWorker).
    func withdraw(_ spiffeId: String) {
        let removed = lock.withLock { () -> Bool in
            materials[spiffeId] = nil
            return contexts.removeValue(forKey: spiffeId) != nil
        }
        if removed { Log.info("identity withdrawn", [("identity", spiffeId)]) }
    }

    /// Fault injection only: the key handle of some identity held, nil when none is.
    func anyHandle() -> [UInt8]? {
        lock.withLock { materials.values.first?.handle }
    }

    /// Forgets every identity: their handles belonged to a CertWorker that is gone.
    func removeAll() {
        let count = lock.withLock { () -> Int in
            defer {
                contexts.removeAll()
                materials.removeAll()
                statuses.removeAll()
            }
            return contexts.count
        }
        if count > 0 { Log.info("identities dropped for a new CertWorker", [("count", "\(count)")]) }
    }

    /// The context 15008 presents for `identity` (the destination workload's), if it is here.
    func serverContext(for identity: String) -> TLSContext? {
        lock.withLock { contexts[identity]?.server }
    }

    /// The context an outbound tunnel presents for `identity` (the source workload's), if it is here.
    func clientContext(for identity: String) -> TLSContext? {
        lock.withLock { contexts[identity]?.client }
    }

    /// The identities asked for (the whole list, replacing the last).
    func expect(_ identities: Set<String>) {
        lock.withLock { expected = identities }
    }

    /// Expected identities the CertWorker is getting and that are not here yet, sorted.
    var missing: [String] { lock.withLock { coming().sorted() } }

    /// Under the lock: the expected identities on their way: not here, and not refused by the
    /// CertWorker (it reports refusals in its status as `Unavailable: refused: ...`; one it has
    /// not reported on yet is still coming).
    private func coming() -> Set<String> {
        let refused = statuses.filter { $0.state.hasPrefix("Unavailable: refused") }.map(\.spiffeId)
        return expected.subtracting(contexts.keys).subtracting(refused)
    }

    /// Succeeds when `identity`'s certificate is here, at once if it is; after
    /// `certificateWait` if it does not come; at once if it was never asked for or the CertWorker
    /// refused it (it will not come).
    func waitForCertificate(_ identity: String, on loop: EventLoop) -> EventLoopFuture<Void> {
        let (present, isExpected) = lock.withLock { (contexts[identity] != nil, coming().contains(identity)) }
        guard !present, isExpected, let (future, _) = arrivals.wait(for: identity, on: loop) else { return loop.makeSucceededVoidFuture() }
        // It may have arrived between the look and the wait.
        if clientContext(for: identity) != nil { arrivals.release(identity) }
        return future
    }

    /// The certificates the CertWorker pushed, by SPIFFE id.
    var materialsById: [String: IdentityMaterial] { lock.withLock { materials } }
}
