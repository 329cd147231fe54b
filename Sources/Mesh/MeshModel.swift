/// The data plane's view of the mesh: workloads, services and policies with the indexes routing
/// (ISTIO_COMPAT §9) and the inbound checks (§10, §12) need. One model for both sources: the
/// local config file fills it today, the xDS worker will publish into the same shape. Updates
/// follow xDS semantics: inserting a workload replaces the old one with that uid entirely;
/// endpoints for a service not yet known are staged and appear when it arrives.
///
/// A value type: a connection works on the snapshot it took, so it never sees half of an update.
/// The large maps are sharded (`ShardedDictionary`): the next version, made from a copy while
/// connections still read this one, copies only the shards a change touches.
public struct MeshModel: Equatable, Sendable {
    public private(set) var workloads = ShardedDictionary<String, Workload>()
    public private(set) var services = ShardedDictionary<String, Service>()
    public private(set) var policies = ShardedDictionary<String, Policy>()
    /// Keys of the GLOBAL policies and of the NAMESPACE ones by namespace: what every inbound
    /// connection looks up (`policies(for:)`), without a scan of every policy.
    private var policiesByScope: [PolicyScope: Set<String>] = [:]
    private enum PolicyScope: Hashable, Sendable { case global, namespace(String) }
    /// Workload uid by each of its addresses (HostNetwork workloads are not indexed by IP). When
    /// several workloads claim one address (a pod IP reused before the old pod is gone), the
    /// greatest uid owns it, and another takes over when it goes: the same however the model was
    /// built (whole, or update by update).
    public private(set) var workloadByAddress = ShardedDictionary<NetworkAddress, String>()
    /// Every workload claiming an address, when more than one does.
    private var sharedAddresses: [NetworkAddress: Set<String>] = [:]
    /// Service keys by VIP (several services may share one), in key order.
    public private(set) var servicesByVIP = ShardedDictionary<NetworkAddress, [String]>()
    /// Keys of the services that have CIDR VIPs (few: each lookup scans them).
    public private(set) var servicesWithCIDRs: Set<String> = []
    /// Service keys by hostname (one per namespace that has it), for the pods' DNS proxy, in key
    /// order.
    public private(set) var servicesByHostname = ShardedDictionary<String, [String]>()
    /// Workload uids by node name (workloads with one), for the identities a node's proxy wants.
    public private(set) var workloadsByNode: [String: Set<String>] = [:]
    /// Workload uids by each service key they list (a service's endpoints, known or staged).
    public private(set) var workloadsByService = ShardedDictionary<String, Set<String>>()

    public init() {}

    // MARK: - Updates

    public mutating func insert(_ workload: Workload) {
        removeWorkload(uid: workload.uid)
        workloads[workload.uid] = workload
        for key in workload.services.keys {
            var uids = workloadsByService.removeValue(forKey: key) ?? []  // taken out: changed in place
            uids.insert(workload.uid)
            workloadsByService[key] = uids
        }
        if !workload.node.isEmpty { workloadsByNode[workload.node, default: []].insert(workload.uid) }
        guard workload.networkMode == .standard else { return }
        for ip in workload.addresses {
            let key = NetworkAddress(network: workload.network, ip: ip.unmapped)
            guard let owner = workloadByAddress[key], owner != workload.uid else {
                workloadByAddress[key] = workload.uid
                continue
            }
            sharedAddresses[key, default: [owner]].insert(workload.uid)
            workloadByAddress[key] = max(owner, workload.uid)
        }
    }

    public mutating func removeWorkload(uid: String) {
        guard let old = workloads.removeValue(forKey: uid) else { return }
        for key in old.services.keys {
            if var uids = workloadsByService.removeValue(forKey: key) {
                uids.remove(uid)
                if !uids.isEmpty { workloadsByService[key] = uids }
            }
        }
        if !old.node.isEmpty {
            workloadsByNode[old.node]?.remove(uid)
            if workloadsByNode[old.node]?.isEmpty == true { workloadsByNode[old.node] = nil }
        }
        guard old.networkMode == .standard else { return }
        for ip in old.addresses {
            let key = NetworkAddress(network: old.network, ip: ip.unmapped)
            guard var claims = sharedAddresses[key] else {
                if workloadByAddress[key] == uid { workloadByAddress[key] = nil }
                continue
            }
            claims.remove(uid)
            workloadByAddress[key] = claims.max()
            sharedAddresses[key] = claims.count > 1 ? claims : nil
        }
    }

    public mutating func insert(_ service: Service) {
        removeService(key: service.key)
        services[service.key] = service
        for vip in service.vips {
            var keys = servicesByVIP.removeValue(forKey: vip) ?? []
            keys.insert(service.key, at: keys.firstIndex { $0 > service.key } ?? keys.endIndex)
            servicesByVIP[vip] = keys
        }
        if !service.cidrVips.isEmpty { servicesWithCIDRs.insert(service.key) }
        var named = servicesByHostname.removeValue(forKey: service.hostname) ?? []
        named.insert(service.key, at: named.firstIndex { $0 > service.key } ?? named.endIndex)
        servicesByHostname[service.hostname] = named
    }

    public mutating func removeService(key: String) {
        guard let old = services.removeValue(forKey: key) else { return }
        for vip in old.vips {
            if var keys = servicesByVIP.removeValue(forKey: vip) {
                keys.removeAll { $0 == key }
                if !keys.isEmpty { servicesByVIP[vip] = keys }
            }
        }
        servicesWithCIDRs.remove(key)
        if var keys = servicesByHostname.removeValue(forKey: old.hostname) {
            keys.removeAll { $0 == key }
            if !keys.isEmpty { servicesByHostname[old.hostname] = keys }
        }
    }

    public mutating func insert(_ policy: Policy) {
        removePolicy(key: policy.key)
        policies[policy.key] = policy
        if let scope = Self.scope(of: policy) { policiesByScope[scope, default: []].insert(policy.key) }
    }

    public mutating func removePolicy(key: String) {
        guard let old = policies.removeValue(forKey: key), let scope = Self.scope(of: old) else { return }
        policiesByScope[scope]?.remove(key)
        if policiesByScope[scope]?.isEmpty == true { policiesByScope[scope] = nil }
    }

    private static func scope(of policy: Policy) -> PolicyScope? {
        switch policy.scope {
        case .global: return .global
        case .namespace: return .namespace(policy.namespace)
        case .workloadSelector: return nil
        }
    }

    // MARK: - Lookups

    /// The workload owning an address (an IPv4-mapped IPv6 address is looked up as IPv4).
    public func workload(at address: NetworkAddress) -> Workload? {
        workloadByAddress[NetworkAddress(network: address.network, ip: address.ip.unmapped)].flatMap { workloads[$0] }
    }

    /// The services whose VIP is exactly `address`, in key order.
    public func services(at address: NetworkAddress) -> [Service] {
        (servicesByVIP[address] ?? []).compactMap { services[$0] }
    }

    /// The services with a CIDR VIP containing `address`, each with its longest such prefix, by key.
    public func services(inCIDRsContaining address: NetworkAddress) -> [(service: Service, length: Int)] {
        servicesWithCIDRs.compactMap { key -> (service: Service, length: Int)? in
            guard let service = services[key] else { return nil }
            let lengths = service.cidrVips.filter { $0.contains(address) }.map(\.prefix.length)
            return lengths.max().map { (service, $0) }
        }.sorted { $0.service.key < $1.service.key }  // only the matches are sorted
    }

    /// The endpoints of a service: each workload that lists it, with its port map. Endpoints of a
    /// service that is not (yet) known are "staged": listed by `stagedServices`.
    public func endpoints(of serviceKey: String) -> [(workload: Workload, ports: [UInt16: UInt16])] {
        (workloadsByService[serviceKey] ?? []).sorted().compactMap { uid in
            workloads[uid].flatMap { workload in workload.services[serviceKey].map { (workload, $0) } }
        }
    }

    /// Service keys that workloads list but no service has (yet): their endpoints wait here.
    public var stagedServices: [String] {
        workloadsByService.keys.filter { services[$0] == nil }.sorted()
    }

    /// The policies that apply to a destination workload (ISTIO_COMPAT §12.1): GLOBAL ones, the
    /// NAMESPACE ones of its namespace, and the WORKLOAD_SELECTOR ones it lists. Keys naming no
    /// known policy are returned in `unknown` (the caller warns).
    public func policies(for workload: Workload) -> (policies: [Policy], unknown: [String]) {
        var result: [Policy] = []
        for key in policiesByScope[.global] ?? [] { if let policy = policies[key] { result.append(policy) } }
        for key in policiesByScope[.namespace(workload.namespace)] ?? [] { if let policy = policies[key] { result.append(policy) } }
        var unknown: [String] = []
        // Every policy the workload lists applies, whatever its scope (upstream applies the list
        // as given; a review found NAMESPACE or GLOBAL policies listed from elsewhere dropped).
        for key in Set(workload.authorizationPolicies) {
            guard let policy = policies[key] else { unknown.append(key); continue }
            if !result.contains(where: { $0.namespace == policy.namespace && $0.name == policy.name }) { result.append(policy) }
        }
        return (result.sorted { $0.key < $1.key }, unknown)
    }
}
