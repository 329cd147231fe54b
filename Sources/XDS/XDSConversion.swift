import Foundation
import Mesh
import SwiftProtobuf

/// istiod's resources (ISTIO_COMPAT §7) converted into the mesh model's types, the same types the
/// local config fills: one model, two sources. Everything from the network is checked here; a
/// resource that fails is refused whole with the reason (the xDS client NACKs it and keeps the old
/// version), except where upstream drops a bad element and keeps the rest (§7.2: an address of the
/// wrong length or a string match with no kind, inside a policy).
public enum XDSConversion {
    public struct Invalid: Error, Equatable, CustomStringConvertible {
        public let description: String
        public init(_ description: String) { self.description = description }
    }

    public enum Address: Equatable, Sendable {
        case workload(Workload)
        case service(Service)

        /// The xDS resource name: a workload's uid, a service's `namespace/hostname`.
        public var name: String {
            switch self {
            case .workload(let workload): return workload.uid
            case .service(let service): return service.key
            }
        }
    }

    /// The type URLs the two subscriptions carry.
    public static let addressType = "type.googleapis.com/istio.workload.Address"
    public static let authorizationType = "type.googleapis.com/istio.security.Authorization"

    /// Decoding limits: a resource is a few KiB; nesting is shallow.
    static var decoding: BinaryDecodingOptions {
        var options = BinaryDecodingOptions()
        options.messageDepthLimit = 32
        return options
    }

    /// A `DeltaDiscoveryResponse` (istiod's push, or a snapshot), with the decoding limits.
    public static func response(_ bytes: some SwiftProtobufContiguousBytes) throws -> Envoy_Service_Discovery_V3_DeltaDiscoveryResponse {
        do { return try Envoy_Service_Discovery_V3_DeltaDiscoveryResponse(serializedBytes: bytes, options: decoding) } catch {
            throw Invalid("not a DeltaDiscoveryResponse: \(error)")
        }
    }

    /// An `istio.workload.Address` resource's bytes.
    public static func address(_ bytes: [UInt8]) throws -> Address {
        let message: Istio_Workload_Address
        do { message = try Istio_Workload_Address(serializedBytes: bytes, options: decoding) } catch {
            throw Invalid("not an istio.workload.Address: \(error)")
        }
        switch message.type {
        case .workload(let workload)?: return .workload(try self.workload(workload))
        case .service(let service)?: return .service(try self.service(service))
        case nil: throw Invalid("an Address with neither a workload nor a service")
        }
    }

    /// An `istio.security.Authorization` resource's bytes.
    public static func authorization(_ bytes: [UInt8]) throws -> Policy {
        do { return try policy(try Istio_Security_Authorization(serializedBytes: bytes, options: decoding)) } catch let error as Invalid {
            throw error
        } catch {
            throw Invalid("not an istio.security.Authorization: \(error)")
        }
    }

    // MARK: - Workloads

    public static func workload(_ message: Istio_Workload_Workload) throws -> Workload {
        guard !message.uid.isEmpty else { throw Invalid("a workload without a uid") }
        let uid = message.uid
        var workload = Workload(uid: uid, namespace: message.namespace)
        workload.name = message.name
        workload.addresses = try message.addresses.map { bytes in
            guard let ip = IPAddress(bytes: Array(bytes)) else {
                throw Invalid("workload \(uid): an address of \(bytes.count) bytes (4 or 16 expected)")
            }
            return ip
        }
        workload.hostname = message.hostname
        workload.network = message.network
        switch message.tunnelProtocol {
        case .none: workload.tunnelProtocol = .none
        case .hbone: workload.tunnelProtocol = .hbone
        case .legacyIstioMtls: throw Invalid("workload \(uid): tunnel protocol LEGACY_ISTIO_MTLS is not supported")
        case .UNRECOGNIZED(let value): throw Invalid("workload \(uid): unknown tunnel protocol \(value)")
        }
        // istiod leaves the defaults out (§7.1).
        workload.trustDomain = message.trustDomain.isEmpty ? "cluster.local" : message.trustDomain
        workload.serviceAccount = message.serviceAccount.isEmpty ? "default" : message.serviceAccount
        workload.clusterId = message.clusterID.isEmpty ? "Kubernetes" : message.clusterID
        if message.hasWaypoint { workload.waypoint = try gateway(message.waypoint, of: "workload \(uid) waypoint") }
        if message.hasNetworkGateway { workload.networkGateway = try gateway(message.networkGateway, of: "workload \(uid) network gateway") }
        workload.node = message.node
        workload.canonicalName = message.canonicalName
        workload.canonicalRevision = message.canonicalRevision
        switch message.workloadType {
        case .deployment: workload.workloadType = .deployment
        case .cronjob: workload.workloadType = .cronjob
        case .pod: workload.workloadType = .pod
        case .job: workload.workloadType = .job
        case .UNRECOGNIZED(let value): throw Invalid("workload \(uid): unknown workload type \(value)")
        }
        workload.workloadName = message.workloadName
        workload.nativeTunnel = message.nativeTunnel
        if message.hasApplicationTunnel {
            let tunnel = message.applicationTunnel
            let kind: ApplicationTunnel.TunnelProtocol
            switch tunnel.protocol {
            case .none: kind = .none
            case .proxy: kind = .proxy
            case .UNRECOGNIZED(let value): throw Invalid("workload \(uid): unknown application tunnel protocol \(value)")
            }
            workload.applicationTunnel = ApplicationTunnel(tunnelProtocol: kind,
                                                           port: tunnel.port == 0 ? nil : try port(tunnel.port, of: "workload \(uid) application tunnel"))
        }
        for (key, list) in message.services {
            var ports: [UInt16: UInt16] = [:]
            for entry in list.ports {
                ports[try port(entry.servicePort, of: "workload \(uid) service \(key)")] =
                    try port(entry.targetPort, of: "workload \(uid) service \(key)", allowZero: true)
            }
            workload.services[key] = ports
        }
        workload.authorizationPolicies = message.authorizationPolicies
        switch message.status {
        case .healthy: workload.status = .healthy
        case .unhealthy: workload.status = .unhealthy
        case .UNRECOGNIZED(let value): throw Invalid("workload \(uid): unknown status \(value)")
        }
        if message.hasLocality {
            workload.locality = Locality(region: message.locality.region, zone: message.locality.zone, subzone: message.locality.subzone)
        }
        switch message.networkMode {
        case .standard: workload.networkMode = .standard
        case .hostNetwork: workload.networkMode = .hostNetwork
        case .UNRECOGNIZED(let value): throw Invalid("workload \(uid): unknown network mode \(value)")
        }
        workload.capacity = message.hasCapacity ? message.capacity.value : 1
        return workload
    }

    // MARK: - Services

    public static func service(_ message: Istio_Workload_Service) throws -> Service {
        guard !message.hostname.isEmpty, !message.namespace.isEmpty else {
            throw Invalid("a service without a namespace or hostname")
        }
        var service = Service(name: message.name, namespace: message.namespace, hostname: message.hostname)
        let key = service.key
        for address in message.addresses {
            let vip = try networkAddress(address, of: "service \(key) VIP")
            let full = vip.ip.bytes.count * 8
            // A length shorter than the address makes a CIDR VIP; the full length, an address.
            guard address.hasLength, address.length != UInt32(full) else {
                service.vips.append(vip)
                continue
            }
            guard address.length < UInt32(full), let prefix = IPPrefix(address: vip.ip, length: Int(address.length)) else {
                throw Invalid("service \(key): CIDR VIP length \(address.length) is longer than the address")
            }
            service.cidrVips.append(NetworkPrefix(network: vip.network, prefix: prefix))
        }
        for entry in message.ports {
            service.ports[try port(entry.servicePort, of: "service \(key)")] = try port(entry.targetPort, of: "service \(key)", allowZero: true)
        }
        service.subjectAltNames = message.subjectAltNames
        if message.hasWaypoint { service.waypoint = try gateway(message.waypoint, of: "service \(key) waypoint") }
        if message.hasLoadBalancing {
            let balancing = message.loadBalancing
            var balancer = Service.LoadBalancer()
            balancer.routingPreferences = try balancing.routingPreference.map { scope in
                switch scope {
                case .region: return .region
                case .zone: return .zone
                case .subzone: return .subzone
                case .node: return .node
                case .cluster: return .cluster
                case .network: return .network
                case .unspecifiedScope, .UNRECOGNIZED: throw Invalid("service \(key): unknown routing preference \(scope.rawValue)")
                }
            }
            switch balancing.mode {
            case .unspecifiedMode: balancer.mode = .standard
            case .strict: balancer.mode = .strict
            case .failover: balancer.mode = .failover
            case .passthrough: balancer.mode = .passthrough
            case .UNRECOGNIZED(let value): throw Invalid("service \(key): unknown load-balancing mode \(value)")
            }
            switch balancing.healthPolicy {
            case .onlyHealthy: balancer.healthPolicy = .onlyHealthy
            case .allowAll: balancer.healthPolicy = .allowAll
            case .UNRECOGNIZED(let value): throw Invalid("service \(key): unknown health policy \(value)")
            }
            service.loadBalancer = balancer
        }
        switch message.ipFamilies {
        case .automatic: service.ipFamilies = .automatic
        case .ipv4Only: service.ipFamilies = .ipv4Only
        case .ipv6Only: service.ipFamilies = .ipv6Only
        case .dual: service.ipFamilies = .dual
        case .UNRECOGNIZED(let value): throw Invalid("service \(key): unknown IP families \(value)")
        }
        service.canonical = message.canonical
        switch message.visibility {
        case .public: service.visibility = .public
        case .namespace: service.visibility = .namespace
        case .UNRECOGNIZED(let value): throw Invalid("service \(key): unknown visibility \(value)")
        }
        return service
    }

    // MARK: - Authorization

    public static func policy(_ message: Istio_Security_Authorization) throws -> Policy {
        guard !message.name.isEmpty, !message.namespace.isEmpty else { throw Invalid("a policy without a name or namespace") }
        let key = "\(message.namespace)/\(message.name)"
        let scope: Policy.Scope
        switch message.scope {
        case .global: scope = .global
        case .namespace: scope = .namespace
        case .workloadSelector: scope = .workloadSelector
        case .UNRECOGNIZED(let value): throw Invalid("policy \(key): unknown scope \(value)")
        }
        let action: Policy.Action
        switch message.action {
        case .allow: action = .allow
        case .deny: action = .deny
        case .UNRECOGNIZED(let value): throw Invalid("policy \(key): unknown action \(value)")
        }
        let groups = message.rules.map { rule in rule.clauses.map { clause in clause.matches.map(match) } }
        return Policy(name: message.name, namespace: message.namespace, scope: scope, action: action, groups: groups,
                      dryRun: message.dryRun)
    }

    /// One match; elements that cannot match anything are dropped (§7.2). A match left with no
    /// field is kept empty: the authorizer treats it as upstream's L7-only rule, failing closed.
    static func match(_ message: Istio_Security_Match) -> Match {
        var match = Match()
        match.namespaces = message.namespaces.compactMap(stringMatch)
        match.notNamespaces = message.notNamespaces.compactMap(stringMatch)
        match.principals = message.principals.compactMap(stringMatch)
        match.notPrincipals = message.notPrincipals.compactMap(stringMatch)
        match.sourceIps = message.sourceIps.compactMap(prefix)
        match.notSourceIps = message.notSourceIps.compactMap(prefix)
        match.destinationIps = message.destinationIps.compactMap(prefix)
        match.notDestinationIps = message.notDestinationIps.compactMap(prefix)
        match.destinationPorts = message.destinationPorts.compactMap { UInt16(exactly: $0) }
        match.notDestinationPorts = message.notDestinationPorts.compactMap { UInt16(exactly: $0) }
        match.serviceAccounts = message.serviceAccounts.map { ServiceAccountMatch(namespace: $0.namespace, serviceAccount: $0.serviceAccount) }
        match.notServiceAccounts = message.notServiceAccounts.map {
            ServiceAccountMatch(namespace: $0.namespace, serviceAccount: $0.serviceAccount)
        }
        return match
    }

    static func stringMatch(_ message: Istio_Security_StringMatch) -> StringMatch? {
        switch message.matchType {
        case .exact(let text)?: return .exact(text)
        case .prefix(let text)?: return .prefix(text)
        case .suffix(let text)?: return .suffix(text)
        case .presence?: return .presence
        case nil: return nil
        }
    }

    static func prefix(_ message: Istio_Security_Address) -> IPPrefix? {
        guard let ip = IPAddress(bytes: Array(message.address)) else { return nil }
        return IPPrefix(address: ip, length: Int(message.length))
    }

    // MARK: - Shared pieces

    static func port(_ value: UInt32, of what: String, allowZero: Bool = false) throws -> UInt16 {
        guard let port = UInt16(exactly: value), allowZero || port != 0 else { throw Invalid("\(what): port \(value) out of range") }
        return port
    }

    static func networkAddress(_ message: Istio_Workload_NetworkAddress, of what: String) throws -> NetworkAddress {
        guard let ip = IPAddress(bytes: Array(message.address)) else {
            throw Invalid("\(what): an address of \(message.address.count) bytes (4 or 16 expected)")
        }
        return NetworkAddress(network: message.network, ip: ip)
    }

    static func gateway(_ message: Istio_Workload_GatewayAddress, of what: String) throws -> GatewayAddress {
        let destination: GatewayAddress.Destination
        switch message.destination {
        case .hostname(let name)?:
            guard !name.hostname.isEmpty else { throw Invalid("\(what): an empty hostname") }
            destination = .hostname(namespace: name.namespace, hostname: name.hostname)
        case .address(let address)?:
            let network = try networkAddress(address, of: what)
            destination = .address(network: network.network, ip: network.ip)
        case nil:
            throw Invalid("\(what): neither a hostname nor an address")
        }
        // proto3 cannot tell 0 from unset: 0 means the default HBONE port.
        let port = message.hboneMtlsPort == 0 ? 15008 : try self.port(message.hboneMtlsPort, of: what)
        return GatewayAddress(destination: destination, hboneMtlsPort: port)
    }
}
