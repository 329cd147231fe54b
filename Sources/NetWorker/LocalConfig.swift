// No imports: this file and YAMLReader.swift also build standalone into the libFuzzer target
// Fuzz/targets/local_config.swift.

/// The parts of the local configuration file (LOCAL_XDS_PATH, ISTIO_COMPAT §19) the NetWorker
/// uses so far: the workloads' identities, to ask the CertWorker for their certificates.
///
/// The file is checked strictly, so a typo fails loudly instead of silently changing what is
/// served: only the top-level keys `workloads`, `services` and `policies` are allowed, each a
/// sequence; workloads must be mappings with known keys only; the fields that end up in a SPIFFE
/// id are restricted to Kubernetes-name characters. Services and policies are checked to be
/// sequences and are not applied yet; workload fields that are not used are only type-checked
/// where their shape is certain (strings, `authorizationPolicies`, `services`).
struct LocalConfig: Equatable {
    /// One workload entry. `protocolName` is "HBONE" or "TCP" (ztunnel's default when absent).
    struct Workload: Equatable {
        var name: String
        var namespace: String
        var serviceAccount: String
        var trustDomain: String
        var node: String
        var protocolName: String
    }

    var workloads: [Workload] = []

    /// Why the file was refused, prefixed with the setting's name.
    struct ParseError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = "LOCAL_XDS_PATH: \(description)" }
    }

    /// Parses the YAML (or JSON) text. An empty document is an empty configuration.
    static func parse(_ text: String) throws -> LocalConfig {
        let document: YAMLNode?
        do { document = try YAMLReader.parse(text) } catch { throw ParseError("\(error)") }
        guard let root = document else { return LocalConfig() }
        guard root.tag == nil, let entries = root.mappingEntries else {
            throw ParseError("the top level must be a mapping, got \(root.kindName) (line \(root.line))")
        }
        var config = LocalConfig()
        for entry in entries {
            guard ["workloads", "services", "policies"].contains(entry.key) else {
                throw ParseError("unknown top-level key \(YAMLError.quote(entry.key)) (line \(entry.line)); "
                                 + "expected workloads, services or policies")
            }
            let items = try sequence(entry.value, path: entry.key)
            if entry.key == "workloads" {
                for (index, item) in items.enumerated() {
                    config.workloads.append(try workload(item, path: "workloads[\(index)]"))
                }
            }
        }
        return config
    }

    /// The identities to prefetch (ISTIO_COMPAT §4.4): HBONE workloads on this node (all of them
    /// when `node` is empty), as sorted, unique `spiffe://<td>/ns/<ns>/sa/<sa>`. The local format
    /// does not default an empty trust domain or service account, so such workloads have no
    /// identity: each one is described in `skipped` for the caller to log.
    func wantedIdentities(node: String) -> (identities: [String], skipped: [String]) {
        var identities = Set<String>()
        var skipped: [String] = []
        for (index, workload) in workloads.enumerated()
        where workload.protocolName == "HBONE" && (node.isEmpty || workload.node == node) {
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

// MARK: - Workloads

extension LocalConfig {
    /// Reads one workload mapping; `namespace` and `workloadIps` are required.
    private static func workload(_ node: YAMLNode, path: String) throws -> Workload {
        guard node.tag == nil, let entries = node.mappingEntries else {
            throw ParseError("\(path): expected a mapping, got \(node.kindName) (line \(node.line))")
        }
        var workload = Workload(name: "", namespace: "", serviceAccount: "", trustDomain: "", node: "", protocolName: "TCP")
        var hasAddresses = false
        for entry in entries {
            try apply(entry, to: &workload, path: path)
            hasAddresses = hasAddresses || entry.key == "workloadIps"
        }
        guard !workload.namespace.isEmpty else { throw ParseError("\(path).namespace: required (line \(node.line))") }
        guard hasAddresses else { throw ParseError("\(path).workloadIps: required (line \(node.line))") }
        return workload
    }

    /// Checks one workload field and stores the ones the NetWorker uses. Unknown keys are errors.
    private static func apply(_ entry: YAMLNode.Entry, to workload: inout Workload, path: String) throws {
        let field = "\(path).\(entry.key)"
        let value = entry.value
        switch entry.key {
        case "name": workload.name = try string(value, path: field)
        case "node": workload.node = try string(value, path: field)
        case "namespace": workload.namespace = try kubernetesName(value, path: field, maximumLength: 63, underscore: false)
        case "serviceAccount":
            workload.serviceAccount = try kubernetesName(value, path: field, maximumLength: 253, underscore: false)
        case "trustDomain":
            // SPIFFE trust domains also allow '_'.
            workload.trustDomain = try kubernetesName(value, path: field, maximumLength: 255, underscore: true)
        case "protocol":
            let name = try string(value, path: field)
            guard name == "HBONE" || name == "TCP" else {
                throw ParseError("\(field): expected HBONE or TCP, got \(YAMLError.quote(name)) (line \(value.line))")
            }
            workload.protocolName = name
        case "workloadIps":
            for (index, item) in try sequence(value, path: field).enumerated() {
                let address = try string(item, path: "\(field)[\(index)]")
                guard isIPAddress(address) else {
                    throw ParseError("\(field)[\(index)]: expected an IPv4 or IPv6 address, got \(YAMLError.quote(address)) (line \(item.line))")
                }
            }
        case "uid", "workloadName", "workloadType", "canonicalName", "canonicalRevision", "hostname", "clusterId",
             "network", "networkMode", "status":
            _ = try string(value, path: field)
        case "authorizationPolicies":
            for (index, item) in try sequence(value, path: field).enumerated() {
                _ = try string(item, path: "\(field)[\(index)]")
            }
        case "services":
            guard value.tag == nil, value.mappingEntries != nil else {
                throw ParseError("\(field): expected a mapping, got \(value.kindName) (line \(value.line))")
            }
        case "waypoint", "networkGateway", "nativeTunnel", "applicationTunnel", "locality", "capacity":
            break  // Known, not applied yet.
        default:
            throw ParseError("\(path): unknown key \(YAMLError.quote(entry.key)) (line \(entry.line))")
        }
    }
}

// MARK: - Field checks

extension LocalConfig {
    private static let unsafeCategories: Set<Unicode.GeneralCategory> = [.control, .format]

    /// The items of an untagged sequence.
    private static func sequence(_ node: YAMLNode, path: String) throws -> [YAMLNode] {
        guard node.tag == nil, let items = node.sequenceItems else {
            throw ParseError("\(path): expected a sequence, got \(node.kindName) (line \(node.line))")
        }
        return items
    }

    /// The text of an untagged, non-null scalar without control or format characters (which
    /// double-quoted escapes can produce: newlines, C1 controls, bidi overrides), so it is safe
    /// to log and to show.
    private static func string(_ node: YAMLNode, path: String) throws -> String {
        guard !node.isNull, node.tag == nil, let text = node.scalarText else {
            throw ParseError("\(path): expected a string, got \(node.kindName) (line \(node.line))")
        }
        guard !text.unicodeScalars.contains(where: { unsafeCategories.contains($0.properties.generalCategory) }) else {
            throw ParseError("\(path): control or format characters are not allowed (line \(node.line))")
        }
        return text
    }

    /// A non-empty name of lowercase letters, digits, '-' and '.' (and '_' when allowed),
    /// starting and ending with a letter or digit: what Kubernetes names and SPIFFE trust domains
    /// allow, so nothing odd (a '/', "..", uppercase, spaces) is spliced into a SPIFFE id.
    private static func kubernetesName(_ node: YAMLNode, path: String, maximumLength: Int, underscore: Bool) throws -> String {
        let text = try string(node, path: path)
        let bytes = Array(text.utf8)
        func isAlphanumeric(_ byte: UInt8) -> Bool { (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x30 && byte <= 0x39) }
        func isAllowed(_ byte: UInt8) -> Bool {
            isAlphanumeric(byte) || byte == 0x2D || byte == 0x2E || (underscore && byte == 0x5F)
        }
        guard let first = bytes.first, let last = bytes.last else {
            throw ParseError("\(path): must not be empty (line \(node.line))")
        }
        guard bytes.count <= maximumLength, isAlphanumeric(first), isAlphanumeric(last), bytes.allSatisfy(isAllowed) else {
            let characters = underscore ? "lowercase letters, digits, '-', '.' and '_'" : "lowercase letters, digits, '-' and '.'"
            throw ParseError("\(path): expected at most \(maximumLength) \(characters), starting and ending with a letter "
                             + "or digit, got \(YAMLError.quote(text)) (line \(node.line))")
        }
        return text
    }
}

// MARK: - IP address literals

extension LocalConfig {
    /// True for a strict IPv4 (dotted quad, no leading zeros) or IPv6 (RFC 4291 text form, with
    /// an optional trailing dotted quad) literal. Zone ids (`%eth0`), prefixes and brackets are
    /// not addresses here.
    static func isIPAddress(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard bytes.count <= 45 else { return false }
        return bytes.contains(0x3A) ? isIPv6(bytes) : isIPv4(bytes[...])
    }

    /// Four decimal parts of 0-255 separated by dots, without leading zeros.
    private static func isIPv4(_ bytes: ArraySlice<UInt8>) -> Bool {
        var dots = 0, digits = 0, value = 0
        for byte in bytes {
            if byte == 0x2E {
                guard digits > 0 else { return false }
                dots += 1
                digits = 0
                value = 0
                continue
            }
            // "01" is refused: some parsers read a leading zero as octal.
            guard byte >= 0x30, byte <= 0x39, !(digits > 0 && value == 0) else { return false }
            value = value * 10 + Int(byte - 0x30)
            digits += 1
            guard value <= 255 else { return false }
        }
        return dots == 3 && digits > 0
    }

    /// Groups of 1-4 hex digits separated by ':', eight of them, or fewer with one "::" standing
    /// for the missing zero groups; the last two may be written as a dotted quad.
    private static func isIPv6(_ bytes: [UInt8]) -> Bool {
        var groups = 0, compressed = false, index = 0
        if bytes.starts(with: [0x3A, 0x3A]) {
            compressed = true
            index = 2
        }
        while index < bytes.count {
            let start = index
            while index < bytes.count, isHexDigit(bytes[index]) { index += 1 }
            if index < bytes.count, bytes[index] == 0x2E {
                // A trailing dotted quad stands for the last two groups.
                guard isIPv4(bytes[start...]) else { return false }
                groups += 2
                break
            }
            guard index - start >= 1, index - start <= 4 else { return false }
            groups += 1
            guard index < bytes.count else { break }
            guard bytes[index] == 0x3A, index + 1 < bytes.count else { return false }
            index += 1
            if bytes[index] == 0x3A {
                guard !compressed else { return false }
                compressed = true
                index += 1
            }
        }
        return compressed ? groups <= 7 : groups == 8
    }

    private static func isHexDigit(_ byte: UInt8) -> Bool {
        (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x46) || (byte >= 0x61 && byte <= 0x66)
    }
}
