import Mesh
import Shared

/// Where an outbound connection (15001, SOCKS5) goes, from the mesh model (ISTIO_COMPAT §9 via
/// `Router`): the original destination when it is not the mesh's, a plain-TCP workload
/// directly, a service VIP to one of its endpoints. A destination that must be reached over
/// HBONE is refused: the HBONE client does not exist yet, and sending a mesh workload's traffic
/// in plaintext is exactly what this proxy must never do (fail closed).
struct OutboundRouting: Sendable {
    let state: NetWorkerState

    enum Resolution {
        case connect(host: String, port: UInt16, via: String, target: Target)
        case refuse(String)
    }

    /// What the connection is for, for its metrics and access-log line.
    struct Target {
        var source: Workload?
        var destination: Workload?
        var service: Service?
    }

    func resolve(host: String, port: UInt16, client: String?) -> Resolution {
        let model = state.model
        let network = state.configuration.string("NETWORK")
        let source = state.workload(at: client, in: model)
        guard let ip = IPAddress(host) else { return .connect(host: host, port: port, via: "passthrough", target: Target(source: source)) }
        let destination = NetworkAddress(network: network, ip: ip)
        switch Router.route(model, to: destination, port: port, clientNamespace: source?.namespace, pick: Router.weightedRandom) {
        case .passthrough:
            return .connect(host: host, port: port, via: "passthrough", target: Target(source: source))
        case .direct(let uid, let target, let targetPort):
            let service = model.services(at: destination).first
            return .connect(host: target.description, port: targetPort, via: "workload \(uid)",
                            target: Target(source: source, destination: model.workloads[uid], service: service))
        case .hbone(let uid, _, _, _):
            return .refuse("\(uid) is reached over HBONE, which this proxy cannot originate yet; refusing rather than sending plaintext")
        case .refused(let reason):
            return .refuse(reason)
        }
    }
}

extension OutboundRouting.Target {
    /// An outbound connection's record (reporter `source`, plaintext: no principals, security
    /// policy `unknown`, ISTIO_COMPAT §15.2-15.3).
    func record(metrics: TrafficMetrics, client: String, upstream: String) -> ConnectionRecord {
        let labels = TrafficMetrics.Labels(reporter: "source", source: source, sourcePrincipal: nil, destination: destination,
                                           service: service, destinationPrincipal: destination?.identity, responseFlags: "-",
                                           isMutualTLS: false)
        var fields: [(String, String)] = [("src.addr", client)]
        if let source { fields += [("src.workload", source.name), ("src.namespace", source.namespace)] }
        fields.append(("dst.addr", upstream))
        if let service { fields.append(("dst.service", service.hostname)) }
        if let destination { fields += [("dst.workload", destination.name), ("dst.namespace", destination.namespace)] }
        return ConnectionRecord(metrics: metrics, labels: labels, direction: "outbound", fields: fields)
    }
}
