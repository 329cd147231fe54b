/// An L4 authorization policy (ISTIO_COMPAT §7.2, §12), keyed `namespace/name`.
struct Policy: Equatable, Sendable {
    enum Scope: String, Sendable { case global = "Global", namespace = "Namespace", workloadSelector = "WorkloadSelector" }
    enum Action: String, Sendable { case allow = "Allow", deny = "Deny" }

    var name: String
    var namespace: String
    var scope: Scope
    var action: Action
    /// Groups are OR-ed; each group's clauses are AND-ed; each clause's matches are OR-ed.
    var groups: [[[Match]]]
    var dryRun = false

    var key: String { "\(namespace)/\(name)" }
}

/// One match of a clause: every populated field pair must hold (ISTIO_COMPAT §12.3).
struct Match: Equatable, Sendable {
    var namespaces: [StringMatch] = []
    var notNamespaces: [StringMatch] = []
    var principals: [StringMatch] = []
    var notPrincipals: [StringMatch] = []
    var sourceIps: [IPPrefix] = []
    var notSourceIps: [IPPrefix] = []
    var destinationIps: [IPPrefix] = []
    var notDestinationIps: [IPPrefix] = []
    var destinationPorts: [UInt16] = []
    var notDestinationPorts: [UInt16] = []
    var serviceAccounts: [ServiceAccountMatch] = []
    var notServiceAccounts: [ServiceAccountMatch] = []

    /// A match with no field at all (never matches; istiod leaves these when it drops L7 fields).
    var isEmpty: Bool { self == Match() }
}

enum StringMatch: Equatable, Sendable {
    case exact(String)
    case prefix(String)
    case suffix(String)
    /// Any non-empty value.
    case presence

    func matches(_ value: String) -> Bool {
        switch self {
        case .exact(let text): return value == text
        case .prefix(let text): return value.hasPrefix(text)
        case .suffix(let text): return value.hasSuffix(text)
        case .presence: return !value.isEmpty
        }
    }
}

struct ServiceAccountMatch: Equatable, Sendable {
    var namespace: String
    var serviceAccount: String
}
