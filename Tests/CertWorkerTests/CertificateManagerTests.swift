import IPC
import OpenSSLSupport
import Shared
import Testing
@testable import CertWorker
#if canImport(Glibc)
import Glibc
#endif

/// The certificate manager against a CA test double (the `CertificateAuthority` seam) and a
/// controlled clock: issuance, renewal at half-life, backoff on failure while the old certificate
/// keeps serving, and forgetting.
@Suite struct CertificateManagerTests {
    /// The built-in CA, switchable into an outage.
    final class FlakyCA: CertificateAuthority {
        let name = "test"
        var real: BuiltinCA
        var isDown = false
        var requests: [String] = []
        init() throws { real = try BuiltinCA(selfSignedFor: "cluster.local") }
        func refusal(for identity: SpiffeId) -> String? { real.refusal(for: identity) }
        func issue(csrPEM: String, identity: SpiffeId, ttlSeconds: Int) throws -> IssuedCertificate {
            requests.append(identity.description)
            if isDown { throw BuiltinCA.CAError("CA unavailable") }
            return try real.issue(csrPEM: csrPEM, identity: identity, ttlSeconds: ttlSeconds)
        }
    }

    struct Harness {
        let ca: FlakyCA
        let store = KeyStore()
        let manager: CertificateManager
        var events: () -> [(String, [(String, String)])]
        var published: () -> [IdentityMaterial]
        var clock: (Int, Int64)
        static let id = "spiffe://cluster.local/ns/shop/sa/cart"

        init(ttl: Int) throws {
            try KeyStore.enableSecureHeap()
            ca = try FlakyCA()
            final class Log { var events: [(String, [(String, String)])] = []; var published: [IdentityMaterial] = [] }
            let log = Log()
            manager = CertificateManager(ca: ca, store: store, ttlSeconds: ttl,
                                         audit: { log.events.append(($0, $1)) }, publish: { log.published.append($0) })
            events = { log.events }
            published = { log.published }
            clock = (Int(time(nil)), 1_000_000)
            let wall = clock.0
            ca.real.now = { wall }
        }

        mutating func advance(seconds: Int) {
            clock = (clock.0 + seconds, clock.1 + Int64(seconds) * 1000)
            let now = clock
            manager.now = { now }
            ca.real.now = { now.0 }
            manager.runDue()
        }
    }

    @Test func issuesRenewsAtHalfLifeAndSurvivesAnOutage() throws {
        var harness = try Harness(ttl: 100)
        let now = harness.clock
        harness.manager.now = { now }
        harness.manager.want([Harness.id, "not-spiffe"], from: 0)
        harness.manager.runDue()
        let entry = try #require(harness.manager.entries[Harness.id])
        #expect(entry.state == .available)
        let first = try #require(entry.current)
        #expect(harness.store.byHandle[first.material.handle] != nil)
        #expect(harness.events().map(\.0).contains("identity_refused"))
        // The CA backdates by 10 s (a tenth of the TTL), so the lifetime is 110 s: renewal is due
        // at notBefore + 55 s minus up to 5 % jitter, i.e. between 39.5 s and 45 s from now.
        harness.advance(seconds: 35)
        #expect(harness.ca.requests.count == 1)
        harness.advance(seconds: 11)
        #expect(harness.ca.requests.count == 2)
        let second = try #require(entry.current)
        #expect(second.material.handle != first.material.handle)
        // The old key still signs during its grace period, then its handle stops working.
        #expect(harness.store.byHandle[first.material.handle] != nil)
        harness.advance(seconds: 31)
        #expect(harness.store.byHandle[first.material.handle] == nil)
        #expect(harness.store.byHandle[second.material.handle] != nil)

        // Outage: the renewal fails, is retried with backoff, the current certificate keeps serving.
        harness.ca.isDown = true
        harness.advance(seconds: 30)
        let failures = harness.events().filter { $0.0 == "certificate_failed" }
        #expect(failures.count == 1)
        #expect(entry.state == .available && entry.current === second)
        let backoff = Int(failures[0].1.first { $0.0 == "backoff_ms" }?.1 ?? "") ?? 0
        #expect((800...1200).contains(backoff))
        harness.advance(seconds: 2)
        harness.advance(seconds: 3)
        let backoffs = harness.events().filter { $0.0 == "certificate_failed" }.compactMap { event in
            Int(event.1.first { $0.0 == "backoff_ms" }?.1 ?? "")
        }
        #expect(backoffs.count == 3 && backoffs[2] > backoffs[0])  // exponential
        harness.ca.isDown = false
        harness.advance(seconds: 10)
        #expect(entry.state == .available && entry.failures == 0 && entry.current !== second)
        #expect(harness.published().count == 3)
    }

    @Test func withoutACertificateTheStateIsUnavailable() throws {
        var harness = try Harness(ttl: 100)
        harness.ca.isDown = true
        harness.manager.want([Harness.id], from: 0)
        harness.advance(seconds: 0)
        #expect(harness.manager.entries[Harness.id]?.state == .unavailable("CA unavailable"))
    }

    @Test func wantsAreBoundedAndOutsideTheTrustDomainRefused() throws {
        let harness = try Harness(ttl: 100)
        var many = (0..<100).map { "spiffe://cluster.local/ns/n\($0)/sa/s" }
        many.append("spiffe://evil.example/ns/a/sa/b")
        harness.manager.want(many, from: 0)
        #expect(harness.manager.entries.count == CertificateManager.maxWantedPerNetWorker)
        #expect(harness.manager.entries["spiffe://evil.example/ns/a/sa/b"] == nil)
        // 37 refusals: eight audited one by one, the rest counted in one line.
        let refusals = harness.events().filter { $0.0 == "identity_refused" }
        #expect(refusals.count == 9)
        #expect(refusals.last?.1.first { $0.0 == "count" }?.1 == "\(100 - CertificateManager.maxWantedPerNetWorker + 1 - 8)")
    }

    /// THREAT_MODEL, "Make identities exist": a NetWorker that flips between lists cannot make
    /// the CertWorker mint more than `maxNewPerMinute` new identities (a key and a CSR each) a
    /// minute; the next minute it may again.
    @Test func newIdentitiesAreBoundedPerMinute() throws {
        var harness = try Harness(ttl: 100)
        let now = harness.clock
        harness.manager.now = { now }
        func list(_ tag: String) -> [String] { (0..<64).map { "spiffe://cluster.local/ns/\(tag)\($0)/sa/s" } }
        harness.manager.want(list("a"), from: 0)
        harness.manager.want(list("b"), from: 0)  // a forgotten, b made: 128 new this minute
        #expect(harness.manager.entries.count == 64)
        harness.manager.want(list("c"), from: 0)
        #expect(harness.manager.entries.isEmpty)  // b forgotten, c over the budget
        let reason = "over \(CertificateManager.maxNewPerMinute) new identities a minute"
        #expect(harness.manager.refusedIdentities[0]?.count == 64)
        #expect(harness.manager.refusedIdentities[0]?.values.allSatisfy { $0 == reason } == true)
        // Another NetWorker has its own budget.
        harness.manager.want(list("d"), from: 1)
        #expect(harness.manager.entries.count == 64)
        harness.advance(seconds: 61)
        harness.manager.want(list("c"), from: 0)
        #expect(harness.manager.entries.count == 128)
        #expect(harness.manager.refusedIdentities[0]?.isEmpty == true)
    }

    /// Holds CSRs as a slow CA would, until released.
    final class HeldExecutor: CSRExecutor {
        var held: [() -> Void] = []
        func submit(_ work: @escaping () -> Result<IssuedCertificate, Error>,
                    completion: @escaping (Result<IssuedCertificate, Error>) -> Void) {
            held.append { completion(work()) }
        }
        func releaseAll() {
            let jobs = held
            held = []
            jobs.forEach { $0() }
        }
    }

    /// THREAT_MODEL, "Make identities exist": however many identities are due, at most
    /// `maxInFlight` CSRs (and their keys) are out with the CA at once, and the loop has nothing
    /// to wake for until one comes back.
    @Test func atMostEightCSRsAreWithTheCA() throws {
        try KeyStore.enableSecureHeap()
        let ca = try FlakyCA()
        let executor = HeldExecutor()
        let manager = CertificateManager(ca: ca, executor: executor, store: KeyStore(), ttlSeconds: 100,
                                         audit: { _, _ in }, publish: { _ in })
        let wall = Int(time(nil))
        ca.real.now = { wall }
        manager.now = { (wall, 1_000_000) }
        manager.want((0..<20).map { "spiffe://cluster.local/ns/n\($0)/sa/s" }, from: 0)
        manager.runDue()
        manager.runDue()
        #expect(executor.held.count == CertificateManager.maxInFlight)
        #expect(manager.nextDeadline == nil)
        executor.releaseAll()
        #expect(manager.entries.values.filter { $0.state == .available }.count == CertificateManager.maxInFlight)
        manager.runDue()
        #expect(executor.held.count == CertificateManager.maxInFlight)
        executor.releaseAll()
        manager.runDue()
        #expect(executor.held.count == 20 - 2 * CertificateManager.maxInFlight)
        executor.releaseAll()
        #expect(manager.entries.values.allSatisfy { $0.state == .available })
        #expect(ca.requests.count == 20)
    }

    @Test func identitiesNobodyWantsAreForgotten() throws {
        var harness = try Harness(ttl: 100)
        final class Withdrawn { var ids: [String] = [] }
        let withdrawn = Withdrawn()
        harness.manager.onForget = { withdrawn.ids.append($0) }
        harness.manager.want([Harness.id], from: 0)
        harness.manager.want([Harness.id], from: 1)
        harness.advance(seconds: 0)
        let handle = try #require(harness.manager.entries[Harness.id]?.current?.material.handle)
        harness.manager.want([], from: 0)
        #expect(harness.manager.entries[Harness.id] != nil)  // NetWorker 1 still wants it
        harness.manager.want([], from: 1)
        #expect(harness.manager.entries[Harness.id] == nil)
        #expect(harness.store.byHandle[handle] == nil)
        #expect(harness.events().map(\.0).contains("certificate_forgotten"))
        // The NetWorkers are told to withdraw it (issue #6: identities used to be only added).
        #expect(withdrawn.ids == [Harness.id])
    }

    @Test func theCSRIsWhatTheIstioCAExpects() throws {
        try KeyStore.enableSecureHeap()
        let key = try KeyAndCSR.generateKey()
        let csr = try KeyAndCSR.makeCSR(for: try #require(SpiffeId("spiffe://cluster.local/ns/a/sa/b")), key: key)
        let path = "/tmp/ztunnel-csr-\(getpid()).pem"
        let written = csr.withCString { text -> Bool in
            guard let file = fopen(path, "w") else { return false }
            defer { fclose(file) }
            return fputs(text, file) >= 0
        }
        #expect(written)
        defer { unlink(path) }
        // openssl prints the parsed request; check subject, key and the critical URI SAN.
        guard let pipe = popen("openssl req -in \(path) -noout -text -verify 2>&1", "r") else { Issue.record("popen"); return }
        var output = ""
        var buffer = [CChar](repeating: 0, count: 4096)
        while fgets(&buffer, Int32(buffer.count), pipe) != nil { output += String(cString: buffer) }
        pclose(pipe)
        // The subject is empty (ISTIO_COMPAT §4.1): openssl prints the label and nothing after it.
        let subject = output.split(separator: "\n").map { String($0).trimmingWhitespace() }.first { $0.hasPrefix("Subject:") }
        #expect(subject == "Subject:")
        #expect(output.contains("ASN1 OID: prime256v1"))
        #expect(output.contains("X509v3 Subject Alternative Name: critical"))
        #expect(output.contains("URI:spiffe://cluster.local/ns/a/sa/b"))
        #expect(output.contains("verify OK") || output.contains("Certificate request self-signature verify OK"))
    }
}
