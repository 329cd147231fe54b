/// L4 authorization of one inbound connection against the policies that apply to its destination
/// workload (ISTIO_COMPAT §12): ztunnel's evaluation order and matching, with one deliberate
/// difference: a DENY policy that istiod reduced to empty matches, because its rules used only L7
/// attributes, denies every connection instead of none (fail closed, istio#61126).
///
/// Pure: no I/O, no logging, no clock, no state. It does not choose the policies (the caller
/// passes `MeshModel.policies(for:)`), does not resolve the destination port, and does not verify
/// the source identity: the caller passes the identity its TLS handshake proved, or nil.
public enum Authorizer {
    /// What a connection is judged on.
    public struct Connection: Equatable, Sendable {
        /// `spiffe://<td>/ns/<ns>/sa/<sa>` as the peer's certificate proved it, or nil when there is
        /// none (plaintext inbound). A string not of that shape is treated as no identity.
        public var sourceIdentity: String?
        /// The TCP peer's address.
        public var sourceIP: IPAddress
        public var destinationIP: IPAddress
        /// The resolved application port (not 15008).
        public var destinationPort: UInt16

        public init(sourceIdentity: String?, sourceIP: IPAddress, destinationIP: IPAddress, destinationPort: UInt16) {
            self.sourceIdentity = sourceIdentity
            self.sourceIP = sourceIP
            self.destinationIP = destinationIP
            self.destinationPort = destinationPort
        }
    }

    /// The verdict, with what the caller should log about dry-run policies that matched (they
    /// never change the verdict).
    public enum Decision: Equatable, Sendable {
        case allow(dryRunLogs: [String])
        /// `policy` is the key of the DENY policy that denied, nil when no ALLOW policy allowed.
        case deny(reason: String, policy: String?, dryRunLogs: [String])

        public var isAllowed: Bool {
            if case .allow = self { return true }
            return false
        }

        public var dryRunLogs: [String] {
            switch self {
            case .allow(let logs), .deny(_, _, let logs): return logs
            }
        }
    }

    /// Decides a connection against the policies that apply to its destination, in ztunnel's
    /// order (ISTIO_COMPAT §12.2): dry-run DENY matches are logged; an enforced DENY that matches
    /// (or is L7-only, see `failsClosed`) denies; dry-run ALLOW matches are logged; no enforced
    /// ALLOW policy allows; an enforced ALLOW that matches allows; otherwise deny.
    ///
    /// Does not filter `policies` by scope or namespace: every policy passed is applied. The first
    /// denying policy in the order given names the reason (`MeshModel` sorts them by key).
    public static func decide(_ policies: [Policy], for connection: Connection) -> Decision {
        let deny = policies.filter { $0.action == .deny }
        let allow = policies.filter { $0.action == .allow }
        var logs: [String] = []
        for policy in deny where policy.dryRun {
            if let reason = denyReason(policy, connection) { logs.append("dry-run policy \(policy.key) would deny (\(reason))") }
        }
        for policy in deny where !policy.dryRun {
            if let reason = denyReason(policy, connection) { return .deny(reason: reason, policy: policy.key, dryRunLogs: logs) }
        }
        // Dry-run ALLOW policies are looked at only after the enforced DENY ones, as upstream does:
        // a connection an enforced DENY refused logs only the dry-run DENY matches.
        for policy in allow where policy.dryRun && matches(policy, connection) {
            logs.append("dry-run policy \(policy.key) would allow")
        }
        let enforced = allow.filter { !$0.dryRun }
        if enforced.isEmpty || enforced.contains(where: { matches($0, connection) }) {
            return .allow(dryRunLogs: logs)
        }
        return .deny(reason: "allow policies exist, but none allowed", policy: nil, dryRunLogs: logs)
    }

    /// Whether a policy's rules match a connection, exactly as upstream ztunnel matches (ISTIO_COMPAT
    /// §12.3): any group; all clauses of a group (none: matches); any match of a clause (none:
    /// matches; an empty Match is skipped); every populated field pair of a match.
    ///
    /// Ignores the action and `dryRun`, and deliberately does NOT apply the fail-closed rule for
    /// L7-only DENY policies (an L7-only policy does not match here); `decide` applies it, through
    /// `failsClosed`.
    public static func matches(_ policy: Policy, _ connection: Connection) -> Bool {
        let source = SourceIdentity(connection.sourceIdentity)
        // `contains` over no groups is false: a policy with zero groups never matches.
        return policy.groups.contains { group in
            group.allSatisfy { clause in
                clause.isEmpty || clause.contains { !$0.isEmpty && matches($0, source, connection) }
            }
        }
    }

    /// Whether a policy is a DENY policy whose every match is empty (with at least one group and
    /// one match): the shape istiod sends for a DENY AuthorizationPolicy whose rules used only L7
    /// attributes. Upstream skips it (allowing what it was written to deny); `decide` treats it as
    /// matching every connection instead.
    ///
    /// Does not look at `dryRun` (a dry-run one is only logged, by `decide`), nor at ALLOW policies
    /// of that shape: they never match, which is already the restrictive outcome.
    public static func failsClosed(_ policy: Policy) -> Bool {
        let allMatches = policy.groups.flatMap { $0.flatMap { $0 } }
        // A DENY policy with zero groups carries no rule at all (nothing was dropped): it stays a
        // no-op. A group with zero clauses has no match and already matches everything.
        return policy.action == .deny && !policy.groups.isEmpty && !allMatches.isEmpty && allMatches.allSatisfy(\.isEmpty)
    }

    // MARK: - Private

    /// The reason an enforced DENY policy would deny this connection, or nil if it would not.
    private static func denyReason(_ policy: Policy, _ connection: Connection) -> String? {
        if matches(policy, connection) { return "explicitly denied by: \(policy.key)" }
        if policy.action == .deny && matchesFailingClosed(policy, connection) {
            return "denied by \(policy.key): its rules are L7-only, which ztunnel cannot enforce; failing closed"
        }
        return nil
    }

    /// A DENY policy's groups where an empty match in a clause (an L7 condition istiod emptied:
    /// it emits one match per `to` operation or `from` source) counts as matching instead of
    /// never matching: "deny principal X for GET" denies X altogether rather than nobody, and
    /// `to: [{ports: [9000]}, {paths: [/admin]}]` denies every port. With every match empty this
    /// is `failsClosed`; the rule's other L4 conditions still hold (review findings).
    private static func matchesFailingClosed(_ policy: Policy, _ connection: Connection) -> Bool {
        let source = SourceIdentity(connection.sourceIdentity)
        return policy.groups.contains { group in
            group.allSatisfy { clause in
                clause.isEmpty || clause.contains(where: \.isEmpty) || clause.contains { matches($0, source, connection) }
            }
        }
    }

    /// One non-empty Match: every populated field pair holds. Does not skip empty matches (the
    /// caller does: an empty Match would otherwise match everything here).
    private static func matches(_ match: Match, _ source: SourceIdentity?, _ connection: Connection) -> Bool {
        let sourceIP = canonical(connection.sourceIP), destinationIP = canonical(connection.destinationIP)
        // No identity compares as the empty namespace (so `presence` fails and `exact("")` hits),
        // as upstream does; principals and service accounts simply never hit without one.
        return holds(match.namespaces, match.notNamespaces) { $0.matches(source?.namespace ?? "") }
            && holds(match.principals, match.notPrincipals) { pattern in source.map { pattern.matches($0.principal) } ?? false }
            && holds(match.serviceAccounts, match.notServiceAccounts) { account in
                source.map { $0.namespace == account.namespace && $0.serviceAccount == account.serviceAccount } ?? false
            }
            && holds(match.sourceIps, match.notSourceIps) { $0.contains(sourceIP) }
            && holds(match.destinationIps, match.notDestinationIps) { $0.contains(destinationIP) }
            && holds(match.destinationPorts, match.notDestinationPorts) { $0 == connection.destinationPort }
    }

    /// One field pair: the positive list, if any, needs a hit; the negative list, if any, none.
    private static func holds<T>(_ positive: [T], _ negative: [T], _ hit: (T) -> Bool) -> Bool {
        (positive.isEmpty || positive.contains(where: hit)) && !negative.contains(where: hit)
    }

    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket reports for an IPv4
    /// peer) as the IPv4 address it is; any other address unchanged.
    private static func canonical(_ ip: IPAddress) -> IPAddress {
        // Upstream canonicalizes socket addresses before authorizing; without this a DENY on
        // 192.168.0.0/16 would miss ::ffff:192.168.1.1, since prefixes never mix families.
        guard ip.bytes.count == 16, ip.bytes[0..<10].allSatisfy({ $0 == 0 }), ip.bytes[10] == 0xff, ip.bytes[11] == 0xff else {
            return ip
        }
        return IPAddress(bytes: Array(ip.bytes[12...])) ?? ip
    }

    /// The parts of a SPIFFE identity the matchers compare.
    private struct SourceIdentity {
        let namespace: String
        let serviceAccount: String
        /// The identity without `spiffe://` (`td/ns/<ns>/sa/<sa>`): how istiod writes principals.
        let principal: String

        /// `spiffe://<td>/ns/<ns>/sa/<sa>` with non-empty parts; nil for anything else. Checks the
        /// shape only: which characters a segment may hold is the certificate parser's business.
        init?(_ text: String?) {
            guard let text, text.hasPrefix("spiffe://") else { return nil }
            let rest = text.dropFirst("spiffe://".count)
            let parts = rest.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count == 5, parts[1] == "ns", parts[3] == "sa",
                  !parts[0].isEmpty, !parts[2].isEmpty, !parts[4].isEmpty else { return nil }
            namespace = String(parts[2])
            serviceAccount = String(parts[4])
            principal = String(rest)
        }
    }
}
