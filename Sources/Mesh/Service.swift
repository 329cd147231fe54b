/// A service of the mesh (ISTIO_COMPAT §7.1 `Service`), keyed `namespace/hostname`.
public struct Service: Equatable, Sendable {
    public enum Visibility: String, Sendable { case `public` = "Public", namespace = "Namespace" }
    public enum IPFamilies: String, Sendable { case automatic = "Automatic", ipv4Only = "IPv4", ipv6Only = "IPv6", dual = "Dual" }

    public struct LoadBalancer: Equatable, Sendable {
        public enum Mode: String, Sendable { case standard = "Standard", strict = "Strict", failover = "Failover", passthrough = "Passthrough" }
        public enum Scope: String, Sendable { case region = "Region", zone = "Zone", subzone = "Subzone", node = "Node", cluster = "Cluster", network = "Network" }
        public enum HealthPolicy: String, Sendable { case onlyHealthy = "OnlyHealthy", allowAll = "AllowAll" }
        public var routingPreferences: [Scope] = []
        public var mode: Mode = .standard
        public var healthPolicy: HealthPolicy = .onlyHealthy

        public init(routingPreferences: [Scope] = [], mode: Mode = .standard, healthPolicy: HealthPolicy = .onlyHealthy) {
            self.routingPreferences = routingPreferences
            self.mode = mode
            self.healthPolicy = healthPolicy
        }
    }

    public var name: String
    public var namespace: String
    public var hostname: String
    /// Virtual IPs.
    public var vips: [NetworkAddress] = []
    /// CIDR VIPs: a connection to any address inside one reaches the service when no exact VIP
    /// matches (ISTIO_COMPAT §9 step 2, longest prefix).
    public var cidrVips: [NetworkPrefix] = []
    /// Service port → target port (0: a named port, resolved per endpoint).
    public var ports: [UInt16: UInt16] = [:]
    public var subjectAltNames: [String] = []
    public var waypoint: GatewayAddress?
    public var loadBalancer: LoadBalancer?
    public var ipFamilies: IPFamilies = .automatic
    public var canonical = false
    public var visibility: Visibility = .public

    public var key: String { "\(namespace)/\(hostname)" }
}

/// A block of addresses on a network: a CIDR VIP, written `network/ip/length`.
public struct NetworkPrefix: Hashable, Sendable, CustomStringConvertible {
    public var network: String
    public var prefix: IPPrefix

    public init(network: String, prefix: IPPrefix) {
        self.network = network
        self.prefix = prefix
    }

    public func contains(_ address: NetworkAddress) -> Bool {
        address.network == network && prefix.contains(address.ip.unmapped)
    }

    public var description: String { "\(network)/\(prefix)" }
}

// Public initializers for the other sources of the model (xDS), kept out of the type bodies so
// the memberwise initializers remain.

extension Service {
    public init(name: String, namespace: String, hostname: String) {
        self.name = name
        self.namespace = namespace
        self.hostname = hostname
    }
}
