internal import COpenSSL
import IPC
import OpenSSLSupport
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// Keeps a certificate for every identity some NetWorker wants (ISTIO_COMPAT §4.4): a fresh key
/// and CSR per issuance, renewal at half the lifetime (minus up to 5 % jitter), failures retried
/// with exponential backoff (1 s doubling to 150 s, ±20 %), the old certificate served until the
/// new one arrives, and the old key's handle kept only for a grace period after its replacement
/// is pushed. Identities nobody wants any more are forgotten. Single-threaded: the CertWorker's
/// poll loop calls `runDue` when `nextDeadline` passes.
final class CertificateManager {
    enum State: Equatable {
        case initializing
        case available
        case unavailable(String)

        var text: String {
            switch self {
            case .initializing: return "Initializing"
            case .available: return "Available"
            case .unavailable(let reason): return "Unavailable: \(reason)"
            }
        }
    }

    final class Entry {
        let id: SpiffeId
        var state = State.initializing
        var current: StoredIdentity?
        /// Replaced identities whose handles still sign until the given time (monotonic ms).
        var retiring: [(StoredIdentity, Int64)] = []
        var refreshAt: Int64 = 0
        var backoffMilliseconds: Int64 = 0
        /// Consecutive failures (reset on success), and all failures since the entry was made.
        var failures = 0
        var totalFailures = 0
        /// A CSR is with the CA; its key waits here, never leaving this thread.
        var isInFlight = false

        init(id: SpiffeId) { self.id = id }
    }

    /// Each NetWorker's identities refused in its last list, with the reason: reported in the
    /// status, so the NetWorker neither waits for them nor holds readiness for them.
    private(set) var refusedIdentities: [UInt16: [String: String]] = [:]

    static let retireGraceMilliseconds: Int64 = 30_000
    static let maxInFlight = 8
    /// Identities one NetWorker may ask for: a node runs a bounded number of pods, and a
    /// compromised NetWorker must not make the CertWorker mint keys without end.
    static let maxWantedPerNetWorker = 64
    /// New identities one NetWorker may add per minute (a node's pods come and go more slowly).
    static let maxNewPerMinute = 128

    private let ca: CertificateAuthority
    private let executor: CSRExecutor
    private let store: KeyStore
    private let ttlSeconds: Int
    private let audit: (String, [(String, String)]) -> Void
    private let publish: (IdentityMaterial) -> Void
    private(set) var entries: [String: Entry] = [:]
    private var wants: [UInt16: Set<String>] = [:]
    /// When each NetWorker last added new identities (monotonic ms), for `maxNewPerMinute`.
    private var newEntries: [UInt16: [Int64]] = [:]
    /// CSRs with the CA, counting those of identities forgotten meanwhile: their keys are still
    /// held until the CA answers.
    private var inFlight = 0
    private var lastRoots: String?
    /// For tests: the wall clock in seconds and monotonic milliseconds.
    var now: () -> (wall: Int, monotonic: Int64) = { (Int(Clock.epochSeconds()), Clock.monotonicMilliseconds()) }

    /// Called after an asynchronous completion changed state (for the status push).
    var onChange: () -> Void = {}
    /// Called when an identity is forgotten, so the NetWorkers withdraw it from their tables.
    var onForget: (String) -> Void = { _ in }

    init(ca: CertificateAuthority, executor: CSRExecutor = InlineCSRExecutor(), store: KeyStore, ttlSeconds: Int,
         audit: @escaping (String, [(String, String)]) -> Void, publish: @escaping (IdentityMaterial) -> Void) {
        self.ca = ca
        self.executor = executor
        self.store = store
        self.ttlSeconds = ttlSeconds
        self.audit = audit
        self.publish = publish
    }

    /// A NetWorker's whole list of wanted identities. New ones are fetched at once; ones nobody
    /// wants any more are forgotten (their keys dropped).
    func want(_ identities: [String], from netWorker: UInt16) {
        var valid = Set<String>()
        var refused = 0
        var refusals: [String: String] = [:]
        // One audit line per refusal, up to a few per request; the rest are counted, so a
        // request cannot turn into a thousand audit lines.
        func refuse(_ text: String, _ reason: String) {
            refused += 1
            if text.utf8.count <= 2048 { refusals[text] = reason }
            if refused <= 8 { audit("identity_refused", [("identity", text), ("reason", reason), ("net_worker", "\(netWorker)")]) }
        }
        for text in identities {
            guard let id = SpiffeId(text) else { refuse(text, "not a SPIFFE id"); continue }
            if let refusal = ca.refusal(for: id) { refuse(text, refusal); continue }
            guard valid.count < Self.maxWantedPerNetWorker else { refuse(text, "over \(Self.maxWantedPerNetWorker) identities"); continue }
            valid.insert(id.description)
        }
        if refused > 8 {
            audit("identity_refused", [("count", "\(refused - 8)"), ("reason", "further refusals in the same request"),
                                       ("net_worker", "\(netWorker)")])
        }
        // New identities cost a key and a CSR each: at most `maxNewPerMinute` per NetWorker, so
        // flipping between two lists cannot make the CertWorker mint keys without end.
        let now = self.now().monotonic
        var budget = newEntryBudget(for: netWorker, now: now)
        for name in valid where entries[name] == nil && !(wants.values.contains { $0.contains(name) }) {
            if budget == 0 {
                valid.remove(name)
                refuse(name, "over \(Self.maxNewPerMinute) new identities a minute")
                continue
            }
            budget -= 1
            newEntries[netWorker, default: []].append(now)
        }
        wants[netWorker] = valid
        refusedIdentities[netWorker] = refusals
        let wanted = wants.values.reduce(into: Set<String>()) { $0.formUnion($1) }
        for name in wanted where entries[name] == nil {
            guard let id = SpiffeId(name) else { continue }
            entries[name] = Entry(id: id)
        }
        for (name, entry) in entries where !wanted.contains(name) {
            forget(entry)
            entries[name] = nil
        }
    }

    /// New identities `netWorker` may still ask for in the current minute.
    private func newEntryBudget(for netWorker: UInt16, now: Int64) -> Int {
        let recent = (newEntries[netWorker] ?? []).filter { now - $0 < 60_000 }
        newEntries[netWorker] = recent
        return max(0, Self.maxNewPerMinute - recent.count)
    }

    private func forget(_ entry: Entry) {
        if let current = entry.current { store.remove(handle: current.material.handle) }
        for (old, _) in entry.retiring { store.remove(handle: old.material.handle) }
        audit("certificate_forgotten", [("identity", entry.id.description)])
        onForget(entry.id.description)
    }

    /// The earliest time (monotonic ms) something is due, if anything is.
    var nextDeadline: Int64? {
        // With every CSR slot taken nothing can be issued: wait for a CA answer (the executor
        // wakes the loop) rather than spin on a due time that cannot be served.
        let canIssue = inFlight < Self.maxInFlight
        return entries.values.flatMap { ((canIssue && !$0.isInFlight) ? [$0.refreshAt] : []) + $0.retiring.map(\.1) }.min()
    }

    /// Issues what is due (at most `maxInFlight` per call: the built-in CA answers synchronously)
    /// and drops retired handles whose grace has passed. Returns whether any state changed.
    @discardableResult
    func runDue() -> Bool {
        var changed = false
        let clock = now()
        for entry in entries.values {
            let (expired, keep) = (entry.retiring.filter { $0.1 <= clock.monotonic }, entry.retiring.filter { $0.1 > clock.monotonic })
            for (old, _) in expired { store.remove(handle: old.material.handle) }
            entry.retiring = keep
            if let current = entry.current, current.leaf.validity.notAfter <= clock.wall, entry.state == .available {
                changed = true
                entry.state = .unavailable("certificate expired")
                audit("certificate_expired", [("identity", entry.id.description), ("serial", current.leaf.serialNumberHex)])
            }
        }
        let due = entries.values.filter { !$0.isInFlight && $0.refreshAt <= clock.monotonic }.sorted { $0.refreshAt < $1.refreshAt }
        let issuing = Array(due.prefix(max(0, Self.maxInFlight - inFlight)))
        for entry in issuing { issue(entry, clock: clock) }
        return changed || !issuing.isEmpty
    }

    /// Makes the key and CSR here, sends the CSR through the executor, and finishes on this
    /// thread when the CA answers.
    private func issue(_ entry: Entry, clock: (wall: Int, monotonic: Int64)) {
        let isRenewal = entry.current != nil
        let key: PrivateKey
        let csr: String
        do {
            key = try KeyAndCSR.generateKey()
            csr = try KeyAndCSR.makeCSR(for: entry.id, key: key)
        } catch {
            failed(entry, error, clock: clock)
            return
        }
        audit("csr_sent", [("identity", entry.id.description), ("ca", ca.name), ("renewal", "\(isRenewal)")])
        entry.isInFlight = true
        inFlight += 1
        let (ca, identity, ttl) = (self.ca, entry.id, ttlSeconds)
        executor.submit({ Result { try ca.issue(csrPEM: csr, identity: identity, ttlSeconds: ttl) } }) { [weak self, weak entry] result in
            guard let self else { return }
            self.inFlight -= 1
            guard let entry else { return }
            entry.isInFlight = false
            // Forgotten while the CSR was out: drop the answer (and the key with it).
            guard self.entries[entry.id.description] === entry else { return }
            self.finish(entry, result, key: key, isRenewal: isRenewal)
            self.onChange()
        }
    }

    private func finish(_ entry: Entry, _ result: Result<IssuedCertificate, Error>, key: PrivateKey, isRenewal: Bool) {
        let clock = now()
        do {
            let identity = try accept(try result.get(), key: key, for: entry.id)
            if let old = entry.current { entry.retiring.append((old, clock.monotonic + Self.retireGraceMilliseconds)) }
            entry.current = identity
            entry.state = .available
            entry.failures = 0
            entry.backoffMilliseconds = 0
            let (notBefore, notAfter) = identity.leaf.validity
            let lifetime = Int64(max(1, notAfter - notBefore)) * 1000
            let jitter = Int64.random(in: 0...(lifetime / 20))
            // Half-life from notBefore (ISTIO_COMPAT §4.4), never sooner than a second from now, so
            // a CA that backdates a short certificate cannot make renewal spin.
            let halfLife = clock.monotonic + Int64(notBefore - clock.wall) * 1000 + lifetime / 2 - jitter
            entry.refreshAt = max(halfLife, clock.monotonic + 1000)
            store.insert(identity)
            reportIssued(identity, renewal: isRenewal, refreshInMilliseconds: entry.refreshAt - clock.monotonic)
            publish(identity.material)
        } catch {
            failed(entry, error, clock: clock)
        }
    }

    private func failed(_ entry: Entry, _ error: Error, clock: (wall: Int, monotonic: Int64)) {
        entry.failures += 1
        entry.totalFailures += 1
        let base = entry.backoffMilliseconds == 0 ? 1000 : min(150_000, entry.backoffMilliseconds * 2)
        entry.backoffMilliseconds = base
        let jittered = base + Int64.random(in: -(base / 5)...(base / 5))
        // Keep serving a still-valid certificate; retry no later than it expires.
        if let current = entry.current, current.leaf.validity.notAfter > clock.wall {
            let untilExpiry = Int64(current.leaf.validity.notAfter - clock.wall) * 1000
            entry.refreshAt = clock.monotonic + min(jittered, untilExpiry)
        } else {
            entry.state = .unavailable("\(error)")
            entry.refreshAt = clock.monotonic + jittered
        }
        audit("certificate_failed", [("identity", entry.id.description), ("ca", ca.name), ("error", "\(error)"),
                                     ("failures", "\(entry.failures)"), ("backoff_ms", "\(jittered)")])
    }

    /// Checks an issued chain before it is used: the leaf must carry exactly the identity asked
    /// for and match our key; a response with no root is an error (ISTIO_COMPAT §4.3).
    private func accept(_ issued: IssuedCertificate, key: PrivateKey, for id: SpiffeId) throws -> StoredIdentity {
        guard let leafPEM = issued.chainPEM.first, !issued.rootsPEM.isEmpty else {
            throw BuiltinCA.CAError("no root certificate present")
        }
        let leaf = try Certificate.parseChain(pem: leafPEM)[0]
        guard leaf.spiffeIds.first == id.description else {
            throw BuiltinCA.CAError("issued certificate is for \(leaf.spiffeIds.first ?? "nobody"), not \(id)")
        }
        // A leaf for another key would sign nothing that verifies, and could take over another
        // identity's handle in the key store.
        guard leaf.withUnsafeX509({ X509_check_private_key($0, key.pkey) }) == 1 else {
            throw BuiltinCA.CAError("issued certificate does not carry the key of our CSR")
        }
        guard leaf.validity.notAfter > now().wall else { throw BuiltinCA.CAError("issued certificate has already expired") }
        let material = IdentityMaterial(spiffeId: id.description, certificateChainPEM: issued.chainPEM.joined(),
                                        rootsPEM: issued.rootsPEM, handle: try leaf.publicKeyDigest())
        return StoredIdentity(material: material, leaf: leaf, key: key, source: ca.name)
    }

    private func reportIssued(_ identity: StoredIdentity, renewal: Bool, refreshInMilliseconds: Int64) {
        let (notBefore, notAfter) = identity.leaf.validity
        let roots = (try? Certificate.parseChain(pem: identity.material.rootsPEM)) ?? []
        audit("certificate_issued", [
            ("identity", identity.material.spiffeId), ("serial", identity.leaf.serialNumberHex),
            ("not_before", Clock.rfc3339(seconds: notBefore)), ("not_after", Clock.rfc3339(seconds: notAfter)),
            ("issuer", identity.leaf.issuerText), ("root_sha256", roots.map(\.sha256Fingerprint).joined(separator: ",")),
            ("ca", ca.name), ("renewal", "\(renewal)"), ("next_renewal_in_ms", "\(refreshInMilliseconds)"),
        ])
        if let last = lastRoots, last != identity.material.rootsPEM {
            audit("trust_bundle_changed", [("root_sha256", roots.map(\.sha256Fingerprint).joined(separator: ","))])
        }
        lastRoots = identity.material.rootsPEM
    }
}
