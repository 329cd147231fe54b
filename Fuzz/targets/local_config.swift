// libFuzzer target for the local configuration reader (LOCAL_XDS_PATH). Built standalone, with
// no package: the reader, its checks and the mesh model they fill have no imports.
//
//   swiftc -parse-as-library -sanitize=fuzzer,address -O Sources/Mesh/*.swift \
//     Fuzz/targets/local_config.swift -o /tmp/fuzz_local_config
//   /tmp/fuzz_local_config -max_total_time=60 Fuzz/seeds/local_config
//
// Besides "never crash", it checks invariants and traps (fatalError) when one breaks:
// parsing is deterministic; every identity is a well-formed, sorted, unique SPIFFE id; the model
// holds exactly the parsed workloads (unique uids, each address indexed to its workload) and
// every service by each of its VIPs; and any accepted tree, written back out as quoted flow YAML,
// reads back as the same tree. The same text is also read as PROXY_CONFIG and as the mesh file
// (ProxyConfig.swift, on the same reader): deterministic, values in their ranges, metadata names
// unique and non-empty.

/// Entry point: one input per call. Always returns 0 (libFuzzer's "keep going").
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzLocalConfig(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let data, size > 0 else { return 0 }
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    checkConfig(text)
    checkRoundTrip(text)
    checkProxyConfig(text)
    return 0
}

/// LocalConfig.parse is deterministic, and wantedIdentities only yields sound SPIFFE ids.
private func checkConfig(_ text: String) {
    let first: LocalConfig
    do { first = try LocalConfig.parse(text) } catch {
        guard (try? LocalConfig.parse(text)) == nil else { fatalError("parse succeeded only the second time") }
        return
    }
    guard (try? LocalConfig.parse(text)) == first else { fatalError("two parses of one text differ") }
    let wanted = first.wantedIdentities(node: "")
    guard wanted.identities.count + wanted.skipped.count <= first.workloads.count else {
        fatalError("more identities and skips than workloads")
    }
    for (index, identity) in wanted.identities.enumerated() {
        if index > 0 && wanted.identities[index - 1] >= identity { fatalError("identities not sorted and unique") }
        if !isSoundIdentity(identity) { fatalError("unsound identity \(identity.debugDescription)") }
    }
    for message in wanted.skipped
    where message.unicodeScalars.contains(where: { [.control, .format].contains($0.properties.generalCategory) }) {
        fatalError("a skipped message carries control characters: \(message.debugDescription)")
    }
    checkModel(first)
}

/// The model agrees with the parsed lists: one workload per uid, every standard-mode address
/// indexed to a workload that has it, every service found by each of its VIPs, policy keys
/// matching their policies.
private func checkModel(_ config: LocalConfig) {
    let model = config.model
    guard model.workloads.count == config.workloads.count else { fatalError("the model lost or gained workloads") }
    for workload in config.workloads {
        guard !workload.uid.isEmpty, model.workloads[workload.uid] == workload else { fatalError("workload \(workload.uid) differs") }
        guard !workload.namespace.isEmpty else { fatalError("a workload without a namespace passed") }
    }
    for (address, uid) in model.workloadByAddress {
        guard let workload = model.workloads[uid], workload.network == address.network, workload.addresses.contains(address.ip),
              workload.networkMode == .standard else { fatalError("address \(address) indexed to the wrong workload") }
    }
    for (key, service) in model.services {
        guard key == service.key, !service.hostname.isEmpty else { fatalError("service key \(key) is wrong") }
        for vip in service.vips where !model.services(at: vip).contains(service) { fatalError("VIP \(vip) does not find \(key)") }
        _ = model.endpoints(of: key)
    }
    for (key, policy) in model.policies where key != policy.key { fatalError("policy key \(key) is wrong") }
    for workload in config.workloads {
        let applying = model.policies(for: workload)
        guard applying.unknown.count <= workload.authorizationPolicies.count else { fatalError("unknown policies invented") }
    }
}

/// PROXY_CONFIG and the mesh file's defaultConfig read from the same text.
private func checkProxyConfig(_ text: String) {
    for read in [{ try ProxyConfig.parse(text) }, { try ProxyConfig.parseMeshConfig(text, origin: "mesh").config }] {
        let first: ProxyConfig?
        do { first = try read() } catch {
            guard (try? read()) == nil else { fatalError("a ProxyConfig parse succeeded only the second time") }
            continue
        }
        guard (try? read()) == first else { fatalError("two ProxyConfig parses of one text differ") }
        guard let config = first else { continue }
        for port in [config.proxyAdminPort, config.statsPort].compactMap({ $0 }) where !(1...65535).contains(port) {
            fatalError("a port outside 1-65535: \(port)")
        }
        if let threads = config.concurrency, !(0...65535).contains(threads) { fatalError("concurrency \(threads)") }
        var seen = Set<String>()
        for (key, _) in config.proxyMetadata where key.isEmpty || !seen.insert(key).inserted {
            fatalError("metadata name empty or repeated: \(key.debugDescription)")
        }
    }
}

/// `spiffe://<td>/ns/<ns>/sa/<sa>` with each part non-empty and made of the allowed characters.
private func isSoundIdentity(_ identity: String) -> Bool {
    guard identity.hasPrefix("spiffe://") else { return false }
    let parts = identity.dropFirst("spiffe://".count).split(separator: "/", omittingEmptySubsequences: false)
    guard parts.count == 5, parts[1] == "ns", parts[3] == "sa" else { return false }
    for part in [parts[0], parts[2], parts[4]] {
        guard let first = part.utf8.first, first != 0x2E, first != 0x2D else { return false }
        for byte in part.utf8 where !((byte >= 0x61 && byte <= 0x7A) || (byte >= 0x30 && byte <= 0x39) || byte == 0x2D
                                      || byte == 0x2E || byte == 0x5F) {
            return false
        }
    }
    return true
}

/// An accepted document, written back as flow YAML, reads back as the same tree (positions and
/// quoting aside).
private func checkRoundTrip(_ text: String) {
    guard let tree = (try? YAMLReader.parse(text)) ?? nil else { return }
    var emitted = ""
    emit(tree, into: &emitted)
    guard emitted.utf8.count <= YAMLReader.maximumBytes else { return }  // Quoting can grow it past the limit.
    let again: YAMLNode?
    do { again = try YAMLReader.parse(emitted) } catch {
        fatalError("re-reading the emitted tree failed: \(error)\n\(emitted)")
    }
    guard let again, sameShape(tree, again) else { fatalError("round trip changed the tree:\n\(emitted)") }
}

/// Writes a node as flow YAML with every scalar double-quoted. Recursion is bounded by the
/// reader's depth limit.
private func emit(_ node: YAMLNode, into out: inout String) {
    if let tag = node.tag { out += "!\(tag) " }
    switch node.content {
    case .scalar(let text, _):
        quote(text, into: &out)
    case .sequence(let items):
        out += "["
        for (index, item) in items.enumerated() {
            if index > 0 { out += ", " }
            emit(item, into: &out)
        }
        out += "]"
    case .mapping(let entries):
        out += "{"
        for (index, entry) in entries.enumerated() {
            if index > 0 { out += ",\n" }  // Line breaks inside flow collections are allowed.
            quote(entry.key, into: &out)
            out += ": "
            emit(entry.value, into: &out)
        }
        out += "}"
    }
}

/// Writes text as a double-quoted scalar, escaping quotes, backslashes and control characters.
private func quote(_ text: String, into out: inout String) {
    let hex: [Character] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f"]
    out += "\""
    for scalar in text.unicodeScalars {
        switch scalar.value {
        case 0x22: out += "\\\""
        case 0x5C: out += "\\\\"
        case 0..<0x20, 0x7F...0x9F:
            out += "\\u00"
            out.append(hex[Int(scalar.value >> 4)])
            out.append(hex[Int(scalar.value & 0xF)])
        default: out.unicodeScalars.append(scalar)
        }
    }
    out += "\""
}

/// Equal content, tags and keys, ignoring lines and whether scalars were quoted.
private func sameShape(_ a: YAMLNode, _ b: YAMLNode) -> Bool {
    guard a.tag == b.tag else { return false }
    switch (a.content, b.content) {
    case (.scalar(let x, _), .scalar(let y, _)):
        return x == y
    case (.sequence(let x), .sequence(let y)):
        return x.count == y.count && zip(x, y).allSatisfy { sameShape($0, $1) }
    case (.mapping(let x), .mapping(let y)):
        return x.count == y.count && zip(x, y).allSatisfy { $0.key == $1.key && sameShape($0.value, $1.value) }
    default:
        return false
    }
}
