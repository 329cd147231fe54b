/// A workload of the mesh (ISTIO_COMPAT §7.1 `Workload`), as the data plane uses it, whichever
/// source it came from (the local config file today, istiod's xDS later): one model, two sources.
struct Workload: Equatable, Sendable {
    enum TunnelProtocol: String, Sendable { case none = "TCP", hbone = "HBONE" }
    enum Status: String, Sendable { case healthy = "Healthy", unhealthy = "Unhealthy" }
    enum NetworkMode: String, Sendable { case standard = "Standard", hostNetwork = "HostNetwork" }
    enum Kind: String, Sendable { case deployment, cronjob, pod, job }

    var uid: String
    var name: String = ""
    var namespace: String
    var addresses: [IPAddress] = []
    var hostname: String = ""
    var network: String = ""
    var tunnelProtocol: TunnelProtocol = .none
    var trustDomain: String = ""
    var serviceAccount: String = ""
    var waypoint: GatewayAddress?
    var networkGateway: GatewayAddress?
    var node: String = ""
    var canonicalName: String = ""
    var canonicalRevision: String = ""
    var workloadType: Kind = .deployment
    var workloadName: String = ""
    var nativeTunnel = false
    var status: Status = .healthy
    var clusterId: String = ""
    var networkMode: NetworkMode = .standard
    var capacity: UInt32 = 1
    /// Service key (`namespace/hostname`) → service port → target port, for the endpoints this
    /// workload provides.
    var services: [String: [UInt16: UInt16]] = [:]
    /// `namespace/name` keys of WORKLOAD_SELECTOR policies that apply to it.
    var authorizationPolicies: [String] = []

    /// `spiffe://<td>/ns/<ns>/sa/<sa>`, or nil when the trust domain or service account is
    /// unknown (the local format does not default them; xDS input is defaulted when converted).
    var identity: String? {
        guard !trustDomain.isEmpty, !serviceAccount.isEmpty, !namespace.isEmpty else { return nil }
        return "spiffe://\(trustDomain)/ns/\(namespace)/sa/\(serviceAccount)"
    }
}

/// Where a waypoint or network gateway is: an address on a network, or a service by hostname,
/// plus the port its HBONE listener uses.
struct GatewayAddress: Equatable, Sendable {
    enum Destination: Equatable, Sendable {
        case address(network: String, ip: IPAddress)
        case hostname(namespace: String, hostname: String)
    }

    var destination: Destination
    var hboneMtlsPort: UInt16 = 15008

    /// `network/ip` or `namespace/hostname`, as /config_dump writes it.
    var text: String {
        switch destination {
        case .address(let network, let ip): return "\(network)/\(ip)"
        case .hostname(let namespace, let hostname): return "\(namespace)/\(hostname)"
        }
    }
}

/// An address on a network: the key workloads and service VIPs are found by.
struct NetworkAddress: Hashable, Sendable, CustomStringConvertible {
    var network: String
    var ip: IPAddress

    var description: String { "\(network)/\(ip)" }
}
