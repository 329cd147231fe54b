/// A workload of the mesh (ISTIO_COMPAT §7.1 `Workload`), as the data plane uses it, whichever
/// source it came from (the local config file today, istiod's xDS later): one model, two sources.
public struct Workload: Equatable, Sendable {
    public enum TunnelProtocol: String, Sendable { case none = "TCP", hbone = "HBONE" }
    public enum Status: String, Sendable { case healthy = "Healthy", unhealthy = "Unhealthy" }
    public enum NetworkMode: String, Sendable { case standard = "Standard", hostNetwork = "HostNetwork" }
    public enum Kind: String, Sendable { case deployment, cronjob, pod, job }

    public var uid: String
    public var name: String = ""
    public var namespace: String
    public var addresses: [IPAddress] = []
    public var hostname: String = ""
    public var network: String = ""
    public var tunnelProtocol: TunnelProtocol = .none
    public var trustDomain: String = ""
    public var serviceAccount: String = ""
    public var waypoint: GatewayAddress?
    public var networkGateway: GatewayAddress?
    public var node: String = ""
    public var canonicalName: String = ""
    public var canonicalRevision: String = ""
    public var workloadType: Kind = .deployment
    public var workloadName: String = ""
    public var nativeTunnel = false
    public var status: Status = .healthy
    public var clusterId: String = ""
    public var networkMode: NetworkMode = .standard
    public var capacity: UInt32 = 1
    /// Service key (`namespace/hostname`) → service port → target port, for the endpoints this
    /// workload provides.
    public var services: [String: [UInt16: UInt16]] = [:]
    /// `namespace/name` keys of WORKLOAD_SELECTOR policies that apply to it.
    public var authorizationPolicies: [String] = []
    /// How tunneled traffic is delivered to the application (ISTIO_COMPAT §7.1), or nil for plain
    /// delivery.
    public var applicationTunnel: ApplicationTunnel?
    /// Where the workload runs, for locality-aware load balancing, or nil when unknown.
    public var locality: Locality?

    /// `spiffe://<td>/ns/<ns>/sa/<sa>`, or nil when the trust domain or service account is
    /// unknown (the local format does not default them; xDS input is defaulted when converted).
    public var identity: String? {
        guard !trustDomain.isEmpty, !serviceAccount.isEmpty, !namespace.isEmpty else { return nil }
        return "spiffe://\(trustDomain)/ns/\(namespace)/sa/\(serviceAccount)"
    }
}

/// Where a waypoint or network gateway is: an address on a network, or a service by hostname,
/// plus the port its HBONE listener uses.
public struct GatewayAddress: Equatable, Sendable {
    public enum Destination: Equatable, Sendable {
        case address(network: String, ip: IPAddress)
        case hostname(namespace: String, hostname: String)
    }

    public var destination: Destination
    public var hboneMtlsPort: UInt16 = 15008

    public init(destination: Destination, hboneMtlsPort: UInt16 = 15008) {
        self.destination = destination
        self.hboneMtlsPort = hboneMtlsPort
    }

    /// `network/ip` or `namespace/hostname`, as /config_dump writes it.
    public var text: String {
        switch destination {
        case .address(let network, let ip): return "\(network)/\(ip)"
        case .hostname(let namespace, let hostname): return "\(namespace)/\(hostname)"
        }
    }
}

/// An address on a network: the key workloads and service VIPs are found by.
public struct NetworkAddress: Hashable, Sendable, CustomStringConvertible {
    public var network: String
    public var ip: IPAddress

    public init(network: String, ip: IPAddress) {
        self.network = network
        self.ip = ip
    }

    public var description: String { "\(network)/\(ip)" }
}

/// How a workload wants tunneled traffic handed to it (ISTIO_COMPAT §7.1 `ApplicationTunnel`).
public struct ApplicationTunnel: Equatable, Sendable {
    public enum TunnelProtocol: String, Sendable { case none = "NONE", proxy = "PROXY" }

    public var tunnelProtocol: TunnelProtocol
    /// The port to deliver to, or nil for the connection's own destination port.
    public var port: UInt16?

    public init(tunnelProtocol: TunnelProtocol, port: UInt16? = nil) {
        self.tunnelProtocol = tunnelProtocol
        self.port = port
    }
}

/// A workload's region, zone and subzone (ISTIO_COMPAT §7.1 `Locality`); empty when unknown.
public struct Locality: Equatable, Sendable {
    public var region: String = ""
    public var zone: String = ""
    public var subzone: String = ""

    public init(region: String = "", zone: String = "", subzone: String = "") {
        self.region = region
        self.zone = zone
        self.subzone = subzone
    }
}

// Public initializers for the other sources of the model (xDS), kept out of the type bodies so
// the memberwise initializers remain.

extension Workload {
    public init(uid: String, namespace: String) {
        self.uid = uid
        self.namespace = namespace
    }
}
