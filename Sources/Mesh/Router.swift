/// Outbound routing (ISTIO_COMPAT §9) on the mesh model: where a connection captured on 15001 (or
/// asked for through SOCKS5) to `destination:port` should go. Pure: the caller does the I/O, and
/// the random choice among endpoints is injected so tests can fix it.
///
/// What it decides: a service VIP (services filtered by visibility, then the client's namespace,
/// `canonical`, then by key) goes to its waypoint, or to one of its healthy endpoints, ranked by
/// the service's routing preferences (STRICT, FAILOVER) against the source workload, then chosen
/// at random by capacity, on the endpoint's target port; an endpoint on another network is
/// reached through its network gateway (double HBONE); a workload address goes to that workload
/// (or its waypoint) on the original port; an endpoint known by hostname only is handed back to
/// be resolved; a CIDR VIP is matched by longest prefix when no exact VIP is; anything else
/// passes through. A service's waypoint on another network is reached through that network's
/// gateway as an endpoint there would be; a workload's waypoint on another network is refused
/// with the reason (a workload addressed directly is on our network, and double HBONE needs a
/// service's hostname for its authority).
public enum Router {
    public enum Route: Equatable, Sendable {
        /// Not the mesh's: plain TCP to the original destination.
        case passthrough
        /// Plain TCP to a workload that does not speak HBONE.
        case direct(workloadUid: String, ip: IPAddress, port: UInt16)
        /// The workload speaks HBONE: TCP to `ip:15008`, CONNECT to `ip:port`, expecting one of
        /// `identities` (the service's SANs, then the workload's).
        case hbone(workloadUid: String, ip: IPAddress, port: UInt16, identities: [String])
        /// The destination has a waypoint (§9 steps 2 and 5): TCP to the waypoint's `ip:hbonePort`,
        /// CONNECT to the original `target:port`, expecting one of `identities` (the waypoint
        /// service's SANs, then the waypoint workload's).
        case waypoint(waypointUid: String, ip: IPAddress, hbonePort: UInt16, target: IPAddress, port: UInt16, identities: [String])
        /// The endpoint, or the service's waypoint (`viaWaypoint`), is on another network (§9 steps
        /// 2 and 4): an outer HBONE tunnel to its network gateway at `ip:hbonePort` (expecting one
        /// of `gatewayIdentities`) carries an inner mTLS connection and CONNECT to `authority`
        /// (`<service hostname>:<service port>`, for both CONNECTs), which must present one of
        /// `identities` (an endpoint: the service's SANs only; a waypoint: its service's SANs,
        /// then its own identity, as for a waypoint on our network).
        case doubleHBONE(workloadUid: String, gatewayUid: String, ip: IPAddress, hbonePort: UInt16, gatewayIdentities: [String],
                         authority: String, identities: [String], viaWaypoint: Bool = false)
        /// The endpoint has a hostname and no address (§9 step 6): resolve `hostname` through
        /// DNS (the original destination's family preferred), then plain TCP or HBONE to it as
        /// the workload speaks, on `port`, expecting one of `identities` for HBONE.
        case resolveHostname(workloadUid: String, hostname: String, port: UInt16, identities: [String])
        /// The mesh knows the destination but there is nowhere to send it (the reason says why).
        case refused(String)
    }

    /// `pick(weights)` returns an index into `weights` (weighted random in production).
    /// `sourceUid`: the client's workload; a waypoint is not used for its own traffic.
    /// `source`: the client's workload, whose locality, node, cluster and network rank a
    /// service's endpoints under STRICT and FAILOVER. `destination.network` is ours.
    public static func route(_ model: MeshModel, to destination: NetworkAddress, port: UInt16, clientNamespace: String?,
                             sourceUid: String? = nil, source: Workload? = nil, pick: ([UInt32]) -> Int) -> Route {
        if let workload = model.workload(at: destination) {
            // Workload-addressed: its own waypoint, unless the client is that waypoint (step 5).
            if let gateway = workload.waypoint {
                let route = toWaypoint(gateway, model: model, target: destination.ip, port: port, network: destination.network,
                                       service: nil, pick: pick)
                if case .waypoint(let uid, _, _, _, _, _) = route, uid == sourceUid {} else { return route }
            }
            return toWorkload(workload, ip: destination.ip, port: port, serviceSANs: [])
        }
        guard let service = service(model, at: destination, clientNamespace: clientNamespace) else { return .passthrough }
        if let gateway = service.waypoint {
            // The service's waypoint gets the connection for the original VIP:port (step 2).
            let route = toWaypoint(gateway, model: model, target: destination.ip, port: port, network: destination.network,
                                   service: service, pick: pick)
            if case .waypoint(let uid, _, _, _, _, _) = route, uid == sourceUid {} else { return route }
        }
        if service.loadBalancer?.mode == .passthrough { return .passthrough }
        return toEndpoint(of: service, model: model, port: port, destination: destination, source: source, pick: pick)
    }

    /// The service a connection to `destination` means (§9 step 2): among those with that exact
    /// VIP and visible to the client, the client's namespace, then a canonical one, then the
    /// first by key; with none, among those with a CIDR VIP containing it, the client's namespace,
    /// then the longest prefix, then a canonical one, then by key.
    public static func service(_ model: MeshModel, at destination: NetworkAddress, clientNamespace: String?) -> Service? {
        func visible(_ service: Service) -> Bool { service.visibility == .public || service.namespace == clientNamespace }
        if let exact = preferred(model.services(at: destination).filter(visible), clientNamespace: clientNamespace) { return exact }
        let matches = model.services(inCIDRsContaining: destination).filter { visible($0.service) }
        return matches.min { a, b in
            let rank = { (match: (service: Service, length: Int)) in
                (match.service.namespace == clientNamespace ? 0 : 1, -match.length, match.service.canonical ? 0 : 1)
            }
            return rank(a) < rank(b)
        }?.service
    }

    /// The client's namespace first, then a canonical service, then the first by key.
    static func preferred(_ services: [Service], clientNamespace: String?) -> Service? {
        services.first { $0.namespace == clientNamespace } ?? services.first { $0.canonical } ?? services.first
    }

    static func toEndpoint(of service: Service, model: MeshModel, port: UInt16, destination: NetworkAddress, source: Workload?,
                           pick: ([UInt32]) -> Int) -> Route {
        guard let servicePort = service.ports[port] else { return .refused("service \(service.key) has no port \(port)") }
        let network = destination.network
        let allowAll = service.loadBalancer?.healthPolicy == .allowAll
        var usable: [(workload: Workload, port: UInt16)] = []
        for endpoint in model.endpoints(of: service.key) where allowAll || endpoint.workload.status == .healthy {
            // The endpoint's own port map first, else the service's target port (0: named port).
            guard let target = endpoint.ports[port] ?? (servicePort != 0 ? servicePort : nil), target != 0 else { continue }
            // On our network it needs an address or a hostname; on another, a network gateway (§9
            // load balancing).
            let workload = endpoint.workload
            if workload.network == network ? workload.addresses.isEmpty && workload.hostname.isEmpty : workload.networkGateway == nil {
                continue
            }
            usable.append((workload, target))
        }
        if let balancer = service.loadBalancer, balancer.mode == .strict || balancer.mode == .failover, !balancer.routingPreferences.isEmpty {
            usable = ranked(usable, by: balancer, source: source, network: network)
            if usable.isEmpty && balancer.mode == .strict {
                return .refused("no endpoint of \(service.key):\(port) matches its strict routing preferences for the source "
                                + (source?.uid ?? "(no workload of this node)"))
            }
        }
        guard !usable.isEmpty else { return .refused("no healthy upstream for \(service.key):\(port)") }
        let index = pick(usable.map { max(1, $0.workload.capacity) })
        let chosen = usable[min(max(0, index), usable.count - 1)]
        if chosen.workload.network != network {
            return toNetworkGateway(of: chosen.workload, service: service, port: port, model: model, family: destination.ip.isIPv4,
                                    pick: pick)
        }
        // An address of the VIP's family when the workload has one (§9 step 6), else its first;
        // a workload with only a hostname is resolved by the caller.
        let addresses = chosen.workload.addresses
        guard !addresses.isEmpty else {
            return .resolveHostname(workloadUid: chosen.workload.uid, hostname: chosen.workload.hostname, port: chosen.port,
                                    identities: service.subjectAltNames + [chosen.workload.identity].compactMap { $0 })
        }
        let ip = addresses.first { $0.isIPv4 == destination.ip.isIPv4 } ?? addresses[0]
        return toWorkload(chosen.workload, ip: ip, port: chosen.port, serviceSANs: service.subjectAltNames)
    }

    /// The endpoints that rank highest under `balancer`'s routing preferences (ISTIO_COMPAT §9
    /// load balancing): each counts the leading preferences it shares with the source, stopping
    /// at the first it does not; NETWORK in first place counts `count - 1` when it matches (so
    /// nothing when it is the only one) and does not stop the count when it does not. STRICT keeps only endpoints that share every
    /// preference. Without a source workload nothing can match: STRICT keeps none, FAILOVER all.
    static func ranked(_ endpoints: [(workload: Workload, port: UInt16)], by balancer: Service.LoadBalancer, source: Workload?,
                       network: String) -> [(workload: Workload, port: UInt16)] {
        let preferences = balancer.routingPreferences
        guard let source else { return balancer.mode == .strict ? [] : endpoints }
        let sourceNetwork = source.network.isEmpty ? network : source.network
        func shares(_ scope: Service.LoadBalancer.Scope, _ workload: Workload) -> Bool {
            let mine = source.locality ?? Locality(), theirs = workload.locality ?? Locality()
            switch scope {
            case .region: return mine.region == theirs.region
            case .zone: return mine.zone == theirs.zone
            case .subzone: return mine.subzone == theirs.subzone
            case .node: return source.node == workload.node
            case .cluster: return source.clusterId == workload.clusterId
            case .network: return sourceNetwork == workload.network
            }
        }
        var best = -1
        var kept: [(rank: Int, endpoint: (workload: Workload, port: UInt16))] = []
        for endpoint in endpoints {
            if balancer.mode == .strict && !preferences.allSatisfy({ shares($0, endpoint.workload) }) { continue }
            var rank = 0
            for (index, scope) in preferences.enumerated() {
                if index == 0 && scope == .network {
                    if shares(scope, endpoint.workload) { rank += preferences.count - 1 }
                    continue
                }
                guard shares(scope, endpoint.workload) else { break }
                rank += 1
            }
            best = max(best, rank)
            kept.append((rank, endpoint))
        }
        return kept.filter { $0.rank == best }.map(\.endpoint)
    }

    /// A service endpoint on another network, through that network's gateway (§9 step 4): the
    /// outer CONNECT and the inner one both name `<service hostname>:<service port>`, and the inner
    /// TLS must present one of the service's SANs (the remote workload's own identity is not
    /// expected), so a service without SANs cannot be reached across networks.
    static func toNetworkGateway(of workload: Workload, service: Service, port: UInt16, model: MeshModel, family isIPv4: Bool,
                                 pick: ([UInt32]) -> Int) -> Route {
        guard let gateway = workload.networkGateway else { return .refused("\(workload.uid) is on network \"\(workload.network)\" with no network gateway") }
        guard !service.subjectAltNames.isEmpty else {
            return .refused("\(service.key) has no subject alt names, so its endpoint \(workload.uid) on network \"\(workload.network)\" cannot be verified through a gateway")
        }
        return throughNetworkGateway(gateway, of: workload, authority: "\(service.hostname):\(port)", identities: service.subjectAltNames,
                                     viaWaypoint: false, model: model, family: isIPv4, pick: pick)
    }

    /// The outer tunnel of double HBONE: to `workload`'s network gateway `gateway`, carrying an
    /// inner CONNECT to `authority` that must present one of `identities`.
    static func throughNetworkGateway(_ gateway: GatewayAddress, of workload: Workload, authority: String, identities: [String],
                                      viaWaypoint: Bool, model: MeshModel, family isIPv4: Bool, pick: ([UInt32]) -> Int) -> Route {
        switch gatewayEndpoint(gateway, model: model, family: isIPv4, pick: pick) {
        case .failure(let refusal):
            return .refused("network gateway \(gateway.text) of \(workload.uid): \(refusal)")
        case .success(let (gatewayWorkload, ip, sans)):
            guard let ip else { return .refused("network gateway \(gateway.text) of \(workload.uid): \(gatewayWorkload.uid) has no address") }
            return .doubleHBONE(workloadUid: workload.uid, gatewayUid: gatewayWorkload.uid, ip: ip, hbonePort: gateway.hboneMtlsPort,
                                gatewayIdentities: sans + [gatewayWorkload.identity].compactMap { $0 },
                                authority: authority, identities: identities, viaWaypoint: viaWaypoint)
        }
    }

    /// The workload a `GatewayAddress` names (a waypoint or a network gateway): a workload at an
    /// address, or a service (by VIP or hostname) whose healthy endpoint is picked. It must speak
    /// HBONE. Returns the workload, the address to dial (of `isIPv4`'s family when it has one)
    /// and the service's SANs when a service named it. An endpoint with no address is a
    /// candidate only off `network` and with a network gateway (a waypoint reached through it);
    /// then no address is returned.
    static func gatewayEndpoint(_ gateway: GatewayAddress, model: MeshModel, family isIPv4: Bool, network: String? = nil,
                                pick: ([UInt32]) -> Int) -> Result<(Workload, IPAddress?, [String]), Refusal> {
        var service: Service?
        switch gateway.destination {
        case .address(let network, let ip):
            let address = NetworkAddress(network: network, ip: ip)
            if let workload = model.workload(at: address) {
                guard workload.tunnelProtocol == .hbone else { return .failure(Refusal("\(workload.uid) does not speak HBONE")) }
                return .success((workload, ip, []))
            }
            service = model.services(at: address).first
        case .hostname(let namespace, let hostname):
            service = model.services["\(namespace)/\(hostname)"]
        }
        guard let service else { return .failure(Refusal("neither a known workload nor a service")) }
        let allowAll = service.loadBalancer?.healthPolicy == .allowAll
        let usable = model.endpoints(of: service.key).map(\.workload).filter {
            (allowAll || $0.status == .healthy)
                && (!$0.addresses.isEmpty || (network != nil && $0.network != network && $0.networkGateway != nil))
        }
        guard !usable.isEmpty else { return .failure(Refusal("service \(service.key) has no healthy endpoint")) }
        let chosen = usable[min(max(0, pick(usable.map { max(1, $0.capacity) })), usable.count - 1)]
        guard chosen.tunnelProtocol == .hbone else { return .failure(Refusal("\(chosen.uid) does not speak HBONE")) }
        let ip = chosen.addresses.first { $0.isIPv4 == isIPv4 } ?? chosen.addresses.first
        return .success((chosen, ip, service.subjectAltNames))
    }

    /// The waypoint a `GatewayAddress` names: a workload at an address, or a service (by VIP or
    /// hostname) whose healthy endpoint is picked. It must speak HBONE. The waypoint of `service`
    /// (the destination service, when it was addressed) on another network is reached through
    /// that network's gateway (§9 step 2): double HBONE, both CONNECTs naming the service's
    /// hostname and port, the inner TLS presenting the waypoint's identities. A workload's
    /// waypoint (`service` nil) on another network is refused.
    static func toWaypoint(_ gateway: GatewayAddress, model: MeshModel, target: IPAddress, port: UInt16, network: String,
                           service: Service?, pick: ([UInt32]) -> Int) -> Route {
        switch gatewayEndpoint(gateway, model: model, family: target.isIPv4, network: network, pick: pick) {
        case .failure(let refusal):
            return .refused("waypoint \(gateway.text): \(refusal)")
        case .success(let (workload, ip, serviceSANs)):
            let identities = serviceSANs + [workload.identity].compactMap { $0 }
            guard workload.network == network else {
                guard let service else {
                    return .refused("waypoint \(workload.uid) is on network \"\(workload.network)\"; only a service's waypoint is reached through a network gateway")
                }
                guard let networkGateway = workload.networkGateway else {
                    return .refused("waypoint \(workload.uid) is on network \"\(workload.network)\" with no network gateway")
                }
                guard !identities.isEmpty else {
                    return .refused("waypoint \(workload.uid) on network \"\(workload.network)\" has no identity to verify through a gateway")
                }
                return throughNetworkGateway(networkGateway, of: workload, authority: "\(service.hostname):\(port)", identities: identities,
                                             viaWaypoint: true, model: model, family: target.isIPv4, pick: pick)
            }
            guard let ip else { return .refused("waypoint \(gateway.text): \(workload.uid) has no address") }
            return .waypoint(waypointUid: workload.uid, ip: ip, hbonePort: gateway.hboneMtlsPort, target: target, port: port,
                             identities: identities)
        }
    }

    /// A workload reached as a service endpoint or by its address once waypoints are decided:
    /// its own waypoint applies only when it was addressed directly (§9 step 5, in `route`).
    static func toWorkload(_ workload: Workload, ip: IPAddress, port: UInt16, serviceSANs: [String]) -> Route {
        switch workload.tunnelProtocol {
        case .none: return .direct(workloadUid: workload.uid, ip: ip, port: port)
        case .hbone: return .hbone(workloadUid: workload.uid, ip: ip, port: port, identities: serviceSANs + [workload.identity].compactMap { $0 })
        }
    }

    /// §10 step 3, the "sandwich": whether `workload` is the waypoint of what `target` is on
    /// this network (a workload, or a service's VIP), so a CONNECT naming `target` may arrive on
    /// the waypoint's own address. The waypoint is named by address (the workload's, or a VIP of
    /// a service it is an endpoint of) or by a service hostname it is an endpoint of.
    public static func isWaypoint(_ workload: Workload, of target: NetworkAddress, model: MeshModel) -> Bool {
        var gateways = model.services(at: target).compactMap(\.waypoint)
        if let owner = model.workload(at: target), let gateway = owner.waypoint { gateways.append(gateway) }
        return gateways.contains { gateway in
            switch gateway.destination {
            case .address(let network, let ip):
                if workload.network == network && workload.addresses.contains(ip.unmapped) { return true }
                return model.services(at: NetworkAddress(network: network, ip: ip)).contains { workload.services[$0.key] != nil }
            case .hostname(let namespace, let hostname):
                return workload.services["\(namespace)/\(hostname)"] != nil
            }
        }
    }

    /// The application port a hostname-form CONNECT (`service-hostname:port`) reaches on
    /// `workload` (ISTIO_COMPAT §10 step 4): the service by that hostname (the client's namespace
    /// preferred), then the port from the workload's endpoint port map for the service, else the
    /// service's target port. A refusal says why (the caller answers 503).
    public static func inboundPort(_ model: MeshModel, workload: Workload, hostname: String, port: UInt16,
                                   clientNamespace: String?) -> Result<UInt16, Refusal> {
        guard let service = inboundService(model, hostname: hostname, clientNamespace: clientNamespace) else {
            return .failure(Refusal("no service has hostname \(hostname)"))
        }
        if let target = workload.services[service.key]?[port], target != 0 { return .success(target) }
        if let target = service.ports[port], target != 0 { return .success(target) }
        return .failure(Refusal("service \(service.key) has no target port for \(port) on \(workload.uid)"))
    }

    /// The service a hostname authority names (§10 step 4): by hostname, the client's namespace
    /// preferred.
    public static func inboundService(_ model: MeshModel, hostname: String, clientNamespace: String?) -> Service? {
        let candidates = (model.servicesByHostname[hostname] ?? []).compactMap { model.services[$0] }.sorted { $0.key < $1.key }
        return preferred(candidates, clientNamespace: clientNamespace)
    }

    /// The address a PROXY header names for a hostname authority (§5.7): one of the service's
    /// VIPs, on `network` first, IPv4 first.
    public static func proxyTarget(of service: Service, network: String) -> IPAddress? {
        service.vips.min { a, b in
            let rank = { (vip: NetworkAddress) in (vip.network == network ? 0 : 2) + (vip.ip.isIPv4 ? 0 : 1) }
            return rank(a) < rank(b)
        }?.ip
    }

    public struct Refusal: Error, Equatable, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }

    /// A weighted random index (capacity as weight), for production use.
    public static func weightedRandom(_ weights: [UInt32]) -> Int {
        let total = weights.reduce(UInt64(0)) { $0 + UInt64($1) }
        guard total > 0 else { return 0 }
        var roll = UInt64.random(in: 0..<total)
        for (index, weight) in weights.enumerated() {
            if roll < UInt64(weight) { return index }
            roll -= UInt64(weight)
        }
        return weights.count - 1
    }
}
