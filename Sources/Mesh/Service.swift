/// A service of the mesh (ISTIO_COMPAT §7.1 `Service`), keyed `namespace/hostname`.
struct Service: Equatable, Sendable {
    enum Visibility: String, Sendable { case `public` = "Public", namespace = "Namespace" }
    enum IPFamilies: String, Sendable { case automatic = "Automatic", ipv4Only = "IPv4", ipv6Only = "IPv6", dual = "Dual" }

    struct LoadBalancer: Equatable, Sendable {
        enum Mode: String, Sendable { case standard = "Standard", strict = "Strict", failover = "Failover", passthrough = "Passthrough" }
        enum Scope: String, Sendable { case region = "Region", zone = "Zone", subzone = "Subzone", node = "Node", cluster = "Cluster", network = "Network" }
        enum HealthPolicy: String, Sendable { case onlyHealthy = "OnlyHealthy", allowAll = "AllowAll" }
        var routingPreferences: [Scope] = []
        var mode: Mode = .standard
        var healthPolicy: HealthPolicy = .onlyHealthy
    }

    var name: String
    var namespace: String
    var hostname: String
    /// Virtual IPs; a VIP with a prefix length is a CIDR VIP.
    var vips: [NetworkAddress] = []
    /// Service port → target port (0: a named port, resolved per endpoint).
    var ports: [UInt16: UInt16] = [:]
    var subjectAltNames: [String] = []
    var waypoint: GatewayAddress?
    var loadBalancer: LoadBalancer?
    var ipFamilies: IPFamilies = .automatic
    var canonical = false
    var visibility: Visibility = .public

    var key: String { "\(namespace)/\(hostname)" }
}
