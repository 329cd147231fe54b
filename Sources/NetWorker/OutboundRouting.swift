import Mesh
import Shared

/// Where an outbound connection (15001, SOCKS5) goes, from the mesh model (ISTIO_COMPAT §9 via
/// `Router`): the original destination when it is not the mesh's, a plain-TCP workload
/// directly, a service VIP to one of its endpoints. A destination that must be reached over
/// HBONE is refused: the HBONE client does not exist yet, and sending a mesh workload's traffic
/// in plaintext is exactly what this proxy must never do (fail closed).
struct OutboundRouting: Sendable {
    let state: NetWorkerState

    enum Resolution: Equatable {
        case connect(host: String, port: UInt16, via: String)
        case refuse(String)
    }

    func resolve(host: String, port: UInt16, client: String?) -> Resolution {
        guard let ip = IPAddress(host) else { return .connect(host: host, port: port, via: "passthrough") }
        let model = state.model
        let clientNamespace = client.flatMap(IPAddress.init).flatMap { model.workload(at: NetworkAddress(network: "", ip: $0)) }?.namespace
        switch Router.route(model, to: NetworkAddress(network: "", ip: ip), port: port, clientNamespace: clientNamespace,
                            pick: Router.weightedRandom) {
        case .passthrough:
            return .connect(host: host, port: port, via: "passthrough")
        case .direct(let uid, let target, let targetPort):
            return .connect(host: target.description, port: targetPort, via: "workload \(uid)")
        case .hbone(let uid, _, _, _):
            return .refuse("\(uid) is reached over HBONE, which this proxy cannot originate yet; refusing rather than sending plaintext")
        case .refused(let reason):
            return .refuse(reason)
        }
    }
}
