import Mesh
import Shared

/// The mesh model in the /config_dump shapes `istioctl ztunnel-config` reads (ISTIO_COMPAT §17.2):
/// workloads sorted by uid, services sorted by hostname, policies sorted by key, staged endpoints.
/// Default-valued optional fields are left out, as upstream does. Reads the model only.
enum MeshDump {
    static func workloads(_ model: MeshModel) -> JSON {
        .array(model.workloads.values.sorted { $0.uid < $1.uid }.map(workload))
    }

    static func workload(_ workload: Workload) -> JSON {
        var members: [(String, JSON)] = [
            ("uid", .string(workload.uid)),
            ("workloadIps", .array(workload.addresses.map { .string($0.description) })),
        ]
        if let waypoint = workload.waypoint { members.append(("waypoint", gateway(waypoint))) }
        if let gatewayAddress = workload.networkGateway { members.append(("networkGateway", gateway(gatewayAddress))) }
        members += [("protocol", .string(workload.tunnelProtocol.rawValue)), ("networkMode", .string(workload.networkMode.rawValue))]
        let strings: [(String, String)] = [
            ("name", workload.name), ("namespace", workload.namespace), ("trustDomain", workload.trustDomain),
            ("serviceAccount", workload.serviceAccount), ("network", workload.network), ("workloadName", workload.workloadName),
            ("workloadType", workload.workloadType.rawValue), ("canonicalName", workload.canonicalName),
            ("canonicalRevision", workload.canonicalRevision), ("hostname", workload.hostname), ("node", workload.node),
        ]
        members += strings.filter { !$0.1.isEmpty }.map { ($0.0, .string($0.1)) }
        if workload.nativeTunnel { members.append(("nativeTunnel", .bool(true))) }
        if let tunnel = workload.applicationTunnel {
            var fields: [(String, JSON)] = [("protocol", .string(tunnel.tunnelProtocol.rawValue))]
            if let port = tunnel.port { fields.append(("port", .int(Int64(port)))) }
            members.append(("applicationTunnel", .object(fields)))
        }
        if !workload.authorizationPolicies.isEmpty {
            members.append(("authorizationPolicies", .array(workload.authorizationPolicies.map { .string($0) })))
        }
        members.append(("status", .string(workload.status.rawValue)))
        if !workload.clusterId.isEmpty { members.append(("clusterId", .string(workload.clusterId))) }
        if let locality = workload.locality {
            members.append(("locality", .object([("region", .string(locality.region)), ("zone", .string(locality.zone)),
                                                 ("subzone", .string(locality.subzone))])))
        }
        if !workload.services.isEmpty { members.append(("services", .array(workload.services.keys.sorted().map { .string($0) }))) }
        members.append(("capacity", .int(Int64(workload.capacity))))
        return .object(members)
    }

    static func services(_ model: MeshModel) -> JSON {
        .array(model.services.values.sorted { ($0.hostname, $0.namespace) < ($1.hostname, $1.namespace) }.map { service($0, model) })
    }

    static func service(_ service: Service, _ model: MeshModel) -> JSON {
        var members: [(String, JSON)] = [
            ("name", .string(service.name)), ("namespace", .string(service.namespace)), ("hostname", .string(service.hostname)),
            ("vips", .array(service.vips.map { .string($0.description) })),
        ]
        if !service.cidrVips.isEmpty { members.append(("cidrVips", .array(service.cidrVips.map { .string($0.description) }))) }
        members += [("ports", portMap(service.ports)), ("endpoints", endpoints(model.endpoints(of: service.key)))]
        if !service.subjectAltNames.isEmpty { members.append(("subjectAltNames", .array(service.subjectAltNames.map { .string($0) }))) }
        if let waypoint = service.waypoint { members.append(("waypoint", gateway(waypoint))) }
        if let balancer = service.loadBalancer {
            members.append(("loadBalancer", .object([
                ("routingPreferences", .array(balancer.routingPreferences.map { .string($0.rawValue) })),
                ("mode", .string(balancer.mode.rawValue)), ("healthPolicy", .string(balancer.healthPolicy.rawValue)),
            ])))
        }
        if service.ipFamilies != .automatic { members.append(("ipFamilies", .string(service.ipFamilies.rawValue))) }
        if service.canonical { members.append(("canonical", .bool(true))) }
        members.append(("visibility", .string(service.visibility.rawValue)))
        return .object(members)
    }

    /// Endpoints of services no known service has (yet), keyed by service key.
    static func stagedServices(_ model: MeshModel) -> JSON {
        .object(model.stagedServices.map { ($0, endpoints(model.endpoints(of: $0))) })
    }

    static func policies(_ model: MeshModel) -> JSON {
        .array(model.policies.values.sorted { $0.key < $1.key }.map(policy))
    }

    static func policy(_ policy: Policy) -> JSON {
        .object([
            ("name", .string(policy.name)), ("namespace", .string(policy.namespace)),
            ("scope", .string(policy.scope.rawValue)), ("action", .string(policy.action.rawValue)),
            ("rules", .array(policy.groups.map { group in .array(group.map { clause in .array(clause.map(match)) }) })),
            ("dryRun", .bool(policy.dryRun)),
        ])
    }

    static func match(_ match: Match) -> JSON {
        var members: [(String, JSON)] = []
        func strings(_ name: String, _ values: [StringMatch]) {
            if !values.isEmpty { members.append((name, .array(values.map(stringMatch)))) }
        }
        func prefixes(_ name: String, _ values: [IPPrefix]) {
            if !values.isEmpty { members.append((name, .array(values.map { .string($0.description) }))) }
        }
        func ports(_ name: String, _ values: [UInt16]) {
            if !values.isEmpty { members.append((name, .array(values.map { .int(Int64($0)) }))) }
        }
        func accounts(_ name: String, _ values: [ServiceAccountMatch]) {
            if !values.isEmpty {
                members.append((name, .array(values.map { .object([("namespace", .string($0.namespace)), ("serviceAccount", .string($0.serviceAccount))]) })))
            }
        }
        strings("namespaces", match.namespaces); strings("notNamespaces", match.notNamespaces)
        strings("principals", match.principals); strings("notPrincipals", match.notPrincipals)
        prefixes("sourceIps", match.sourceIps); prefixes("notSourceIps", match.notSourceIps)
        prefixes("destinationIps", match.destinationIps); prefixes("notDestinationIps", match.notDestinationIps)
        ports("destinationPorts", match.destinationPorts); ports("notDestinationPorts", match.notDestinationPorts)
        accounts("serviceAccounts", match.serviceAccounts); accounts("notServiceAccounts", match.notServiceAccounts)
        return .object(members)
    }

    static func stringMatch(_ value: StringMatch) -> JSON {
        switch value {
        case .exact(let text): return .object([("Exact", .string(text))])
        case .prefix(let text): return .object([("Prefix", .string(text))])
        case .suffix(let text): return .object([("Suffix", .string(text))])
        case .presence: return .object([("Presence", .array([]))])
        }
    }

    private static func gateway(_ address: GatewayAddress) -> JSON {
        .object([("destination", .string(address.text)), ("hboneMtlsPort", .int(Int64(address.hboneMtlsPort)))])
    }

    private static func portMap(_ ports: [UInt16: UInt16]) -> JSON {
        .object(ports.keys.sorted().map { (String($0), .int(Int64(ports[$0] ?? 0))) })
    }

    private static func endpoints(_ endpoints: [(workload: Workload, ports: [UInt16: UInt16])]) -> JSON {
        .object(endpoints.map { endpoint in
            (endpoint.workload.uid, .object([
                ("workloadUid", .string(endpoint.workload.uid)), ("port", portMap(endpoint.ports)),
                ("status", .string(endpoint.workload.status.rawValue)),
            ]))
        })
    }
}
