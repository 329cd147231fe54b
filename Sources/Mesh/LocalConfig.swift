// No imports: this file, LocalConfigModel.swift, YAMLReader.swift and the rest of the Mesh module
// also build standalone into the libFuzzer target Fuzz/targets/local_config.swift.

/// The local configuration file (LOCAL_XDS_PATH, ISTIO_COMPAT §19) read into the mesh model:
/// workloads, services and policies, exactly as the file states them.
///
/// The file is checked strictly, so a typo fails loudly instead of silently changing what is
/// served: only the top-level keys `workloads`, `services` and `policies` are allowed, each a
/// sequence; every object (workload, service, policy, match, gateway, load balancer, ...) accepts
/// its known keys only and must have its required ones; enums, booleans and integers must be
/// spelled exactly (integers unquoted, in range); the fields that end up in a SPIFFE id are
/// restricted to Kubernetes-name characters; no text may carry control or format characters; two
/// workloads with one uid, two services with one `namespace/hostname` or two policies with one
/// `namespace/name` are refused. Every error names the path of the value and its line.
///
/// Not supported yet, and refused: workload or service `extensions`, `weightedWaypoints` and port `appProtocol` (none of them is part of the format).
public struct LocalConfig: Equatable, Sendable {
    /// The workloads in file order (the model keys them by uid).
    public var workloads: [Workload] = []
    /// Everything the file describes. A workload's `services` map gives the services' endpoints
    /// (`MeshModel.endpoints(of:)`); services or policies it names that the file lacks are
    /// staged or reported as unknown by the model, not refused.
    public var model = MeshModel()

    public init() {}

    /// Why the file was refused, prefixed with the setting's name:
    /// `LOCAL_XDS_PATH: workloads[2].protocol: expected HBONE or TCP, got "x" (line 14)`.
    public struct ParseError: Error, CustomStringConvertible, Sendable {
        public let description: String
        init(_ description: String) { self.description = "LOCAL_XDS_PATH: \(description)" }
    }

    /// Parses the YAML (or JSON) text. An empty document is an empty configuration.
    public static func parse(_ text: String) throws -> LocalConfig {
        let document: YAMLNode?
        do { document = try YAMLReader.parse(text) } catch { throw ParseError("\(error)") }
        guard let root = document else { return LocalConfig() }
        guard root.tag == nil, let entries = root.mappingEntries else {
            throw ParseError("the top level must be a mapping, got \(root.kindName) (line \(root.line))")
        }
        var config = LocalConfig()
        for entry in entries {
            switch entry.key {
            case "workloads": try config.addWorkloads(entry.value)
            case "services": try config.addServices(entry.value)
            case "policies": try config.addPolicies(entry.value)
            default:
                throw ParseError("unknown top-level key \(YAMLError.quote(entry.key)) (line \(entry.line)); "
                                 + "expected workloads, services or policies")
            }
        }
        // A policy a workload names but the file lacks is a typo that would silently drop it
        // (a STRICT-mTLS DENY, say): refused, as everything else that would fail silently.
        for (index, workload) in config.workloads.enumerated() {
            for key in workload.authorizationPolicies where config.model.policies[key] == nil {
                throw ParseError("workloads[\(index)].authorizationPolicies: no policy \(YAMLError.quote(key)) in the file")
            }
        }
        return config
    }

    /// The identities to prefetch (ISTIO_COMPAT §4.4): HBONE workloads on this node (all of them
    /// when `node` is empty), as sorted, unique `spiffe://<td>/ns/<ns>/sa/<sa>`. The local format
    /// does not default an empty trust domain or service account, so such workloads have no
    /// identity: each one is described in `skipped` for the caller to log.
    public func wantedIdentities(node: String) -> (identities: [String], skipped: [String]) {
        var identities = Set<String>()
        var skipped: [String] = []
        for (index, workload) in workloads.enumerated()
        where workload.tunnelProtocol == .hbone && (node.isEmpty || workload.node == node) {
            var missing: [String] = []
            if workload.trustDomain.isEmpty { missing.append("trustDomain") }
            if workload.serviceAccount.isEmpty { missing.append("serviceAccount") }
            guard missing.isEmpty else {
                let name = workload.name.isEmpty ? "(unnamed)" : workload.name
                skipped.append("workloads[\(index)] \(YAMLError.quote(workload.namespace + "/" + name)) has no "
                               + missing.joined(separator: " or ") + ", so it gets no certificate")
                continue
            }
            identities.insert("spiffe://\(workload.trustDomain)/ns/\(workload.namespace)/sa/\(workload.serviceAccount)")
        }
        return (identities.sorted(), skipped)
    }
}

// MARK: - Top-level lists

extension LocalConfig {
    /// Reads `workloads` into the list and the model; a uid used twice is an error.
    private mutating func addWorkloads(_ node: YAMLNode) throws {
        var firstUse: [String: String] = [:]
        for (index, item) in try Self.sequence(node, path: "workloads").enumerated() {
            let path = "workloads[\(index)]"
            let workload = try Self.workload(item, path: path, index: index)
            if let first = firstUse[workload.uid] {
                throw ParseError("\(path): duplicate uid \(YAMLError.quote(workload.uid)), also used by \(first) (line \(item.line))")
            }
            firstUse[workload.uid] = path
            workloads.append(workload)
            model.insert(workload)
        }
    }

    /// Reads `services` into the model; a `namespace/hostname` used twice is an error.
    private mutating func addServices(_ node: YAMLNode) throws {
        var firstUse: [String: String] = [:]
        for (index, item) in try Self.sequence(node, path: "services").enumerated() {
            let path = "services[\(index)]"
            let service = try Self.service(item, path: path)
            if let first = firstUse[service.key] {
                throw ParseError("\(path): duplicate service \(YAMLError.quote(service.key)) (namespace/hostname), "
                                 + "also used by \(first) (line \(item.line))")
            }
            firstUse[service.key] = path
            model.insert(service)
        }
    }

    /// Reads `policies` into the model; a `namespace/name` used twice is an error.
    private mutating func addPolicies(_ node: YAMLNode) throws {
        var firstUse: [String: String] = [:]
        for (index, item) in try Self.sequence(node, path: "policies").enumerated() {
            let path = "policies[\(index)]"
            let policy = try Self.policy(item, path: path)
            if let first = firstUse[policy.key] {
                throw ParseError("\(path): duplicate policy \(YAMLError.quote(policy.key)) (namespace/name), "
                                 + "also used by \(first) (line \(item.line))")
            }
            firstUse[policy.key] = path
            model.insert(policy)
        }
    }
}

// MARK: - Workloads

extension LocalConfig {
    /// Reads one workload mapping; `namespace` and `workloadIps` are required (the list may be
    /// empty). A workload without a `uid` gets `derivedUID`.
    static func workload(_ node: YAMLNode, path: String, index: Int) throws -> Workload {
        let entries = try mapping(node, path: path)
        var workload = Workload(uid: "", namespace: "")
        for entry in entries {
            let field = "\(path).\(entry.key)"
            if try applyText(entry, to: &workload, field: field) { continue }
            if try applyTyped(entry, to: &workload, field: field) { continue }
            if try applyStructured(entry, to: &workload, field: field) { continue }
            throw unknownKey(entry, path: path)
        }
        try requireKeys(["namespace", "workloadIps"], in: entries, node: node, path: path)
        if workload.uid.isEmpty { workload.uid = derivedUID(workload, index: index) }
        return workload
    }

    /// The uid of a workload written without one: `local/<namespace>/<x>` where `x` is its name,
    /// else its hostname, else its first address, else its position in the file (`workloads[3]`).
    /// Two such workloads that derive the same uid are refused as duplicates: give them a `uid`.
    static func derivedUID(_ workload: Workload, index: Int) -> String {
        let prefix = "local/\(workload.namespace)/"
        if !workload.name.isEmpty { return prefix + workload.name }
        if !workload.hostname.isEmpty { return prefix + workload.hostname }
        if let address = workload.addresses.first { return prefix + "\(address)" }
        return prefix + "workloads[\(index)]"
    }

    /// Stores a text field; false when `entry` is not one.
    private static func applyText(_ entry: YAMLNode.Entry, to workload: inout Workload, field: String) throws -> Bool {
        let value = entry.value
        switch entry.key {
        case "uid": workload.uid = try nonEmptyString(value, path: field)
        case "name": workload.name = try string(value, path: field)
        case "namespace": workload.namespace = try kubernetesName(value, path: field, maximumLength: 63, underscore: false)
        case "serviceAccount":
            workload.serviceAccount = try kubernetesName(value, path: field, maximumLength: 253, underscore: false)
        case "trustDomain":
            // SPIFFE trust domains also allow '_'.
            workload.trustDomain = try kubernetesName(value, path: field, maximumLength: 255, underscore: true)
        case "hostname": workload.hostname = try hostname(value, path: field)
        case "network": workload.network = try network(value, path: field)
        case "node": workload.node = try string(value, path: field)
        case "canonicalName": workload.canonicalName = try string(value, path: field)
        case "canonicalRevision": workload.canonicalRevision = try string(value, path: field)
        case "workloadName": workload.workloadName = try string(value, path: field)
        case "clusterId": workload.clusterId = try string(value, path: field)
        default: return false
        }
        return true
    }

    /// Stores an enum, boolean or integer field; false when `entry` is not one.
    private static func applyTyped(_ entry: YAMLNode.Entry, to workload: inout Workload, field: String) throws -> Bool {
        let value = entry.value
        switch entry.key {
        case "protocol": workload.tunnelProtocol = try choice(value, path: field, [.hbone, .none])
        case "workloadType": workload.workloadType = try choice(value, path: field, [.deployment, .cronjob, .pod, .job])
        case "status": workload.status = try choice(value, path: field, [.healthy, .unhealthy])
        case "networkMode": workload.networkMode = try choice(value, path: field, [.standard, .hostNetwork])
        case "nativeTunnel": workload.nativeTunnel = try bool(value, path: field)
        case "capacity": workload.capacity = try integer(value, path: field, maximum: UInt32.max)
        default: return false
        }
        return true
    }

    /// Stores a list or object field; false when `entry` is not one.
    private static func applyStructured(_ entry: YAMLNode.Entry, to workload: inout Workload, field: String) throws -> Bool {
        let value = entry.value
        switch entry.key {
        case "workloadIps": workload.addresses = try items(value, path: field, address)
        case "waypoint": workload.waypoint = try gateway(value, path: field)
        case "networkGateway": workload.networkGateway = try gateway(value, path: field)
        case "services": workload.services = try endpointPorts(value, path: field)
        case "authorizationPolicies": workload.authorizationPolicies = try items(value, path: field, policyKey)
        case "applicationTunnel": workload.applicationTunnel = try applicationTunnel(value, path: field)
        case "locality": workload.locality = try locality(value, path: field)
        default: return false
        }
        return true
    }

    /// A workload's `services`: `"namespace/hostname"` → `{servicePort: targetPort}`.
    private static func endpointPorts(_ node: YAMLNode, path: String) throws -> [String: [UInt16: UInt16]] {
        var services: [String: [UInt16: UInt16]] = [:]
        for entry in try mapping(node, path: path) {
            guard let slash = entry.key.firstIndex(of: "/"), isKubernetesName(String(entry.key[..<slash]), maximumLength: 63),
                  isHostname(String(entry.key[entry.key.index(after: slash)...])) else {
                throw ParseError("\(path): expected \"namespace/hostname\" as the key, got \(YAMLError.quote(entry.key)) "
                                 + "(line \(entry.line))")
            }
            services[entry.key] = try portMap(entry.value, path: "\(path)[\(YAMLError.quote(entry.key))]")
        }
        return services
    }

    /// A `namespace/name` policy key.
    private static func policyKey(_ node: YAMLNode, path: String) throws -> String {
        let text = try string(node, path: path)
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, isKubernetesName(String(parts[0]), maximumLength: 63), !parts[1].isEmpty else {
            throw ParseError("\(path): expected \"namespace/name\", got \(YAMLError.quote(text)) (line \(node.line))")
        }
        return text
    }
}

// MARK: - Field checks

extension LocalConfig {
    private static let unsafeCategories: Set<Unicode.GeneralCategory> = [.control, .format]

    /// `path: unknown key "x" (line n)`.
    static func unknownKey(_ entry: YAMLNode.Entry, path: String) -> ParseError {
        ParseError("\(path): unknown key \(YAMLError.quote(entry.key)) (line \(entry.line))")
    }

    /// Refuses a mapping that lacks one of `keys`, naming the first missing one.
    static func requireKeys(_ keys: [String], in entries: [YAMLNode.Entry], node: YAMLNode, path: String) throws {
        for key in keys where !entries.contains(where: { $0.key == key }) {
            throw ParseError("\(path).\(key): required (line \(node.line))")
        }
    }

    /// The entries of an untagged mapping.
    static func mapping(_ node: YAMLNode, path: String) throws -> [YAMLNode.Entry] {
        guard node.tag == nil, let entries = node.mappingEntries else {
            throw ParseError("\(path): expected a mapping, got \(node.kindName) (line \(node.line))")
        }
        return entries
    }

    /// The items of an untagged sequence.
    static func sequence(_ node: YAMLNode, path: String) throws -> [YAMLNode] {
        guard node.tag == nil, let items = node.sequenceItems else {
            throw ParseError("\(path): expected a sequence, got \(node.kindName) (line \(node.line))")
        }
        return items
    }

    /// The items of an untagged sequence, each read by `read` with its path `path[i]`.
    static func items<T>(_ node: YAMLNode, path: String, _ read: (YAMLNode, String) throws -> T) throws -> [T] {
        try sequence(node, path: path).enumerated().map { try read($0.element, "\(path)[\($0.offset)]") }
    }

    /// The text of an untagged, non-null scalar without control or format characters (which
    /// double-quoted escapes can produce: newlines, C1 controls, bidi overrides), so it is safe
    /// to log and to show.
    static func string(_ node: YAMLNode, path: String) throws -> String {
        guard node.tag == nil else {
            throw ParseError("\(path): expected a string, got \(node.kindName) (line \(node.line))")
        }
        return try scalarText(node, path: path)
    }

    /// The text of a non-null scalar, tagged or not, checked as `string` checks it.
    static func scalarText(_ node: YAMLNode, path: String) throws -> String {
        guard !node.isNull, let text = node.scalarText else {
            throw ParseError("\(path): expected a string, got \(node.kindName) (line \(node.line))")
        }
        guard !text.unicodeScalars.contains(where: { unsafeCategories.contains($0.properties.generalCategory) }) else {
            throw ParseError("\(path): control or format characters are not allowed (line \(node.line))")
        }
        return text
    }

    /// A `string` that is not empty.
    static func nonEmptyString(_ node: YAMLNode, path: String) throws -> String {
        let text = try string(node, path: path)
        guard !text.isEmpty else { throw ParseError("\(path): must not be empty (line \(node.line))") }
        return text
    }

    /// A network name: any `string` without '/', which separates it from the IP in `network/ip`.
    static func network(_ node: YAMLNode, path: String) throws -> String {
        let text = try string(node, path: path)
        guard !text.contains("/") else {
            throw ParseError("\(path): a network name cannot contain '/', got \(YAMLError.quote(text)) (line \(node.line))")
        }
        return text
    }

    /// A non-empty name of lowercase letters, digits, '-' and '.' (and '_' when allowed),
    /// starting and ending with a letter or digit: what Kubernetes names and SPIFFE trust domains
    /// allow, so nothing odd (a '/', "..", uppercase, spaces) is spliced into a SPIFFE id.
    static func kubernetesName(_ node: YAMLNode, path: String, maximumLength: Int, underscore: Bool) throws -> String {
        let text = try string(node, path: path)
        guard !text.isEmpty else { throw ParseError("\(path): must not be empty (line \(node.line))") }
        guard isKubernetesName(text, maximumLength: maximumLength, underscore: underscore) else {
            let characters = underscore ? "lowercase letters, digits, '-', '.' and '_'" : "lowercase letters, digits, '-' and '.'"
            throw ParseError("\(path): expected at most \(maximumLength) \(characters), starting and ending with a letter "
                             + "or digit, got \(YAMLError.quote(text)) (line \(node.line))")
        }
        return text
    }

    /// The check behind `kubernetesName`.
    static func isKubernetesName(_ text: String, maximumLength: Int, underscore: Bool = false) -> Bool {
        let bytes = Array(text.utf8)
        func isAlphanumeric(_ byte: UInt8) -> Bool { (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x30 && byte <= 0x39) }
        func isAllowed(_ byte: UInt8) -> Bool {
            isAlphanumeric(byte) || byte == 0x2D || byte == 0x2E || (underscore && byte == 0x5F)
        }
        guard let first = bytes.first, let last = bytes.last else { return false }
        return bytes.count <= maximumLength && isAlphanumeric(first) && isAlphanumeric(last) && bytes.allSatisfy(isAllowed)
    }

    /// A DNS name as services and DNS-resolved workloads use: 1 to 253 letters, digits, '-',
    /// '.', '_' and '*' (ServiceEntry wildcards); no '/', blanks or anything else.
    static func hostname(_ node: YAMLNode, path: String) throws -> String {
        let text = try string(node, path: path)
        guard isHostname(text) else {
            throw ParseError("\(path): expected a hostname of 1 to 253 letters, digits, '-', '.', '_' or '*', "
                             + "got \(YAMLError.quote(text)) (line \(node.line))")
        }
        return text
    }

    /// The check behind `hostname`.
    static func isHostname(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        return !bytes.isEmpty && bytes.count <= 253 && bytes.allSatisfy { byte in
            (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x30 && byte <= 0x39)
                || byte == 0x2D || byte == 0x2E || byte == 0x5F || byte == 0x2A
        }
    }

    /// An IPv4 or IPv6 address literal (strict: no zone, prefix or brackets).
    static func address(_ node: YAMLNode, path: String) throws -> IPAddress {
        let text = try string(node, path: path)
        guard let address = IPAddress(text) else {
            throw ParseError("\(path): expected an IPv4 or IPv6 address, got \(YAMLError.quote(text)) (line \(node.line))")
        }
        return address
    }
}

// MARK: - Typed scalars

extension LocalConfig {
    /// One of `cases`, spelled exactly as its raw value (quoted or not).
    static func choice<T: RawRepresentable>(_ node: YAMLNode, path: String, _ cases: [T]) throws -> T where T.RawValue == String {
        if node.tag == nil, !node.isNull, let text = node.scalarText, let value = cases.first(where: { $0.rawValue == text }) {
            return value
        }
        let names = cases.map(\.rawValue)
        let expected = names.count < 2 ? names.joined() : names.dropLast().joined(separator: ", ") + " or " + names[names.count - 1]
        throw ParseError("\(path): expected \(expected), got \(shown(node)) (line \(node.line))")
    }

    /// `true` or `false` (also `True`/`TRUE`/`False`/`FALSE`, the YAML core schema spellings), unquoted.
    static func bool(_ node: YAMLNode, path: String) throws -> Bool {
        if node.tag == nil, case .scalar(let text, false) = node.content {
            switch text {
            case "true", "True", "TRUE": return true
            case "false", "False", "FALSE": return false
            default: break
            }
        }
        throw ParseError("\(path): expected true or false, got \(shown(node)) (line \(node.line))")
    }

    /// An unquoted decimal integer from 0 to `maximum`, without sign or leading zeros.
    static func integer(_ node: YAMLNode, path: String, maximum: UInt32) throws -> UInt32 {
        if node.tag == nil, case .scalar(let text, false) = node.content, let value = decimal(text, maximum: maximum) {
            return value
        }
        throw ParseError("\(path): expected an integer from 0 to \(maximum), got \(shown(node)) (line \(node.line))")
    }

    /// A port number, 0 to 65535.
    static func port(_ node: YAMLNode, path: String) throws -> UInt16 {
        UInt16(truncatingIfNeeded: try integer(node, path: path, maximum: UInt32(UInt16.max)))
    }

    /// `{servicePort: targetPort}`: keys are ports too (quoted or not, as JSON writes them).
    static func portMap(_ node: YAMLNode, path: String) throws -> [UInt16: UInt16] {
        var ports: [UInt16: UInt16] = [:]
        for entry in try mapping(node, path: path) {
            guard let key = decimal(entry.key, maximum: UInt32(UInt16.max)) else {
                throw ParseError("\(path): expected a port from 0 to 65535 as the key, got \(YAMLError.quote(entry.key)) "
                                 + "(line \(entry.line))")
            }
            ports[UInt16(truncatingIfNeeded: key)] = try port(entry.value, path: "\(path).\(entry.key)")
        }
        return ports
    }

    /// Digits only, no leading zero (`010` is octal to some readers), at most `maximum`.
    static func decimal(_ text: String, maximum: UInt32) -> UInt32? {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty, bytes.count <= 10, bytes.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              bytes.count == 1 || bytes[0] != 0x30 else { return nil }
        var value: UInt64 = 0
        for byte in bytes { value = value * 10 + UInt64(byte - 0x30) }
        return value <= UInt64(maximum) ? UInt32(truncatingIfNeeded: value) : nil
    }

    /// A value for an error message: a scalar's quoted text (noting when it was written quoted,
    /// which matters for numbers and booleans), or what kind of node it is.
    static func shown(_ node: YAMLNode) -> String {
        guard !node.isNull, node.tag == nil, case .scalar(let text, let quoted) = node.content else { return node.kindName }
        return quoted ? "the quoted string \(YAMLError.quote(text))" : YAMLError.quote(text)
    }
}
