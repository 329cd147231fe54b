import Mesh
import Shared

/// L4 authorization of inbound connections (ISTIO_COMPAT §10 step 5, §11, §12) against the mesh
/// model the NetWorker holds: the destination workload is the one owning the destination
/// address on this node's network (`NETWORK`); the policies are those that apply to it; the
/// source identity is the TLS peer's on 15008 and none on 15006 (so `principals` and the like
/// fail, which is how STRICT mTLS is enforced).
///
/// Fails closed: a destination no workload owns, or a source address that cannot be read, is
/// refused, as upstream does (it has no workload whose policies could allow it).
struct InboundAuthorization: Sendable {
    let state: NetWorkerState
    /// Where allowed connections are registered, to be checked again when policies change.
    var live: AuthorizedConnections?
    private let warnings = WarnOnce()
    /// AUTHZ_POLICY_INFO_LOGGING: each decision at info rather than debug.
    private let decisionsAtInfo: Bool

    init(state: NetWorkerState, live: AuthorizedConnections? = nil) {
        self.state = state
        self.live = live
        decisionsAtInfo = state.configuration.available.contains("AUTHZ_POLICY_INFO_LOGGING")
            && state.configuration.bool("AUTHZ_POLICY_INFO_LOGGING")
    }

    enum Verdict {
        case allowed(Workload)
        /// `workload` is nil when no workload owns the destination.
        case denied(reason: String, policy: String?, workload: Workload?)
    }

    func check(source: String?, destination: String, port: UInt16, identity: String?) -> Verdict {
        let model = state.model
        guard let destinationIP = IPAddress(destination) else {
            return .denied(reason: "destination \(destination) is not an address", policy: nil, workload: nil)
        }
        guard let workload = state.workload(at: destination, in: model) else {
            return .denied(reason: "unknown destination: no workload owns \(destination)", policy: nil, workload: nil)
        }
        guard let source, let sourceIP = IPAddress(source) else {
            return .denied(reason: "the source address cannot be read", policy: nil, workload: workload)
        }
        let (policies, unknown) = model.policies(for: workload)
        for key in unknown { warnings.warn("workload \(workload.uid) names unknown authorization policy \(key)") }
        let connection = Authorizer.Connection(sourceIdentity: identity, sourceIP: sourceIP, destinationIP: destinationIP,
                                               destinationPort: port)
        let decision = Authorizer.decide(policies, for: connection)
        for line in decision.dryRunLogs { Log.info(line, [("src", source), ("dst", "\(destination):\(port)")]) }
        logDecision(decision, source: source, identity: identity, destination: "\(destination):\(port)", workload: workload)
        if case .deny(let reason, let policy, _) = decision { return .denied(reason: reason, policy: policy, workload: workload) }
        return .allowed(workload)
    }
}

extension InboundAuthorization {
    /// Each decision, as upstream's RBAC log: at debug, or at info with AUTHZ_POLICY_INFO_LOGGING.
    private func logDecision(_ decision: Authorizer.Decision, source: String, identity: String?, destination: String,
                             workload: Workload) {
        let atInfo = decisionsAtInfo
        guard atInfo || Log.isEnabled(.debug) else { return }
        var fields = [("src", source), ("src.identity", identity ?? "none"), ("dst", destination), ("dst.workload", workload.uid)]
        switch decision {
        case .allow: fields.append(("decision", "allow"))
        case .deny(let reason, let policy, _): fields += [("decision", "deny"), ("policy", policy ?? "none"), ("reason", reason)]
        }
        if atInfo { Log.info("authorization decision", fields) } else { Log.debug("authorization decision", fields) }
    }

    /// An inbound connection's (or HBONE stream's) metrics labels and access-log fields
    /// (§15.2-15.3): reporter `destination`; with a TLS `peer` its identity is the source
    /// principal and the connection `mutual_tls`, without one (plaintext) neither.
    func record(metrics: TrafficMetrics, source: String?, sourceWorkload described: Workload? = nil, sourceAddress: String, peer: String?,
                destination: Workload, destinationAddress: String, hboneAddress: String?) -> ConnectionRecord {
        let sourceWorkload = described ?? state.workload(at: source, in: state.model)
        let labels = TrafficMetrics.Labels(reporter: "destination", source: sourceWorkload, sourcePrincipal: peer,
                                           destination: destination, service: nil, destinationPrincipal: destination.identity,
                                           responseFlags: "-", isMutualTLS: peer != nil)
        var fields: [(String, String)] = [("src.addr", sourceAddress)]
        if let sourceWorkload { fields += [("src.workload", sourceWorkload.name), ("src.namespace", sourceWorkload.namespace)] }
        if let peer { fields.append(("src.identity", peer)) }
        fields.append(("dst.addr", destinationAddress))
        if let hboneAddress { fields.append(("dst.hbone_addr", hboneAddress)) }
        fields += [("dst.workload", destination.name), ("dst.namespace", destination.namespace)]
        if peer != nil, let identity = destination.identity { fields.append(("dst.identity", identity)) }
        return ConnectionRecord(metrics: metrics, labels: labels, direction: "inbound", fields: fields)
    }
}

/// Logs each distinct message once (a misconfiguration seen per connection must not flood the log).
final class WarnOnce: @unchecked Sendable {
    private let seen = BoundedSet(limit: 1024)

    func warn(_ message: String) {
        if seen.insertedNew(message) { Log.warn(message) }
    }
}
