import Testing
@testable import Mesh

/// The model's hostname index (the pods' DNS proxy looks services up by name): one key per
/// namespace that has the hostname, kept in step with inserts, replacements and removals.
@Suite struct MeshModelIndexTests {
    @Test func servicesAreFoundByHostnameUntilRemoved() {
        var model = MeshModel()
        model.insert(Service(name: "echo", namespace: "shop", hostname: "echo.example"))
        model.insert(Service(name: "echo", namespace: "web", hostname: "echo.example"))
        model.insert(Service(name: "echo", namespace: "shop", hostname: "echo.example"))  // a replacement
        #expect(model.servicesByHostname["echo.example"]?.sorted() == ["shop/echo.example", "web/echo.example"])
        model.removeService(key: "shop/echo.example")
        #expect(model.servicesByHostname["echo.example"] == ["web/echo.example"])
        model.removeService(key: "web/echo.example")
        #expect(model.servicesByHostname["echo.example"] == nil)
    }

    /// The policies a workload's inbound connections are checked against (§12.1) come from the
    /// scope index: after random inserts, replacements that change a policy's scope or
    /// namespace, and removals, they are exactly what a scan of every policy selects, and a
    /// model built afresh from the survivors is equal.
    @Test func policiesForAWorkloadAreWhatAScanSelects() {
        var model = MeshModel()
        var state: UInt64 = 7
        func next(_ bound: Int) -> Int {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int((state >> 33) % UInt64(bound))
        }
        let scopes: [Policy.Scope] = [.global, .namespace, .workloadSelector]
        var workload = Workload(uid: "w", namespace: "ns1")
        for step in 0..<2000 {
            let name = "p\(next(40))", namespace = "ns\(next(3))"
            if next(4) == 0 {
                model.removePolicy(key: "\(namespace)/\(name)")
            } else {
                model.insert(Policy(name: name, namespace: namespace, scope: scopes[next(3)], action: .allow, groups: []))
            }
            workload.namespace = "ns\(next(3))"
            workload.authorizationPolicies = ["ns1/p\(next(40))"]
            let scanned = model.policies.map(\.value).filter { policy in
                policy.scope == .global || (policy.scope == .namespace && policy.namespace == workload.namespace)
                    || workload.authorizationPolicies.contains(policy.key)
            }.map(\.key).sorted()
            #expect(model.policies(for: workload).policies.map(\.key) == scanned, "step \(step)")
        }
        var rebuilt = MeshModel()
        for (_, policy) in model.policies { rebuilt.insert(policy) }
        #expect(rebuilt == model)
    }
}
