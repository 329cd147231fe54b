import Testing
@testable import Mesh

/// Behaviours a hostile review asked for: each test failed (or could not be written) before the
/// fix it names.
@Suite struct ReviewFindingsTests {
    static func ip(_ text: String) -> IPAddress { IPAddress(text) ?? IPAddress(bytes: [0, 0, 0, 0])! }  // valid literals

    /// §12.1: the policies a workload lists apply whatever their scope.
    @Test func listedPoliciesApplyWhateverTheirScope() {
        var model = MeshModel()
        model.insert(Policy(name: "deny-x", namespace: "other", scope: .namespace, action: .deny,
                            groups: [[[Match(destinationPorts: [22])]]]))
        let workload = Workload(uid: "w", namespace: "shop", authorizationPolicies: ["other/deny-x", "other/deny-x"])
        let applied = model.policies(for: workload)
        #expect(applied.policies.map(\.key) == ["other/deny-x"])
        let connection = Authorizer.Connection(sourceIdentity: nil, sourceIP: Self.ip("10.0.0.1"), destinationIP: Self.ip("10.0.0.2"),
                                               destinationPort: 22)
        #expect(!Authorizer.decide(applied.policies, for: connection).isAllowed)
    }

    /// istiod emits one match per `to` operation: `to: [{ports: [9000]}, {paths: [/admin]}]`
    /// arrives as one clause [ports 9000, (emptied)]; failing closed denies every port.
    @Test func anEmptiedMatchBesideAnotherFailsClosed() {
        let policy = Policy(name: "no-admin", namespace: "shop", scope: .namespace, action: .deny,
                            groups: [[[Match(destinationPorts: [9000]), Match()]]])
        for port: UInt16 in [9000, 8080] {
            let connection = Authorizer.Connection(sourceIdentity: nil, sourceIP: Self.ip("10.0.0.1"),
                                                   destinationIP: Self.ip("10.0.0.2"), destinationPort: port)
            #expect(!Authorizer.decide([policy], for: connection).isAllowed, "port \(port)")
        }
    }

    @Test func aPolicyNamedButMissingFromTheFileIsAnError() {
        let text = """
        workloads:
        - uid: a
          namespace: shop
          workloadIps: ["10.0.0.5"]
          authorizationPolicies: ["istio-system/istio_converted_static_strik"]
        """
        #expect(throws: LocalConfig.ParseError.self) { try LocalConfig.parse(text) }
    }

    @Test func mappedAddressesFindTheirWorkload() {
        var model = MeshModel()
        var workload = Workload(uid: "w", namespace: "shop")
        workload.addresses = [Self.ip("::ffff:10.0.0.5")]
        model.insert(workload)
        #expect(model.workload(at: NetworkAddress(network: "", ip: Self.ip("10.0.0.5")))?.uid == "w")
        #expect(model.workload(at: NetworkAddress(network: "", ip: Self.ip("::ffff:10.0.0.5")))?.uid == "w")
        #expect(Self.ip("::ffff:10.0.0.5").unmapped == Self.ip("10.0.0.5"))
        #expect(Self.ip("fd00::5").unmapped == Self.ip("fd00::5"))
    }
}
