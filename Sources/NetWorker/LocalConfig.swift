import Shared
import Yams

/// The parts of the local configuration file (LOCAL_XDS_PATH, ISTIO_COMPAT §19) the NetWorker
/// uses so far: the workloads' identities, to ask the CertWorker for their certificates.
/// Services and policies are not applied yet.
struct LocalConfig {
    struct Workload: Equatable {
        var name: String
        var namespace: String
        var serviceAccount: String
        var trustDomain: String
        var node: String
        var protocolName: String
    }

    var workloads: [Workload] = []

    struct ParseError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = "LOCAL_XDS_PATH: \(description)" }
    }

    /// Parses the YAML (or JSON) text. Unknown tags such as `!Exact` inside policies are accepted
    /// here since only workloads are read.
    static func parse(_ text: String) throws -> LocalConfig {
        let node: Node?
        do { node = try Yams.compose(yaml: text) } catch { throw ParseError("not YAML: \(error)") }
        guard let root = node?.mapping else {
            if node == nil { return LocalConfig() }
            throw ParseError("the top level must be a mapping")
        }
        var config = LocalConfig()
        guard let list = root["workloads"] else { return config }
        guard let items = list.sequence else { throw ParseError("workloads must be a list") }
        for (index, item) in items.enumerated() {
            guard let fields = item.mapping else { throw ParseError("workloads[\(index)] must be a mapping") }
            func string(_ key: String) -> String { fields[key]?.string ?? "" }
            guard !string("namespace").isEmpty, fields["workloadIps"] != nil else {
                throw ParseError("workloads[\(index)] needs namespace and workloadIps")
            }
            config.workloads.append(Workload(name: string("name"), namespace: string("namespace"),
                                             serviceAccount: string("serviceAccount"), trustDomain: string("trustDomain"),
                                             node: string("node"), protocolName: string("protocol")))
        }
        return config
    }

    /// The identities to prefetch (ISTIO_COMPAT §4.4): HBONE workloads on this node (all of them
    /// when NODE_NAME is unset). The local format does not default an empty trust domain or
    /// service account, so such workloads have no identity and are skipped.
    func wantedIdentities(node: String) -> [String] {
        var result = Set<String>()
        for workload in workloads where workload.protocolName == "HBONE" && (node.isEmpty || workload.node == node) {
            guard !workload.trustDomain.isEmpty, !workload.serviceAccount.isEmpty else {
                Log.warn("workload \(workload.namespace)/\(workload.name) has no trustDomain or serviceAccount; no certificate")
                continue
            }
            result.insert("spiffe://\(workload.trustDomain)/ns/\(workload.namespace)/sa/\(workload.serviceAccount)")
        }
        return result.sorted()
    }
}
