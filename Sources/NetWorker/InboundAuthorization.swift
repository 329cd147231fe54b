import Mesh
import Shared

/// L4 authorization of inbound connections (ISTIO_COMPAT §10 step 5, §11, §12) against the mesh
/// model the NetWorker holds: the destination workload is the one owning the destination
/// address; the policies are those that apply to it; the source identity is the TLS peer's on
/// 15008 and none on 15006 (so `principals` and the like fail, which is how STRICT mTLS is
/// enforced). Destinations that belong to no workload are not the mesh's: they are not checked
/// here (the caller passes them through, as today).
struct InboundAuthorization: Sendable {
    let state: NetWorkerState
    /// Where allowed connections are registered, to be checked again when policies change.
    var live: AuthorizedConnections?

    struct Verdict {
        let workload: Workload
        let decision: Authorizer.Decision
    }

    /// The decision for a connection from `source` (with `identity`, if any) to
    /// `destination:port`, or nil when no workload owns `destination`.
    func check(source: String, destination: String, port: UInt16, identity: String?) -> Verdict? {
        let model = state.model
        guard let destinationIP = IPAddress(destination), let sourceIP = IPAddress(source),
              let workload = model.workload(at: NetworkAddress(network: "", ip: destinationIP)) else { return nil }
        let (policies, unknown) = model.policies(for: workload)
        for key in unknown { Log.warn("workload \(workload.uid) names unknown authorization policy \(key)") }
        let connection = Authorizer.Connection(sourceIdentity: identity, sourceIP: sourceIP, destinationIP: destinationIP,
                                               destinationPort: port)
        let decision = Authorizer.decide(policies, for: connection)
        for line in decision.dryRunLogs { Log.info(line, [("src", source), ("dst", "\(destination):\(port)")]) }
        return Verdict(workload: workload, decision: decision)
    }
}
