import NIOCore
import NIOEmbedded
import OpenSSLSupport
import Testing
@testable import NetWorker

/// CRL_PATH's lists (`RevocationList`) and the NetWorker's use of them (`Revocations`), on the
/// fixtures of scripts/make-crl-fixtures.sh.
@Suite struct RevocationListTests {
    static func chain(_ pems: String...) throws -> [Certificate] {
        try pems.flatMap { try Certificate.parseChain(pem: $0) }
    }

    static func list(_ text: String) throws -> RevocationList { try RevocationList(parsing: Array(text.utf8)) }

    /// A leaf its root's list names is revoked, by serial and issuer; its sibling is not; the
    /// same list in DER says the same.
    @Test func aLeafOnItsIssuersListIsRevokedAndItsSiblingIsNot() throws {
        for list in [try Self.list(CRLFixtures.rootRevokesLeaf1), try RevocationList(parsing: CRLFixtures.rootRevokesLeaf1DER)] {
            #expect(list.count == 1 && list.revokedEntries == 1)
            let revoked = list.revoked(in: try Self.chain(CRLFixtures.leaf1, CRLFixtures.root))
            #expect(revoked == "serial 1001 issued by /O=fixture/CN=fixture root")
            #expect(list.revoked(in: try Self.chain(CRLFixtures.leaf2, CRLFixtures.root)) == nil)
        }
    }

    /// A list that names the issuer but is signed by another key (a root of the same name) does
    /// not count: anyone could write one.
    @Test func aListSignedByAnotherKeyOfTheSameNameDoesNotCount() throws {
        let list = try Self.list(CRLFixtures.otherRootRevokesLeaf2)
        #expect(list.revokedEntries == 1)
        #expect(list.revoked(in: try Self.chain(CRLFixtures.leaf2, CRLFixtures.root)) == nil)
        #expect(list.revoked(in: try Self.chain(CRLFixtures.leaf2, CRLFixtures.root)) == nil)  // cached the same
    }

    /// Every certificate of the chain but the anchor is checked: a revoked intermediate revokes
    /// the leaves under it; a list of the intermediate's issuer says nothing of the leaf itself.
    @Test func aRevokedIntermediateRevokesItsLeaves() throws {
        let both = try Self.list(CRLFixtures.rootRevokesLeaf1 + "\n" + CRLFixtures.rootRevokesIntermediate)
        #expect(both.count == 2)
        let chain = try Self.chain(CRLFixtures.leaf3, CRLFixtures.intermediate, CRLFixtures.root)
        #expect(both.revoked(in: chain) == "serial 2001 issued by /O=fixture/CN=fixture root")
        #expect(try Self.list(CRLFixtures.rootRevokesLeaf1).revoked(in: chain) == nil)
    }

    /// Nothing revoked: an empty file, blanks, a list without entries, no lists at all.
    @Test func emptyListsRevokeNothing() throws {
        for text in ["", " \n\t\r\n", CRLFixtures.rootRevokesNothing] {
            #expect(try Self.list(text).revoked(in: try Self.chain(CRLFixtures.leaf1, CRLFixtures.root)) == nil)
        }
        #expect(RevocationList().revoked(in: try Self.chain(CRLFixtures.leaf1, CRLFixtures.root)) == nil)
        #expect(try Self.list(CRLFixtures.rootRevokesLeaf1).revoked(in: try Self.chain(CRLFixtures.leaf1)) == nil)  // no issuer
    }

    /// Refused whole: a PEM block that is no CRL (a certificate: CRL_PATH pointed at the wrong
    /// file), bytes that are neither, DER with bytes after it, a damaged block, too many lists.
    @Test func whatIsNoListIsRefused() throws {
        var trailing = CRLFixtures.rootRevokesLeaf1DER
        trailing.append(0)
        let damaged = CRLFixtures.rootRevokesLeaf1.replacingOccurrences(of: "MI", with: "QQ")
        let tooMany = String(repeating: CRLFixtures.rootRevokesNothing + "\n", count: RevocationList.maxLists + 1)
        #expect(try RevocationList(parsing: Array(String(repeating: CRLFixtures.rootRevokesNothing + "\n", count: RevocationList.maxLists).utf8))
            .count == RevocationList.maxLists)
        for bytes in [Array(CRLFixtures.root.utf8), Array((CRLFixtures.rootRevokesLeaf1 + "\n" + CRLFixtures.leaf1).utf8),
                      Array("not a list".utf8), trailing, Array(damaged.utf8), Array(tooMany.utf8), [0x30, 0x03, 0x02]] {
            #expect(throws: RevocationList.Refused.self) { try RevocationList(parsing: bytes) }
        }
    }

    /// The NetWorker's side: lists that do not parse first refuse every peer (CRL_PATH is set:
    /// no unchecked certificate); lists that parse then apply; later bad lists keep them. Each
    /// refusal is counted under its reporter.
    @Test func badFirstListsRefuseEveryPeerAndLaterBadListsKeepTheLast() throws {
        let revocations = Revocations()
        let leaf1 = try Self.chain(CRLFixtures.leaf1, CRLFixtures.root)
        let leaf2 = try Self.chain(CRLFixtures.leaf2, CRLFixtures.root)
        #expect(revocations.admit(nil, chain: leaf1, reporter: "destination", peer: "p") == nil)  // CRL_PATH unset
        revocations.enable()
        // Nothing in force yet: every peer refused, readiness says so.
        #expect(revocations.admit(nil, chain: leaf2, reporter: "destination", peer: "p") == Revocations.notYet)
        #expect(revocations.problem == Revocations.notYet)
        #expect(throws: RevocationList.Refused.self) { try revocations.install(Array("garbage".utf8)) }
        #expect(revocations.admit(nil, chain: leaf2, reporter: "destination", peer: "p")?.contains("no revocation list that parses") == true)
        #expect(revocations.problem != nil)
        let outcome = try revocations.install(Array(CRLFixtures.rootRevokesLeaf1.utf8))
        #expect(outcome.lists == 1 && outcome.revoked == 1 && outcome.closed == 0 && revocations.problem == nil)
        #expect(revocations.admit(nil, chain: leaf2, reporter: "source", peer: "p") == nil)
        #expect(revocations.admit(nil, chain: leaf1, reporter: "source", peer: "p")?.hasPrefix("peer certificate revoked (serial 1001") == true)
        #expect(throws: RevocationList.Refused.self) { try revocations.install(Array("garbage".utf8)) }
        #expect(revocations.admit(nil, chain: leaf1, reporter: "source", peer: "p") != nil && revocations.problem == nil)
        #expect(revocations.admit(nil, chain: [], reporter: "source", peer: "p") != nil)  // no chain: refused
        let lines = revocations.metricLines()
        #expect(lines.contains("istio_crl_policy_rejections_total{reporter=\"destination\"} 2"))
        #expect(lines.contains("istio_crl_policy_rejections_total{reporter=\"source\"} 3"))
        #expect(lines.contains("istio_crl_untracked_connections_total{reporter=\"source\"} 0"))
    }

    /// Live connections: new lists close the admitted ones whose peer they revoke (and only
    /// those); a refused one is not tracked; a closed one is forgotten.
    @Test func newListsCloseTheLiveConnectionsTheyRevoke() throws {
        let revocations = Revocations()
        revocations.enable()
        _ = try revocations.install([])
        let revokedPeer = EmbeddedChannel(), keptPeer = EmbeddedChannel()
        let leaf1 = try Self.chain(CRLFixtures.leaf1, CRLFixtures.root)
        let leaf2 = try Self.chain(CRLFixtures.leaf2, CRLFixtures.root)
        #expect(revocations.admit(revokedPeer, chain: leaf1, reporter: "destination", peer: "one") == nil)
        #expect(revocations.admit(keptPeer, chain: leaf2, reporter: "source", peer: "two") == nil)
        let outcome = try revocations.install(Array(CRLFixtures.rootRevokesLeaf1.utf8))
        #expect(outcome.closed == 1)
        #expect(revocations.metricLines().contains("istio_crl_policy_rejections_total{reporter=\"destination\"} 1"))
        #expect(revocations.metricLines().contains("istio_crl_untracked_connections_total{reporter=\"source\"} 0"))
        // Refused now, so not tracked: the next lists close nothing new.
        let refusedPeer = EmbeddedChannel()
        #expect(revocations.admit(refusedPeer, chain: leaf1, reporter: "destination", peer: "three") != nil)
        try revokedPeer.close().wait()
        revokedPeer.embeddedEventLoop.run()
        #expect(try revocations.install(Array(CRLFixtures.rootRevokesLeaf1.utf8)).closed == 0)  // forgotten once closed
        _ = try keptPeer.finish()
        _ = try refusedPeer.finish()
    }
}
