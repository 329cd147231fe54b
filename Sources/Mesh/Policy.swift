/// An L4 authorization policy (ISTIO_COMPAT §7.2, §12), keyed `namespace/name`.
public struct Policy: Equatable, Sendable {
    public enum Scope: String, Sendable { case global = "Global", namespace = "Namespace", workloadSelector = "WorkloadSelector" }
    public enum Action: String, Sendable { case allow = "Allow", deny = "Deny" }

    public var name: String
    public var namespace: String
    public var scope: Scope
    public var action: Action
    /// Groups are OR-ed; each group's clauses are AND-ed; each clause's matches are OR-ed.
    public var groups: [[[Match]]]
    public var dryRun = false

    public var key: String { "\(namespace)/\(name)" }

    public init(name: String, namespace: String, scope: Scope, action: Action, groups: [[[Match]]], dryRun: Bool = false) {
        self.name = name
        self.namespace = namespace
        self.scope = scope
        self.action = action
        self.groups = groups
        self.dryRun = dryRun
    }
}

/// One match of a clause: every populated field pair must hold (ISTIO_COMPAT §12.3).
public struct Match: Equatable, Sendable {
    public var namespaces: [StringMatch] = []
    public var notNamespaces: [StringMatch] = []
    public var principals: [StringMatch] = []
    public var notPrincipals: [StringMatch] = []
    public var sourceIps: [IPPrefix] = []
    public var notSourceIps: [IPPrefix] = []
    public var destinationIps: [IPPrefix] = []
    public var notDestinationIps: [IPPrefix] = []
    public var destinationPorts: [UInt16] = []
    public var notDestinationPorts: [UInt16] = []
    public var serviceAccounts: [ServiceAccountMatch] = []
    public var notServiceAccounts: [ServiceAccountMatch] = []

    /// A match with no field at all (never matches; istiod leaves these when it drops L7 fields).
    public var isEmpty: Bool { self == Match() }

    public init(namespaces: [StringMatch] = [], notNamespaces: [StringMatch] = [], principals: [StringMatch] = [],
                notPrincipals: [StringMatch] = [], sourceIps: [IPPrefix] = [], notSourceIps: [IPPrefix] = [],
                destinationIps: [IPPrefix] = [], notDestinationIps: [IPPrefix] = [], destinationPorts: [UInt16] = [],
                notDestinationPorts: [UInt16] = [], serviceAccounts: [ServiceAccountMatch] = [],
                notServiceAccounts: [ServiceAccountMatch] = []) {
        self.namespaces = namespaces
        self.notNamespaces = notNamespaces
        self.principals = principals
        self.notPrincipals = notPrincipals
        self.sourceIps = sourceIps
        self.notSourceIps = notSourceIps
        self.destinationIps = destinationIps
        self.notDestinationIps = notDestinationIps
        self.destinationPorts = destinationPorts
        self.notDestinationPorts = notDestinationPorts
        self.serviceAccounts = serviceAccounts
        self.notServiceAccounts = notServiceAccounts
    }
}

public enum StringMatch: Equatable, Sendable {
    case exact(String)
    case prefix(String)
    case suffix(String)
    /// Any non-empty value.
    case presence

    public func matches(_ value: String) -> Bool {
        switch self {
        case .exact(let text): return value == text
        case .prefix(let text): return value.hasPrefix(text)
        case .suffix(let text): return value.hasSuffix(text)
        case .presence: return !value.isEmpty
        }
    }
}

public struct ServiceAccountMatch: Equatable, Sendable {
    public var namespace: String
    public var serviceAccount: String

    public init(namespace: String, serviceAccount: String) {
        self.namespace = namespace
        self.serviceAccount = serviceAccount
    }
}

