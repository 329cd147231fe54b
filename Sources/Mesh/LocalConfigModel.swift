// No imports (see LocalConfig.swift): the services, policies and shared shapes of the local
// configuration file (ISTIO_COMPAT §19), read into the mesh model's types.

// MARK: - Services

extension LocalConfig {
    /// Reads one service mapping; `name`, `namespace`, `hostname`, `vips` and `ports` are
    /// required (ISTIO_COMPAT §19; the lists may be empty).
    static func service(_ node: YAMLNode, path: String) throws -> Service {
        let entries = try mapping(node, path: path)
        var service = Service(name: "", namespace: "", hostname: "")
        for entry in entries {
            try applyServiceField(entry, to: &service, path: path)
        }
        try requireKeys(["name", "namespace", "hostname", "vips", "ports"], in: entries, node: node, path: path)
        return service
    }

    /// Stores one service field; unknown keys are errors.
    private static func applyServiceField(_ entry: YAMLNode.Entry, to service: inout Service, path: String) throws {
        let field = "\(path).\(entry.key)"
        let value = entry.value
        switch entry.key {
        case "name": service.name = try kubernetesName(value, path: field, maximumLength: 253, underscore: false)
        case "namespace": service.namespace = try kubernetesName(value, path: field, maximumLength: 63, underscore: false)
        case "hostname": service.hostname = try hostname(value, path: field)
        case "vips":
            for entry in try items(value, path: field, vip) {
                switch entry {
                case .address(let address): service.vips.append(address)
                case .block(let block): service.cidrVips.append(block)
                }
            }
        case "ports": service.ports = try portMap(value, path: field)
        case "subjectAltNames": service.subjectAltNames = try items(value, path: field, nonEmptyString)
        case "waypoint": service.waypoint = try gateway(value, path: field)
        case "loadBalancer": service.loadBalancer = try loadBalancer(value, path: field)
        case "ipFamilies": service.ipFamilies = try choice(value, path: field, [.automatic, .ipv4Only, .ipv6Only, .dual])
        case "canonical": service.canonical = try bool(value, path: field)
        case "visibility": service.visibility = try choice(value, path: field, [.public, .namespace])
        default: throw unknownKey(entry, path: path)
        }
    }

    /// `{routingPreferences: [...], mode: ..., healthPolicy: ...}`, each optional.
    static func loadBalancer(_ node: YAMLNode, path: String) throws -> Service.LoadBalancer {
        var balancer = Service.LoadBalancer()
        for entry in try mapping(node, path: path) {
            let field = "\(path).\(entry.key)"
            switch entry.key {
            case "routingPreferences":
                balancer.routingPreferences = try items(entry.value, path: field) { item, itemPath in
                    try choice(item, path: itemPath, [.region, .zone, .subzone, .node, .cluster, .network] as [Service.LoadBalancer.Scope])
                }
            case "mode": balancer.mode = try choice(entry.value, path: field, [.standard, .strict, .failover, .passthrough])
            case "healthPolicy": balancer.healthPolicy = try choice(entry.value, path: field, [.onlyHealthy, .allowAll])
            default: throw unknownKey(entry, path: path)
            }
        }
        return balancer
    }

    enum VIP {
        case address(NetworkAddress)
        case block(NetworkPrefix)
    }

    /// A VIP, `"network/ip"` (the network may be empty: `"/10.96.0.10"`), or a CIDR VIP,
    /// `"network/ip/length"` (a full length is an address).
    static func vip(_ node: YAMLNode, path: String) throws -> VIP {
        let text = try string(node, path: path)
        if case let (network, rest)? = splitAtSlash(text) {
            if let address = IPAddress(rest) { return .address(NetworkAddress(network: network, ip: address)) }
            if case let (ip, _)? = splitAtSlash(rest), IPAddress(ip) != nil {
                guard let prefix = IPPrefix(rest) else {
                    throw ParseError("\(path): bad CIDR VIP length in \(YAMLError.quote(text)) (line \(node.line))")
                }
                if prefix.length == prefix.address.bytes.count * 8 { return .address(NetworkAddress(network: network, ip: prefix.address)) }
                return .block(NetworkPrefix(network: network, prefix: prefix))
            }
        }
        throw ParseError("\(path): expected \"network/ip\" or \"network/ip/length\" (the network may be empty, as in \"/10.96.0.10\"), "
                         + "got \(YAMLError.quote(text)) (line \(node.line))")
    }

    /// The text before and after the first '/', or nil without one.
    static func splitAtSlash(_ text: String) -> (String, String)? {
        guard let slash = text.firstIndex(of: "/") else { return nil }
        return (String(text[..<slash]), String(text[text.index(after: slash)...]))
    }
}

// MARK: - Gateways and workload extras

extension LocalConfig {
    /// A waypoint or network gateway: `{destination: "network/ip" or "namespace/hostname",
    /// hboneMtlsPort: N}`, both required.
    static func gateway(_ node: YAMLNode, path: String) throws -> GatewayAddress {
        let entries = try mapping(node, path: path)
        var destination: GatewayAddress.Destination?
        var port: UInt16 = 15008
        for entry in entries {
            let field = "\(path).\(entry.key)"
            switch entry.key {
            case "destination": destination = try gatewayDestination(entry.value, path: field)
            case "hboneMtlsPort": port = try self.port(entry.value, path: field)
            default: throw unknownKey(entry, path: path)
            }
        }
        try requireKeys(["destination", "hboneMtlsPort"], in: entries, node: node, path: path)
        guard let destination else { throw ParseError("\(path).destination: required (line \(node.line))") }
        return GatewayAddress(destination: destination, hboneMtlsPort: port)
    }

    /// `"network/ip"` when the part after the first '/' is an address, else `"namespace/hostname"`.
    static func gatewayDestination(_ node: YAMLNode, path: String) throws -> GatewayAddress.Destination {
        let text = try string(node, path: path)
        if case let (head, tail)? = splitAtSlash(text) {
            if let address = IPAddress(tail) { return .address(network: head, ip: address) }
            if isKubernetesName(head, maximumLength: 63), isHostname(tail) { return .hostname(namespace: head, hostname: tail) }
        }
        throw ParseError("\(path): expected \"network/ip\" or \"namespace/hostname\", got \(YAMLError.quote(text)) "
                         + "(line \(node.line))")
    }

    /// `{protocol: NONE|PROXY, port: N}`; `protocol` is required, a `port` of 0 means unset.
    static func applicationTunnel(_ node: YAMLNode, path: String) throws -> ApplicationTunnel {
        let entries = try mapping(node, path: path)
        var tunnel = ApplicationTunnel(tunnelProtocol: .none)
        for entry in entries {
            let field = "\(path).\(entry.key)"
            switch entry.key {
            case "protocol": tunnel.tunnelProtocol = try choice(entry.value, path: field, [.none, .proxy])
            case "port":
                let port = try self.port(entry.value, path: field)
                tunnel.port = port == 0 ? nil : port
            default: throw unknownKey(entry, path: path)
            }
        }
        try requireKeys(["protocol"], in: entries, node: node, path: path)
        return tunnel
    }

    /// `{region, zone, subzone}`, each an optional string.
    static func locality(_ node: YAMLNode, path: String) throws -> Locality {
        var locality = Locality()
        for entry in try mapping(node, path: path) {
            let field = "\(path).\(entry.key)"
            switch entry.key {
            case "region": locality.region = try string(entry.value, path: field)
            case "zone": locality.zone = try string(entry.value, path: field)
            case "subzone": locality.subzone = try string(entry.value, path: field)
            default: throw unknownKey(entry, path: path)
            }
        }
        return locality
    }
}

// MARK: - Policies

extension LocalConfig {
    /// Reads one policy mapping; `name`, `namespace`, `scope`, `action`, `rules` and `dryRun`
    /// are all required (ISTIO_COMPAT §19).
    static func policy(_ node: YAMLNode, path: String) throws -> Policy {
        let entries = try mapping(node, path: path)
        var policy = Policy(name: "", namespace: "", scope: .global, action: .allow, groups: [])
        for entry in entries {
            let field = "\(path).\(entry.key)"
            let value = entry.value
            switch entry.key {
            case "name": policy.name = try policyName(value, path: field)
            case "namespace": policy.namespace = try kubernetesName(value, path: field, maximumLength: 63, underscore: false)
            case "scope": policy.scope = try choice(value, path: field, [.global, .namespace, .workloadSelector])
            case "action": policy.action = try choice(value, path: field, [.allow, .deny])
            case "rules": policy.groups = try groups(value, path: field)
            case "dryRun": policy.dryRun = try bool(value, path: field)
            default: throw unknownKey(entry, path: path)
            }
        }
        try requireKeys(["name", "namespace", "scope", "action", "rules", "dryRun"], in: entries, node: node, path: path)
        return policy
    }

    /// A policy name: a non-empty string without '/' (istiod's generated names use '_').
    private static func policyName(_ node: YAMLNode, path: String) throws -> String {
        let text = try nonEmptyString(node, path: path)
        guard !text.contains("/") else {
            throw ParseError("\(path): a policy name cannot contain '/', got \(YAMLError.quote(text)) (line \(node.line))")
        }
        return text
    }

    /// `rules`: a list of groups (OR-ed), each a list of clauses (AND-ed), each a list of
    /// match objects (OR-ed).
    static func groups(_ node: YAMLNode, path: String) throws -> [[[Match]]] {
        try items(node, path: path) { group, groupPath in
            try items(group, path: groupPath) { clause, clausePath in
                try items(clause, path: clausePath, match)
            }
        }
    }

    /// One match object: any of the twelve camelCase keys of ISTIO_COMPAT §7.2 `Match`.
    static func match(_ node: YAMLNode, path: String) throws -> Match {
        var match = Match()
        for entry in try mapping(node, path: path) {
            let field = "\(path).\(entry.key)"
            if let keyPath = stringMatchField(entry.key) {
                match[keyPath: keyPath] = try items(entry.value, path: field, stringMatch)
            } else if let keyPath = prefixField(entry.key) {
                match[keyPath: keyPath] = try items(entry.value, path: field, cidr)
            } else if let keyPath = portField(entry.key) {
                match[keyPath: keyPath] = try items(entry.value, path: field, port)
            } else if let keyPath = serviceAccountField(entry.key) {
                match[keyPath: keyPath] = try items(entry.value, path: field, serviceAccountMatch)
            } else {
                throw unknownKey(entry, path: path)
            }
        }
        return match
    }
}

// MARK: - Match fields

extension LocalConfig {
    private static func stringMatchField(_ key: String) -> WritableKeyPath<Match, [StringMatch]>? {
        switch key {
        case "namespaces": return \.namespaces
        case "notNamespaces": return \.notNamespaces
        case "principals": return \.principals
        case "notPrincipals": return \.notPrincipals
        default: return nil
        }
    }

    private static func prefixField(_ key: String) -> WritableKeyPath<Match, [IPPrefix]>? {
        switch key {
        case "sourceIps": return \.sourceIps
        case "notSourceIps": return \.notSourceIps
        case "destinationIps": return \.destinationIps
        case "notDestinationIps": return \.notDestinationIps
        default: return nil
        }
    }

    private static func portField(_ key: String) -> WritableKeyPath<Match, [UInt16]>? {
        switch key {
        case "destinationPorts": return \.destinationPorts
        case "notDestinationPorts": return \.notDestinationPorts
        default: return nil
        }
    }

    private static func serviceAccountField(_ key: String) -> WritableKeyPath<Match, [ServiceAccountMatch]>? {
        switch key {
        case "serviceAccounts": return \.serviceAccounts
        case "notServiceAccounts": return \.notServiceAccounts
        default: return nil
        }
    }

    /// A string match written with a YAML tag, as serde_yaml requires (ISTIO_COMPAT §19):
    /// `!Exact v`, `!Prefix v`, `!Suffix v` or `!Presence []`.
    static func stringMatch(_ node: YAMLNode, path: String) throws -> StringMatch {
        switch node.tag {
        case "Exact": return .exact(try scalarText(node, path: path))
        case "Prefix": return .prefix(try scalarText(node, path: path))
        case "Suffix": return .suffix(try scalarText(node, path: path))
        case "Presence":
            guard node.sequenceItems?.isEmpty == true else {
                throw ParseError("\(path): !Presence takes an empty sequence, as in !Presence [] (line \(node.line))")
            }
            return .presence
        case let tag?:
            throw ParseError("\(path): unknown string match \(YAMLError.quote("!" + tag)); expected !Exact, !Prefix, "
                             + "!Suffix or !Presence (line \(node.line))")
        case nil:
            throw ParseError("\(path): expected a tagged string match (!Exact v, !Prefix v, !Suffix v or !Presence []), "
                             + "got \(node.kindName) (line \(node.line))")
        }
    }

    /// A CIDR block with its length, `10.0.0.0/8` or `fd00::/8` (host bits may be set).
    static func cidr(_ node: YAMLNode, path: String) throws -> IPPrefix {
        let text = try string(node, path: path)
        if case let (ip, length)? = splitAtSlash(text), let address = IPAddress(ip), let bits = decimal(length, maximum: 128),
           let prefix = IPPrefix(address: address, length: Int(bits)) {
            return prefix
        }
        throw ParseError("\(path): expected a CIDR block such as 10.0.0.0/8 or fd00::/8, got \(YAMLError.quote(text)) "
                         + "(line \(node.line))")
    }

    /// `{namespace, serviceAccount}`, both required.
    static func serviceAccountMatch(_ node: YAMLNode, path: String) throws -> ServiceAccountMatch {
        let entries = try mapping(node, path: path)
        var match = ServiceAccountMatch(namespace: "", serviceAccount: "")
        for entry in entries {
            let field = "\(path).\(entry.key)"
            switch entry.key {
            case "namespace": match.namespace = try kubernetesName(entry.value, path: field, maximumLength: 63, underscore: false)
            case "serviceAccount":
                match.serviceAccount = try kubernetesName(entry.value, path: field, maximumLength: 253, underscore: false)
            default: throw unknownKey(entry, path: path)
            }
        }
        try requireKeys(["namespace", "serviceAccount"], in: entries, node: node, path: path)
        return match
    }
}
