import Testing
@testable import Mesh

@Suite struct AuthorizerTests {
    static let frontend = "spiffe://cluster.local/ns/shop/sa/frontend"
    static let allowAll: [[[Match]]] = [[]]  // rules: [{}]

    func connection(_ identity: String? = AuthorizerTests.frontend, from source: String = "10.0.0.1", to destination: String = "10.0.0.2",
                    port: UInt16 = 8080) throws -> Authorizer.Connection {
        Authorizer.Connection(sourceIdentity: identity, sourceIP: try #require(IPAddress(source)),
                              destinationIP: try #require(IPAddress(destination)), destinationPort: port)
    }

    func policy(_ name: String, _ action: Policy.Action, dryRun: Bool = false, _ groups: [[[Match]]]) -> Policy {
        Policy(name: name, namespace: "shop", scope: .namespace, action: action, groups: groups, dryRun: dryRun)
    }

    /// A policy of one group with one clause holding `match`.
    func single(_ match: Match, _ action: Policy.Action = .allow) -> Policy { policy("p", action, [[[match]]]) }

    func prefixes(_ texts: String...) throws -> [IPPrefix] { try texts.map { try #require(IPPrefix($0)) } }

    // MARK: - Evaluation order

    @Test func denyBeatsAllow() throws {
        let decision = Authorizer.decide([policy("allow-all", .allow, Self.allowAll), policy("deny-all", .deny, Self.allowAll)],
                                         for: try connection())
        #expect(decision == .deny(reason: "explicitly denied by: shop/deny-all", policy: "shop/deny-all", dryRunLogs: []))
        #expect(!decision.isAllowed)
    }

    @Test func noAllowPoliciesAllows() throws {
        #expect(Authorizer.decide([], for: try connection()) == .allow(dryRunLogs: []))
        let unmatchedDeny = single(Match(destinationPorts: [22]), .deny)
        #expect(Authorizer.decide([unmatchedDeny], for: try connection()) == .allow(dryRunLogs: []))
    }

    @Test func allowPoliciesThatDoNotMatchDeny() throws {
        let onlyPort9090 = single(Match(destinationPorts: [9090]))
        #expect(Authorizer.decide([onlyPort9090], for: try connection(port: 9090)).isAllowed)
        #expect(Authorizer.decide([onlyPort9090], for: try connection(port: 8080))
            == .deny(reason: "allow policies exist, but none allowed", policy: nil, dryRunLogs: []))
        // Any one matching ALLOW policy is enough.
        let onlyPort8080 = policy("other", .allow, [[[Match(destinationPorts: [8080])]]])
        #expect(Authorizer.decide([onlyPort9090, onlyPort8080], for: try connection(port: 8080)).isAllowed)
    }

    @Test func dryRunDenyIsOnlyLogged() throws {
        let dryDeny = policy("dry-deny", .deny, dryRun: true, Self.allowAll)
        #expect(Authorizer.decide([dryDeny], for: try connection())
            == .allow(dryRunLogs: ["dry-run policy shop/dry-deny would deny (explicitly denied by: shop/dry-deny)"]))
        // Still logged when an enforced policy denies.
        let decision = Authorizer.decide([dryDeny, policy("deny", .deny, Self.allowAll)], for: try connection())
        #expect(decision.dryRunLogs == ["dry-run policy shop/dry-deny would deny (explicitly denied by: shop/dry-deny)"])
        #expect(!decision.isAllowed)
        // Not logged when it does not match.
        let dryDenyPort22 = policy("dry-deny", .deny, dryRun: true, [[[Match(destinationPorts: [22])]]])
        #expect(Authorizer.decide([dryDenyPort22], for: try connection()) == .allow(dryRunLogs: []))
    }

    @Test func dryRunAllowIsOnlyLogged() throws {
        let dryAllow = policy("dry-allow", .allow, dryRun: true, [[[Match(destinationPorts: [8080])]]])
        let enforced = single(Match(destinationPorts: [9090]))
        // It does not allow what the enforced ALLOW policy refuses.
        #expect(Authorizer.decide([dryAllow, enforced], for: try connection(port: 8080))
            == .deny(reason: "allow policies exist, but none allowed", policy: nil, dryRunLogs: ["dry-run policy shop/dry-allow would allow"]))
        // Nor does it count as "an ALLOW policy exists".
        #expect(Authorizer.decide([dryAllow], for: try connection(port: 22)) == .allow(dryRunLogs: []))
        #expect(Authorizer.decide([dryAllow], for: try connection(port: 8080)) == .allow(dryRunLogs: ["dry-run policy shop/dry-allow would allow"]))
    }

    // MARK: - Structure of a policy

    @Test func zeroGroupsNeverMatch() throws {
        let empty = policy("empty", .allow, [])
        #expect(!Authorizer.matches(empty, try connection()))
        // An ALLOW policy that never matches still counts as existing.
        #expect(Authorizer.decide([empty], for: try connection())
            == .deny(reason: "allow policies exist, but none allowed", policy: nil, dryRunLogs: []))
        // A DENY policy with zero groups is a no-op, not an L7-only policy to fail closed on.
        let emptyDeny = policy("empty", .deny, [])
        #expect(!Authorizer.failsClosed(emptyDeny))
        #expect(Authorizer.decide([emptyDeny], for: try connection()).isAllowed)
    }

    @Test func oneGroupWithNoClausesMatchesAll() throws {
        let all = policy("all", .allow, Self.allowAll)
        for conn in [try connection(), try connection(nil, from: "::1", to: "fd00::1", port: 1)] {
            #expect(Authorizer.matches(all, conn))
            #expect(Authorizer.decide([all], for: conn).isAllowed)
        }
    }

    @Test func clauseWithNoMatchesCountsAsMatching() throws {
        let withEmptyClause = policy("p", .allow, [[[], [Match(destinationPorts: [9090])]]])
        #expect(Authorizer.matches(withEmptyClause, try connection(port: 9090)))
        #expect(!Authorizer.matches(withEmptyClause, try connection(port: 8080)))
    }

    @Test func emptyMatchIsSkipped() throws {
        #expect(!Authorizer.matches(single(Match()), try connection()))
        #expect(!Authorizer.matches(single(Match(), .deny), try connection()))
        let emptyOrPort = policy("p", .allow, [[[Match(), Match(destinationPorts: [9090])]]])
        #expect(Authorizer.matches(emptyOrPort, try connection(port: 9090)))
        #expect(!Authorizer.matches(emptyOrPort, try connection(port: 8080)))
    }

    @Test func groupsAreOredClausesAndedMatchesOred() throws {
        let port = Match(destinationPorts: [9090]), otherPort = Match(destinationPorts: [9091])
        let principal = Match(principals: [.exact("cluster.local/ns/shop/sa/frontend")])
        let anded = policy("p", .allow, [[[principal], [port, otherPort]]])
        #expect(Authorizer.matches(anded, try connection(port: 9091)))
        #expect(!Authorizer.matches(anded, try connection(port: 8080)))
        #expect(!Authorizer.matches(anded, try connection("spiffe://cluster.local/ns/shop/sa/other", port: 9090)))
        let ored = policy("p", .allow, [[[principal]], [[port]]])
        #expect(Authorizer.matches(ored, try connection(nil, port: 9090)))
        #expect(Authorizer.matches(ored, try connection(port: 8080)))
        #expect(!Authorizer.matches(ored, try connection(nil, port: 8080)))
    }

    @Test func everyPopulatedFieldOfAMatchMustHold() throws {
        let both = single(Match(sourceIps: try prefixes("10.0.0.0/8"), destinationPorts: [9090]))
        #expect(Authorizer.matches(both, try connection(port: 9090)))
        #expect(!Authorizer.matches(both, try connection(port: 8080)))
        #expect(!Authorizer.matches(both, try connection(from: "11.0.0.1", port: 9090)))
        // Positive and negative of one field together.
        let inButNot = single(Match(sourceIps: try prefixes("10.0.0.0/8"), notSourceIps: try prefixes("10.0.0.0/24")))
        #expect(Authorizer.matches(inButNot, try connection(from: "10.1.0.1")))
        #expect(!Authorizer.matches(inButNot, try connection(from: "10.0.0.1")))
    }

    // MARK: - Fields

    @Test func namespaces() throws {
        let shop = single(Match(namespaces: [.exact("shop")])), notShop = single(Match(notNamespaces: [.exact("shop")]))
        let other = "spiffe://cluster.local/ns/other/sa/frontend"
        #expect(Authorizer.matches(shop, try connection()))
        #expect(!Authorizer.matches(shop, try connection(other)))
        #expect(!Authorizer.matches(notShop, try connection()))
        #expect(Authorizer.matches(notShop, try connection(other)))
        #expect(Authorizer.matches(single(Match(namespaces: [.prefix("sh"), .exact("x")])), try connection()))
        // No identity: compared as "", so positive names miss, presence misses, not_* hold.
        #expect(!Authorizer.matches(shop, try connection(nil)))
        #expect(Authorizer.matches(notShop, try connection(nil)))
        #expect(!Authorizer.matches(single(Match(namespaces: [.presence])), try connection(nil)))
        #expect(Authorizer.matches(single(Match(notNamespaces: [.presence])), try connection(nil)))
        #expect(!Authorizer.matches(single(Match(notNamespaces: [.presence])), try connection()))
        #expect(Authorizer.matches(single(Match(namespaces: [.exact("")])), try connection(nil)))
    }

    @Test func principalsAreComparedWithoutTheSpiffeScheme() throws {
        #expect(Authorizer.matches(single(Match(principals: [.exact("cluster.local/ns/shop/sa/frontend")])), try connection()))
        #expect(!Authorizer.matches(single(Match(principals: [.exact(Self.frontend)])), try connection()))
        #expect(Authorizer.matches(single(Match(principals: [.prefix("cluster.local/ns/shop/")])), try connection()))
        #expect(Authorizer.matches(single(Match(principals: [.suffix("/sa/frontend")])), try connection()))
        #expect(!Authorizer.matches(single(Match(principals: [.prefix("spiffe://")])), try connection()))
        #expect(!Authorizer.matches(single(Match(principals: [.exact("cluster.local/ns/shop/sa/frontend")])),
                                    try connection("spiffe://other.td/ns/shop/sa/frontend")))
        let notFrontend = single(Match(notPrincipals: [.exact("cluster.local/ns/shop/sa/frontend")]))
        #expect(!Authorizer.matches(notFrontend, try connection()))
        #expect(Authorizer.matches(notFrontend, try connection("spiffe://cluster.local/ns/shop/sa/other")))
    }

    @Test func principalsWithoutIdentity() throws {
        #expect(!Authorizer.matches(single(Match(principals: [.presence])), try connection(nil)))
        #expect(!Authorizer.matches(single(Match(principals: [.prefix("")])), try connection(nil)))
        // not_principals: [presence] is how istiod denies plaintext (PeerAuthentication STRICT).
        let strict = single(Match(notPrincipals: [.presence]), .deny)
        #expect(Authorizer.matches(strict, try connection(nil)))
        #expect(!Authorizer.matches(strict, try connection()))
        #expect(Authorizer.decide([strict], for: try connection(nil))
            == .deny(reason: "explicitly denied by: shop/p", policy: "shop/p", dryRunLogs: []))
        #expect(Authorizer.decide([strict], for: try connection()).isAllowed)
    }

    @Test func malformedIdentityCountsAsNone() throws {
        for text in ["cluster.local/ns/shop/sa/frontend", "spiffe://cluster.local/ns/shop", "spiffe://cluster.local/ns/shop/sa/frontend/x",
                     "spiffe://cluster.local/sa/shop/ns/frontend", "spiffe:///ns/shop/sa/frontend", "spiffe://td/ns//sa/x", ""] {
            #expect(!Authorizer.matches(single(Match(principals: [.presence])), try connection(text)), "\(text)")
            #expect(!Authorizer.matches(single(Match(namespaces: [.presence])), try connection(text)), "\(text)")
            #expect(Authorizer.matches(single(Match(notPrincipals: [.presence])), try connection(text)), "\(text)")
        }
    }

    @Test func serviceAccountsIgnoreTheTrustDomain() throws {
        let frontend = single(Match(serviceAccounts: [ServiceAccountMatch(namespace: "shop", serviceAccount: "frontend")]))
        #expect(Authorizer.matches(frontend, try connection()))
        #expect(Authorizer.matches(frontend, try connection("spiffe://other.td/ns/shop/sa/frontend")))
        #expect(!Authorizer.matches(frontend, try connection("spiffe://cluster.local/ns/other/sa/frontend")))
        #expect(!Authorizer.matches(frontend, try connection("spiffe://cluster.local/ns/shop/sa/cart")))
        #expect(!Authorizer.matches(frontend, try connection(nil)))
        let notFrontend = single(Match(notServiceAccounts: [ServiceAccountMatch(namespace: "shop", serviceAccount: "frontend")]))
        #expect(!Authorizer.matches(notFrontend, try connection("spiffe://other.td/ns/shop/sa/frontend")))
        #expect(Authorizer.matches(notFrontend, try connection("spiffe://cluster.local/ns/shop/sa/cart")))
        #expect(Authorizer.matches(notFrontend, try connection(nil)))
    }

    @Test func sourceIps() throws {
        let v4 = single(Match(sourceIps: try prefixes("192.168.0.0/16")))
        #expect(Authorizer.matches(v4, try connection(from: "192.168.44.1")))
        #expect(!Authorizer.matches(v4, try connection(from: "192.169.0.1")))
        #expect(!Authorizer.matches(v4, try connection(from: "fd00::1")))
        let v6 = single(Match(sourceIps: try prefixes("2001:db8::/32")))
        #expect(Authorizer.matches(v6, try connection(from: "2001:db8:1::5")))
        #expect(!Authorizer.matches(v6, try connection(from: "2001:db9::5")))
        #expect(!Authorizer.matches(v6, try connection(from: "10.0.0.1")))
        let not = single(Match(notSourceIps: try prefixes("192.168.0.0/16", "2001:db8::/32")))
        #expect(!Authorizer.matches(not, try connection(from: "192.168.1.1")))
        #expect(!Authorizer.matches(not, try connection(from: "2001:db8::1")))
        #expect(Authorizer.matches(not, try connection(from: "10.0.0.1")))
        // A host address is a /32.
        #expect(Authorizer.matches(single(Match(sourceIps: try prefixes("10.0.0.1"))), try connection(from: "10.0.0.1")))
        #expect(!Authorizer.matches(single(Match(sourceIps: try prefixes("10.0.0.1"))), try connection(from: "10.0.0.2")))
    }

    @Test func ipv4MappedAddressesMatchAsIPv4() throws {
        let deny = single(Match(sourceIps: try prefixes("192.168.0.0/16")), .deny)
        #expect(!Authorizer.decide([deny], for: try connection(from: "::ffff:192.168.1.1")).isAllowed)
        let toV4 = single(Match(destinationIps: try prefixes("10.0.0.0/8")))
        #expect(Authorizer.matches(toV4, try connection(to: "::ffff:10.1.2.3")))
        #expect(!Authorizer.matches(single(Match(sourceIps: try prefixes("::ffff:0:0/96"))), try connection(from: "::ffff:10.1.2.3")))
    }

    @Test func destinationIps() throws {
        let v4 = single(Match(destinationIps: try prefixes("10.10.0.0/16")))
        #expect(Authorizer.matches(v4, try connection(to: "10.10.2.9")))
        #expect(!Authorizer.matches(v4, try connection(to: "10.11.2.9")))
        let v6 = single(Match(destinationIps: try prefixes("fd00:10::/64")))
        #expect(Authorizer.matches(v6, try connection(to: "fd00:10::9")))
        #expect(!Authorizer.matches(v6, try connection(to: "fd00:11::9")))
        let not = single(Match(notDestinationIps: try prefixes("10.10.0.0/16", "fd00:10::/64")))
        #expect(!Authorizer.matches(not, try connection(to: "10.10.2.9")))
        #expect(!Authorizer.matches(not, try connection(to: "fd00:10::9")))
        #expect(Authorizer.matches(not, try connection(to: "10.11.2.9")))
        // Source and destination are not confused.
        #expect(!Authorizer.matches(v4, try connection(from: "10.10.2.9", to: "10.0.0.2")))
    }

    @Test func destinationPorts() throws {
        let ports = single(Match(destinationPorts: [80, 9090]))
        #expect(Authorizer.matches(ports, try connection(port: 80)))
        #expect(Authorizer.matches(ports, try connection(port: 9090)))
        #expect(!Authorizer.matches(ports, try connection(port: 8080)))
        let not = single(Match(notDestinationPorts: [22]))
        #expect(!Authorizer.matches(not, try connection(port: 22)))
        #expect(Authorizer.matches(not, try connection(port: 23)))
    }

    // MARK: - Failing closed on L7-only DENY policies (istio#61126)

    @Test func l7OnlyDenyDeniesEverything() throws {
        let l7Only = policy("no-delete", .deny, [[[Match()]], [[Match(), Match()], [Match()]]])
        #expect(Authorizer.failsClosed(l7Only))
        #expect(!Authorizer.matches(l7Only, try connection()))  // `matches` stays upstream's
        let reason = "denied by shop/no-delete: its rules are L7-only, which ztunnel cannot enforce; failing closed"
        for conn in [try connection(), try connection(nil, from: "fd00::1", to: "fd00::2", port: 1)] {
            #expect(Authorizer.decide([l7Only], for: conn) == .deny(reason: reason, policy: "shop/no-delete", dryRunLogs: []))
            // An ALLOW policy that would admit it does not help.
            #expect(!Authorizer.decide([l7Only, policy("all", .allow, Self.allowAll)], for: conn).isAllowed)
        }
    }

    @Test func l7OnlyPartsOfADenyRuleFailClosedToo() throws {
        // One rule wholly L7 (emptied) beside an L4 one: the emptied rule denies everything.
        let mixed = policy("mixed", .deny, [[[Match()]], [[Match(destinationPorts: [22])]]])
        #expect(!Authorizer.failsClosed(mixed))
        #expect(!Authorizer.decide([mixed], for: try connection(port: 8080)).isAllowed)
        guard case .deny(let reason, _, _) = Authorizer.decide([mixed], for: try connection(port: 22)) else {
            Issue.record("port 22 allowed"); return
        }
        #expect(reason.hasPrefix("explicitly denied"))
        // "Deny principal frontend for GET": the L4 clause stays, the emptied L7 clause counts as
        // matching, so frontend is denied altogether and others are not (upstream denied nobody).
        let partly = policy("no-frontend-get", .deny,
                            [[[Match(principals: [.exact("cluster.local/ns/shop/sa/frontend")])], [Match()]]])
        #expect(!Authorizer.decide([partly], for: try connection("spiffe://cluster.local/ns/shop/sa/frontend")).isAllowed)
        #expect(Authorizer.decide([partly], for: try connection("spiffe://cluster.local/ns/shop/sa/other")).isAllowed)
        // Groups with no matches at all (no clauses, or empty clauses) are not L7-only either.
        #expect(!Authorizer.failsClosed(policy("p", .deny, [[[]]])))
        #expect(!Authorizer.failsClosed(policy("p", .deny, [[]])))
    }

    @Test func l7OnlyShapeAsAllowDoesNotAllow() throws {
        let l7OnlyAllow = policy("get-only", .allow, [[[Match()]]])
        #expect(!Authorizer.failsClosed(l7OnlyAllow))
        #expect(Authorizer.decide([l7OnlyAllow], for: try connection())
            == .deny(reason: "allow policies exist, but none allowed", policy: nil, dryRunLogs: []))
    }

    @Test func l7OnlyDryRunDenyIsOnlyLogged() throws {
        let dryRun = policy("no-delete", .deny, dryRun: true, [[[Match()]]])
        #expect(Authorizer.failsClosed(dryRun))
        let log = "dry-run policy shop/no-delete would deny (denied by shop/no-delete: its rules are L7-only, which ztunnel cannot enforce; failing closed)"
        #expect(Authorizer.decide([dryRun], for: try connection()) == .allow(dryRunLogs: [log]))
    }

    // MARK: - The example of ISTIO_COMPAT §19

    @Test func compatExample() throws {
        let cartOnlyFrontend = Policy(name: "cart-only-frontend", namespace: "shop", scope: .workloadSelector, action: .allow,
                                      groups: [[[Match(principals: [.exact("cluster.local/ns/shop/sa/frontend")])], [Match(destinationPorts: [9090])]]])
        let noLegacyNet = Policy(name: "no-legacy-net", namespace: "shop", scope: .namespace, action: .deny,
                                 groups: [[[Match(sourceIps: try prefixes("192.168.0.0/16"))]]])
        var model = MeshModel()
        model.insert(cartOnlyFrontend)
        model.insert(noLegacyNet)
        let cart = Workload(uid: "demo//Pod/shop/cart-5c2a", namespace: "shop", authorizationPolicies: ["shop/cart-only-frontend"])
        let applied = model.policies(for: cart)
        #expect(applied.unknown.isEmpty)
        let cartIP = "10.10.2.9", frontendIP = "10.10.1.5"

        #expect(Authorizer.decide(applied.policies, for: try connection(from: frontendIP, to: cartIP, port: 9090)) == .allow(dryRunLogs: []))
        #expect(Authorizer.decide(applied.policies, for: try connection(from: frontendIP, to: cartIP, port: 8080))
            == .deny(reason: "allow policies exist, but none allowed", policy: nil, dryRunLogs: []))
        #expect(Authorizer.decide(applied.policies, for: try connection("spiffe://cluster.local/ns/shop/sa/cart", from: frontendIP, to: cartIP, port: 9090))
            == .deny(reason: "allow policies exist, but none allowed", policy: nil, dryRunLogs: []))
        #expect(Authorizer.decide(applied.policies, for: try connection(from: "192.168.1.1", to: cartIP, port: 9090))
            == .deny(reason: "explicitly denied by: shop/no-legacy-net", policy: "shop/no-legacy-net", dryRunLogs: []))
    }
}
