import Testing
@testable import Mesh

/// Outbound routing (ISTIO_COMPAT §9) on a small model: services by VIP to endpoints, workloads
/// directly, HBONE flagged, unknown destinations passed through, and every refusal named.
@Suite struct RouterTests {
    static func ip(_ text: String) -> IPAddress { IPAddress(text) ?? IPAddress(bytes: [0, 0, 0, 0])! }  // literals below are valid
    static let vip = NetworkAddress(network: "", ip: ip("10.96.0.1"))

    static func model(status: Workload.Status = .healthy, tunnel: Workload.TunnelProtocol = .none, visibility: Service.Visibility = .public,
                      waypoint: Bool = false) -> MeshModel {
        var model = MeshModel()
        var service = Service(name: "echo", namespace: "shop", hostname: "echo.shop.svc.cluster.local")
        service.vips = [vip]
        service.ports = [80: 8080]
        service.visibility = visibility
        service.subjectAltNames = ["spiffe://cluster.local/ns/shop/sa/echo-san"]
        if waypoint { service.waypoint = GatewayAddress(destination: .address(network: "", ip: ip("10.0.0.99"))) }
        model.insert(service)
        for (index, capacity) in [(1, 1), (2, 3)] as [(Int, UInt32)] {
            var workload = Workload(uid: "echo-\(index)", namespace: "shop")
            workload.addresses = [ip("10.1.0.\(index)"), ip("fd00::\(index)")]
            workload.services = ["shop/echo.shop.svc.cluster.local": [80: 9000 + UInt16(index)]]
            workload.status = status
            workload.tunnelProtocol = tunnel
            workload.trustDomain = "cluster.local"
            workload.serviceAccount = "echo"
            workload.capacity = capacity
            model.insert(workload)
        }
        return model
    }

    func route(_ model: MeshModel, _ address: NetworkAddress = RouterTests.vip, port: UInt16 = 80, namespace: String? = nil,
               pick: Int = 0) -> Router.Route {
        Router.route(model, to: address, port: port, clientNamespace: namespace) { _ in pick }
    }

    @Test func aServiceVIPGoesToAnEndpointOnItsTargetPort() {
        #expect(route(Self.model(), pick: 0) == .direct(workloadUid: "echo-1", ip: Self.ip("10.1.0.1"), port: 9001))
        #expect(route(Self.model(), pick: 1) == .direct(workloadUid: "echo-2", ip: Self.ip("10.1.0.2"), port: 9002))
        // The endpoint address follows the VIP's family.
        var model = Self.model()
        var service = model.services["shop/echo.shop.svc.cluster.local"]!  // inserted above
        service.vips = [NetworkAddress(network: "", ip: Self.ip("fd00:96::1"))]
        model.insert(service)
        #expect(route(model, NetworkAddress(network: "", ip: Self.ip("fd00:96::1"))) == .direct(workloadUid: "echo-1", ip: Self.ip("fd00::1"), port: 9001))
    }

    @Test func weightsAreCapacities() {
        var seen: [UInt32] = []
        _ = Router.route(Self.model(), to: Self.vip, port: 80, clientNamespace: nil) { weights in seen = weights; return 0 }
        #expect(seen == [1, 3])
        var counts = [0, 0]
        for _ in 0..<4000 { counts[Router.weightedRandom([1, 3])] += 1 }
        #expect(counts[1] > counts[0] * 2)  // 3:1 in expectation; far from 1:1
    }

    @Test func refusalsAreNamed() {
        #expect(route(Self.model(status: .unhealthy)) == .refused("no healthy upstream for shop/echo.shop.svc.cluster.local:80"))
        #expect(route(Self.model(), port: 81) == .refused("service shop/echo.shop.svc.cluster.local has no port 81"))
        // A waypoint that is neither a workload nor a service is named, not guessed.
        #expect(route(Self.model(waypoint: true)) == .refused("waypoint /10.0.0.99: neither a known workload nor a service"))
    }

    /// §9 steps 2 and 5: a service's waypoint gets its traffic for the original VIP:port, a
    /// workload's waypoint only when the workload is addressed directly, and never the
    /// waypoint's own traffic.
    @Test func waypointsGetTheTrafficForTheOriginalDestination() {
        var model = Self.model(tunnel: .hbone, waypoint: true)
        var waypoint = Workload(uid: "waypoint-1", namespace: "shop")
        waypoint.addresses = [Self.ip("10.0.0.99")]
        waypoint.tunnelProtocol = .hbone
        waypoint.trustDomain = "cluster.local"
        waypoint.serviceAccount = "waypoint"
        model.insert(waypoint)
        let expected = Router.Route.waypoint(waypointUid: "waypoint-1", ip: Self.ip("10.0.0.99"), hbonePort: 15008,
                                             target: Self.ip("10.96.0.1"), port: 80,
                                             identities: ["spiffe://cluster.local/ns/shop/sa/waypoint"])
        #expect(route(model) == expected)
        // The waypoint's own traffic to the service goes to an endpoint.
        #expect(Router.route(model, to: Self.vip, port: 80, clientNamespace: nil, sourceUid: "waypoint-1") { _ in 0 }
                == .hbone(workloadUid: "echo-1", ip: Self.ip("10.1.0.1"), port: 9001,
                          identities: ["spiffe://cluster.local/ns/shop/sa/echo-san", "spiffe://cluster.local/ns/shop/sa/echo"]))
        // A workload's waypoint applies when it is addressed directly, not as an endpoint.
        var workload = model.workloads["echo-1"]!  // inserted by model()
        workload.waypoint = GatewayAddress(destination: .address(network: "", ip: Self.ip("10.0.0.99")), hboneMtlsPort: 15009)
        model.insert(workload)
        #expect(route(model, NetworkAddress(network: "", ip: Self.ip("10.1.0.1")), port: 7000) == .waypoint(
            waypointUid: "waypoint-1", ip: Self.ip("10.0.0.99"), hbonePort: 15009, target: Self.ip("10.1.0.1"), port: 7000,
            identities: ["spiffe://cluster.local/ns/shop/sa/waypoint"]))
        // A waypoint that does not speak HBONE is refused.
        waypoint.tunnelProtocol = .none
        model.insert(waypoint)
        #expect(route(model) == .refused("waypoint /10.0.0.99: waypoint-1 does not speak HBONE"))
    }

    @Test func hboneEndpointsCarryTheExpectedIdentities() {
        #expect(route(Self.model(tunnel: .hbone)) == .hbone(
            workloadUid: "echo-1", ip: Self.ip("10.1.0.1"), port: 9001,
            identities: ["spiffe://cluster.local/ns/shop/sa/echo-san", "spiffe://cluster.local/ns/shop/sa/echo"]))
    }

    @Test func workloadsDirectlyAndUnknownsPassThrough() {
        let model = Self.model()
        #expect(route(model, NetworkAddress(network: "", ip: Self.ip("10.1.0.2")), port: 7000) == .direct(workloadUid: "echo-2", ip: Self.ip("10.1.0.2"), port: 7000))
        #expect(route(model, NetworkAddress(network: "", ip: Self.ip("8.8.8.8"))) == .passthrough)
    }

    @Test func namespaceVisibleServicesOnlyForTheirNamespace() {
        let model = Self.model(visibility: .namespace)
        #expect(route(model, namespace: "other") == .passthrough)
        #expect(route(model, namespace: nil) == .passthrough)
        if case .direct = route(model, namespace: "shop") {} else { Issue.record("same-namespace client not routed") }
    }

    /// §10 step 4: a hostname CONNECT reaches the workload on the port its endpoint map gives for
    /// the service, else the service's target port; an unknown hostname or port is refused.
    @Test func hostnameAuthoritiesResolveThePort() {
        let model = Self.model()
        let workload = model.workloads["echo-1"]!  // inserted by model()
        let host = "echo.shop.svc.cluster.local"
        #expect(Router.inboundPort(model, workload: workload, hostname: host, port: 80, clientNamespace: nil) == .success(9001))
        var bare = workload
        bare.services = [:]
        #expect(Router.inboundPort(model, workload: bare, hostname: host, port: 80, clientNamespace: nil) == .success(8080))
        #expect(Router.inboundPort(model, workload: workload, hostname: "nope.svc", port: 80, clientNamespace: nil)
                == .failure(.init("no service has hostname nope.svc")))
        #expect(Router.inboundPort(model, workload: bare, hostname: host, port: 81, clientNamespace: nil)
                == .failure(.init("service shop/echo.shop.svc.cluster.local has no target port for 81 on echo-1")))
    }
    /// §9 load balancing: STRICT keeps only endpoints that share every preference with the
    /// source; FAILOVER keeps the highest rank (leading preferences shared, stopping at the first
    /// that is not); NETWORK first counts `count - 1` and does not stop the count.
    @Test func routingPreferencesRankEndpointsAgainstTheSource() {
        var model = Self.model()
        var service = model.services["shop/echo.shop.svc.cluster.local"]!  // inserted by model()
        for (uid, region, zone) in [("echo-1", "eu", "eu-a"), ("echo-2", "eu", "eu-b")] {
            var workload = model.workloads[uid]!  // inserted by model()
            workload.locality = Locality(region: region, zone: zone)
            model.insert(workload)
        }
        var source = Workload(uid: "client", namespace: "shop")
        source.locality = Locality(region: "eu", zone: "eu-b")
        func candidates(_ mode: Service.LoadBalancer.Mode, _ preferences: [Service.LoadBalancer.Scope], from: Workload? = nil) -> [String] {
            service.loadBalancer = Service.LoadBalancer(routingPreferences: preferences, mode: mode)
            model.insert(service)
            var offered = 0
            let route = Router.route(model, to: Self.vip, port: 80, clientNamespace: "shop", source: from ?? source) { weights in
                offered = weights.count
                return 0
            }
            guard case .direct(let uid, _, _) = route else { return [] }
            return offered == 1 ? [uid] : ["\(offered) offered"]
        }
        // FAILOVER: the endpoint in the source's zone wins; when none shares the zone, both share the region.
        #expect(candidates(.failover, [.region, .zone]) == ["echo-2"])
        var elsewhere = source
        elsewhere.locality = Locality(region: "eu", zone: "eu-c")
        #expect(candidates(.failover, [.region, .zone], from: elsewhere) == ["2 offered"])
        // STRICT: no endpoint in zone eu-c, so the connection is refused rather than sent away.
        #expect(candidates(.strict, [.region, .zone]) == ["echo-2"])
        service.loadBalancer = Service.LoadBalancer(routingPreferences: [.region, .zone], mode: .strict)
        model.insert(service)
        #expect(Router.route(model, to: Self.vip, port: 80, clientNamespace: "shop", source: elsewhere) { _ in 0 }
                == .refused("no endpoint of shop/echo.shop.svc.cluster.local:80 matches its strict routing preferences for the source client"))
        // STANDARD ignores the preferences.
        #expect(candidates(.standard, [.region, .zone]) == ["2 offered"])
        // The count stops at the first preference not shared: the zone does not count without the region.
        var other = source
        other.locality = Locality(region: "us", zone: "eu-b")
        #expect(candidates(.failover, [.region, .zone], from: other) == ["2 offered"])
        // NETWORK first: not shared by anyone here (the source is on "remote"), the count goes on to ZONE.
        var remote = source
        remote.network = "remote"
        #expect(candidates(.failover, [.network, .zone], from: remote) == ["echo-2"])
    }

    /// Network "west"'s east-west gateway, at 192.0.2.10.
    static func eastWestGateway() -> Workload {
        var gateway = Workload(uid: "ew-gateway", namespace: "istio-system")
        gateway.addresses = [ip("192.0.2.10")]
        gateway.network = "west"
        gateway.tunnelProtocol = .hbone
        gateway.trustDomain = "cluster.local"
        gateway.serviceAccount = "istio-eastwestgateway"
        return gateway
    }

    /// §9 step 4: an endpoint on another network is reached through its network gateway with
    /// the service's hostname as authority and the service's SANs for the inner TLS; without a
    /// gateway it is no candidate, and without SANs it is refused.
    @Test func endpointsOnAnotherNetworkGoThroughTheirGateway() {
        var model = Self.model(tunnel: .hbone)
        for uid in ["echo-1", "echo-2"] {
            var workload = model.workloads[uid]!  // inserted by model()
            workload.network = "west"
            model.insert(workload)
        }
        #expect(route(model) == .refused("no healthy upstream for shop/echo.shop.svc.cluster.local:80"))
        model.insert(Self.eastWestGateway())
        var remote = model.workloads["echo-2"]!  // inserted by model()
        remote.networkGateway = GatewayAddress(destination: .address(network: "west", ip: Self.ip("192.0.2.10")), hboneMtlsPort: 15009)
        model.insert(remote)
        #expect(route(model) == .doubleHBONE(
            workloadUid: "echo-2", gatewayUid: "ew-gateway", ip: Self.ip("192.0.2.10"), hbonePort: 15009,
            gatewayIdentities: ["spiffe://cluster.local/ns/istio-system/sa/istio-eastwestgateway"],
            authority: "echo.shop.svc.cluster.local:80", identities: ["spiffe://cluster.local/ns/shop/sa/echo-san"]))
        // A local endpoint and a remote one are both candidates.
        var local = model.workloads["echo-1"]!  // inserted by model()
        local.network = ""
        model.insert(local)
        #expect(route(model, pick: 0) == .hbone(workloadUid: "echo-1", ip: Self.ip("10.1.0.1"), port: 9001,
                                                identities: ["spiffe://cluster.local/ns/shop/sa/echo-san", "spiffe://cluster.local/ns/shop/sa/echo"]))
        // Without the service's SANs the remote endpoint's inner TLS could not be verified.
        var service = model.services["shop/echo.shop.svc.cluster.local"]!  // inserted by model()
        service.subjectAltNames = []
        model.insert(service)
        #expect(route(model, pick: 1) == .refused(
            "shop/echo.shop.svc.cluster.local has no subject alt names, so its endpoint echo-2 on network \"west\" cannot be verified through a gateway"))
        // A workload addressed directly is looked up on our network only: the remote one is unknown here.
        #expect(route(model, NetworkAddress(network: "", ip: Self.ip("10.1.0.2")), port: 7000) == .passthrough)
    }
    /// §9 step 2: a service's waypoint on another network is reached through that network's
    /// gateway (double HBONE naming the service's hostname, the inner TLS expecting the
    /// waypoint's identities), also when it is known by no address; a workload's waypoint there,
    /// or one without a gateway, is refused with the reason.
    @Test func aServicesWaypointOnAnotherNetworkIsReachedThroughItsGateway() {
        var model = Self.model(tunnel: .hbone)
        var waypointService = Service(name: "waypoint", namespace: "shop", hostname: "waypoint.shop.svc.cluster.local")
        waypointService.subjectAltNames = ["spiffe://cluster.local/ns/shop/sa/waypoint-san"]
        model.insert(waypointService)
        var waypoint = Workload(uid: "west-waypoint", namespace: "shop")
        waypoint.network = "west"
        waypoint.services = ["shop/waypoint.shop.svc.cluster.local": [15008: 15008]]
        waypoint.tunnelProtocol = .hbone
        waypoint.trustDomain = "cluster.local"
        waypoint.serviceAccount = "waypoint"
        model.insert(waypoint)
        var service = model.services["shop/echo.shop.svc.cluster.local"]!  // inserted by model()
        service.waypoint = GatewayAddress(destination: .hostname(namespace: "shop", hostname: "waypoint.shop.svc.cluster.local"))
        model.insert(service)
        // No address and no gateway: no candidate.
        #expect(route(model) == .refused("waypoint shop/waypoint.shop.svc.cluster.local: service shop/waypoint.shop.svc.cluster.local has no healthy endpoint"))
        model.insert(Self.eastWestGateway())
        waypoint.networkGateway = GatewayAddress(destination: .address(network: "west", ip: Self.ip("192.0.2.10")), hboneMtlsPort: 15009)
        model.insert(waypoint)
        let expected = Router.Route.doubleHBONE(
            workloadUid: "west-waypoint", gatewayUid: "ew-gateway", ip: Self.ip("192.0.2.10"), hbonePort: 15009,
            gatewayIdentities: ["spiffe://cluster.local/ns/istio-system/sa/istio-eastwestgateway"],
            authority: "echo.shop.svc.cluster.local:80",
            identities: ["spiffe://cluster.local/ns/shop/sa/waypoint-san", "spiffe://cluster.local/ns/shop/sa/waypoint"], viaWaypoint: true)
        #expect(route(model) == expected)
        // With an address on its network it is still reached through the gateway.
        waypoint.addresses = [Self.ip("10.2.0.9")]
        model.insert(waypoint)
        #expect(route(model) == expected)
        // Named by address on its network: the same, without the waypoint service's SANs.
        service.waypoint = GatewayAddress(destination: .address(network: "west", ip: Self.ip("10.2.0.9")))
        model.insert(service)
        #expect(route(model) == .doubleHBONE(
            workloadUid: "west-waypoint", gatewayUid: "ew-gateway", ip: Self.ip("192.0.2.10"), hbonePort: 15009,
            gatewayIdentities: ["spiffe://cluster.local/ns/istio-system/sa/istio-eastwestgateway"],
            authority: "echo.shop.svc.cluster.local:80", identities: ["spiffe://cluster.local/ns/shop/sa/waypoint"], viaWaypoint: true))
        // A workload's waypoint on another network: refused, not sent to its address.
        var workload = model.workloads["echo-1"]!  // inserted by model()
        workload.waypoint = service.waypoint
        model.insert(workload)
        #expect(route(model, NetworkAddress(network: "", ip: Self.ip("10.1.0.1")), port: 7000) == .refused(
            "waypoint west-waypoint is on network \"west\"; only a service's waypoint is reached through a network gateway"))
        // Without a gateway: refused.
        waypoint.networkGateway = nil
        model.insert(waypoint)
        #expect(route(model) == .refused("waypoint west-waypoint is on network \"west\" with no network gateway"))
    }

    /// §10 step 3, the sandwich: a workload is the waypoint of a service or workload whose
    /// waypoint names its address, a service it is an endpoint of (by VIP or hostname); not of
    /// anything else.
    @Test func aWaypointKnowsWhatItIsTheWaypointOf() {
        var model = Self.model(tunnel: .hbone)
        var waypointService = Service(name: "waypoint", namespace: "shop", hostname: "waypoint.shop.svc.cluster.local")
        waypointService.vips = [NetworkAddress(network: "", ip: Self.ip("10.96.0.99"))]
        model.insert(waypointService)
        var waypoint = Workload(uid: "waypoint-1", namespace: "shop")
        waypoint.addresses = [Self.ip("10.0.0.99")]
        waypoint.services = ["shop/waypoint.shop.svc.cluster.local": [15008: 15008]]
        model.insert(waypoint)
        var service = model.services["shop/echo.shop.svc.cluster.local"]!  // inserted by model()
        for (gateway, expected) in [(GatewayAddress.Destination.address(network: "", ip: Self.ip("10.0.0.99")), true),
                                    (.address(network: "", ip: Self.ip("10.96.0.99")), true),
                                    (.hostname(namespace: "shop", hostname: "waypoint.shop.svc.cluster.local"), true),
                                    (.address(network: "", ip: Self.ip("10.0.0.98")), false),
                                    (.address(network: "other", ip: Self.ip("10.0.0.99")), false),
                                    (.hostname(namespace: "shop", hostname: "other.shop.svc.cluster.local"), false)] {
            service.waypoint = GatewayAddress(destination: gateway)
            model.insert(service)
            #expect(Router.isWaypoint(waypoint, of: Self.vip, model: model) == expected, "\(gateway)")
        }
        // A workload's own waypoint counts too; a workload without one does not.
        let target = NetworkAddress(network: "", ip: Self.ip("10.1.0.1"))
        #expect(!Router.isWaypoint(waypoint, of: target, model: model))
        var workload = model.workloads["echo-1"]!  // inserted by model()
        workload.waypoint = GatewayAddress(destination: .address(network: "", ip: Self.ip("10.0.0.99")))
        model.insert(workload)
        #expect(Router.isWaypoint(waypoint, of: target, model: model))
    }
    /// §9 step 6: an endpoint with a hostname and no address is handed back to be resolved
    /// (with the port and identities it would get), and one with neither is no candidate.
    @Test func anEndpointKnownByHostnameIsResolvedByTheCaller() {
        var model = Self.model(tunnel: .hbone)
        for uid in ["echo-1", "echo-2"] {
            var workload = model.workloads[uid]!  // inserted by model()
            workload.addresses = []
            model.insert(workload)
        }
        #expect(route(model) == .refused("no healthy upstream for shop/echo.shop.svc.cluster.local:80"))
        var named = model.workloads["echo-2"]!  // inserted by model()
        named.hostname = "echo.example.com"
        model.insert(named)
        #expect(route(model) == .resolveHostname(workloadUid: "echo-2", hostname: "echo.example.com", port: 9002,
                                                 identities: ["spiffe://cluster.local/ns/shop/sa/echo-san", "spiffe://cluster.local/ns/shop/sa/echo"]))
    }
    /// §9 step 2: with no exact VIP, a CIDR VIP containing the address names the service: the
    /// client's namespace first, then the longest prefix, then a canonical one. An exact VIP wins.
    @Test func cidrVIPsMatchByLongestPrefix() {
        var model = Self.model()
        func block(_ text: String) -> NetworkPrefix { NetworkPrefix(network: "", prefix: IPPrefix(text)!) }  // literals are valid
        var wide = Service(name: "wide", namespace: "other", hostname: "wide.other.svc.cluster.local")
        wide.cidrVips = [block("10.200.0.0/16")]
        wide.ports = [80: 8080]
        var narrow = Service(name: "narrow", namespace: "other", hostname: "narrow.other.svc.cluster.local")
        narrow.cidrVips = [block("10.200.1.0/24")]
        narrow.ports = [80: 8080]
        model.insert(wide)
        model.insert(narrow)
        let inside = NetworkAddress(network: "", ip: Self.ip("10.200.1.7"))
        #expect(Router.service(model, at: inside, clientNamespace: "shop")?.name == "narrow")
        #expect(Router.service(model, at: NetworkAddress(network: "", ip: Self.ip("10.200.2.7")), clientNamespace: "shop")?.name == "wide")
        #expect(Router.service(model, at: NetworkAddress(network: "", ip: Self.ip("10.201.0.1")), clientNamespace: "shop") == nil)
        #expect(Router.service(model, at: NetworkAddress(network: "west", ip: Self.ip("10.200.1.7")), clientNamespace: "shop") == nil)
        // The client's namespace before a longer prefix.
        wide.namespace = "shop"
        model.insert(wide)
        #expect(Router.service(model, at: inside, clientNamespace: "shop")?.name == "wide")
        // An exact VIP before any block.
        var exact = model.services["shop/echo.shop.svc.cluster.local"]!  // inserted by model()
        exact.vips = [inside]
        model.insert(exact)
        #expect(Router.service(model, at: inside, clientNamespace: "shop")?.name == "echo")
        // Removing a service removes its blocks.
        model.removeService(key: "other/wide.other.svc.cluster.local")
        model.removeService(key: wide.key)
        #expect(model.services(inCIDRsContaining: NetworkAddress(network: "", ip: Self.ip("10.200.2.7"))).isEmpty)
    }
}
