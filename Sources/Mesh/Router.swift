/// Outbound routing (ISTIO_COMPAT §9) on the mesh model: where a connection captured on 15001 (or
/// asked for through SOCKS5) to `destination:port` should go. Pure: the caller does the I/O, and
/// the random choice among endpoints is injected so tests can fix it.
///
/// What it decides today: a service VIP (services filtered by visibility, then the client's
/// namespace, `canonical`, first seen) goes to one of its healthy endpoints, chosen at random by
/// capacity, on the endpoint's target port; a workload address goes to that workload on the
/// original port; anything else passes through. What it deliberately does not do yet: waypoints,
/// other networks (double HBONE), routing preferences (STRICT and FAILOVER are treated as
/// STANDARD and said so in the route), CIDR VIPs and DNS for hostname-only workloads; those come
/// back as `.refused` or are documented on the case, never silently sent somewhere else.
public enum Router {
    public enum Route: Equatable, Sendable {
        /// Not the mesh's: plain TCP to the original destination.
        case passthrough
        /// Plain TCP to a workload that does not speak HBONE.
        case direct(workloadUid: String, ip: IPAddress, port: UInt16)
        /// The workload speaks HBONE: TCP to `ip:15008`, CONNECT to `ip:port`, expecting one of
        /// `identities` (the service's SANs, then the workload's).
        case hbone(workloadUid: String, ip: IPAddress, port: UInt16, identities: [String])
        /// The mesh knows the destination but there is nowhere to send it (the reason says why).
        case refused(String)
    }

    /// `pick(weights)` returns an index into `weights` (weighted random in production).
    public static func route(_ model: MeshModel, to destination: NetworkAddress, port: UInt16, clientNamespace: String?,
                             pick: ([UInt32]) -> Int) -> Route {
        if let workload = model.workload(at: destination) {
            return toWorkload(workload, ip: destination.ip, port: port, serviceSANs: [])
        }
        let candidates = model.services(at: destination).filter {
            $0.visibility == .public || $0.namespace == clientNamespace
        }
        guard let service = preferred(candidates, clientNamespace: clientNamespace) else { return .passthrough }
        if service.waypoint != nil { return .refused("service \(service.key) has a waypoint; waypoints are not supported yet") }
        if service.loadBalancer?.mode == .passthrough { return .passthrough }
        return toEndpoint(of: service, model: model, port: port, family: destination.ip.isIPv4, pick: pick)
    }

    /// The client's namespace first, then a canonical service, then the first seen.
    static func preferred(_ services: [Service], clientNamespace: String?) -> Service? {
        services.first { $0.namespace == clientNamespace } ?? services.first { $0.canonical } ?? services.first
    }

    static func toEndpoint(of service: Service, model: MeshModel, port: UInt16, family isIPv4: Bool,
                           pick: ([UInt32]) -> Int) -> Route {
        guard let servicePort = service.ports[port] else { return .refused("service \(service.key) has no port \(port)") }
        let allowAll = service.loadBalancer?.healthPolicy == .allowAll
        var usable: [(workload: Workload, port: UInt16)] = []
        for endpoint in model.endpoints(of: service.key) where allowAll || endpoint.workload.status == .healthy {
            // The endpoint's own port map first, else the service's target port (0: named port).
            guard let target = endpoint.ports[port] ?? (servicePort != 0 ? servicePort : nil), target != 0,
                  !endpoint.workload.addresses.isEmpty else { continue }
            usable.append((endpoint.workload, target))
        }
        guard !usable.isEmpty else { return .refused("no healthy upstream for \(service.key):\(port)") }
        let index = pick(usable.map { max(1, $0.workload.capacity) })
        let chosen = usable[min(max(0, index), usable.count - 1)]
        // An address of the VIP's family when the workload has one (§9 step 6), else its first.
        let addresses = chosen.workload.addresses
        let ip = addresses.first { $0.isIPv4 == isIPv4 } ?? addresses[0]  // not empty: checked above
        return toWorkload(chosen.workload, ip: ip, port: chosen.port, serviceSANs: service.subjectAltNames)
    }

    static func toWorkload(_ workload: Workload, ip: IPAddress, port: UInt16, serviceSANs: [String]) -> Route {
        if workload.waypoint != nil {
            return .refused("workload \(workload.uid) has a waypoint; waypoints are not supported yet")
        }
        switch workload.tunnelProtocol {
        case .none: return .direct(workloadUid: workload.uid, ip: ip, port: port)
        case .hbone: return .hbone(workloadUid: workload.uid, ip: ip, port: port, identities: serviceSANs + [workload.identity].compactMap { $0 })
        }
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
