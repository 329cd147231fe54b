import Mesh
import NIOCore
import Shared

/// Where an outbound connection (15001, SOCKS5) goes, from the mesh model (ISTIO_COMPAT §9 via
/// `Router`): the original destination when it is not the mesh's, a plain-TCP workload
/// directly, a service VIP to one of its endpoints, and an HBONE workload through a tunnel from
/// the pool, presenting the source workload's certificate. A destination that must be reached
/// over HBONE is never sent in plaintext: when no tunnel can be made (an unknown source, no
/// certificate yet) the connection is refused (fail closed).
struct OutboundRouting: Sendable {
    let state: NetWorkerState
    let identities: IdentityTable
    /// XDS_ON_DEMAND: unknown addresses are asked for before deciding.
    var onDemand: OnDemandLookups?
    /// Resolves workloads that have a hostname and no address (§9 step 6), and counts it.
    var names: HostnameResolver?
    /// The loop guard, for addresses a nameserver gave (the mesh's own are the control plane's).
    var guardrails: DestinationGuard?

    enum Resolution {
        case connect(host: String, port: UInt16, via: String, target: Target)
        case tunnel(Tunnel)
        case refuse(String)
        /// A tunnel that needs the source's certificate, not here yet (`resolve(on:)` waits for
        /// it once, then refuses). `retry`: the resolved hostname workload to try again.
        case noCertificate(identity: String, reason: String, retry: PendingName? = nil)
        /// Internal to `resolve(on:)`: a workload with only a hostname, to be resolved.
        case resolveName(PendingName)

        var retried: PendingName? {
            if case .noCertificate(_, _, let retry) = self { return retry }
            return nil
        }
    }

    /// A hostname workload waiting for its address (§9 step 6).
    struct PendingName {
        let workloadUid: String
        let hostname: String
        let port: UInt16
        let identities: [String]
        let target: Target
        let client: String?
        /// The original destination's family.
        let preferIPv4: Bool
        var ip: IPAddress?
    }

    /// Where the connection goes, once what the control thread may still learn has come or
    /// its wait is over: on demand, the source's and destination's addresses when no resource
    /// holds them (§6.3), then the source workload's certificate when it is expected but not
    /// here yet (a workload that just arrived). Never plaintext instead of a tunnel.
    func resolve(host: String, port: UInt16, client: String?, on loop: EventLoop) -> EventLoopFuture<Resolution> {
        lookUp(host: host, client: client, on: loop).flatMap { admitted in
            guard admitted else { return loop.makeSucceededFuture(.refuse("too many on-demand lookups waiting; refusing rather than deciding without the mesh")) }
            return self.named(self.resolve(host: host, port: port, client: client), on: loop).flatMap { first in
                guard case .noCertificate(let identity, _, _) = first else { return loop.makeSucceededFuture(first) }
                // The hostname, if any, is not asked again: the first answer stands.
                return self.identities.waitForCertificate(identity, on: loop).map {
                    let second = first.retried.map { self.connect(to: $0) } ?? self.resolve(host: host, port: port, client: client)
                    if case .noCertificate(_, let reason, _) = second { return .refuse(reason) }
                    return second
                }
            }
        }
    }

    /// A workload known by hostname only, resolved (§9 step 6): the nameservers are asked, an
    /// address of the original destination's family is picked at random (else any), and the
    /// workload is reached there. An answer that would reach this proxy's own ports on loopback
    /// is not used (the loop guard). Other resolutions pass through.
    private func named(_ resolution: Resolution, on loop: EventLoop) -> EventLoopFuture<Resolution> {
        guard case .resolveName(let pending) = resolution else { return loop.makeSucceededFuture(resolution) }
        guard let names, let dns = DNSProxy.shared, dns.canResolve else {
            return loop.makeSucceededFuture(.refuse("\(pending.workloadUid) has only a hostname (\(pending.hostname)) and there is no nameserver to ask"))
        }
        names.counted(pending)
        return dns.resolve(pending.hostname, on: loop).map { found in
            guard let found else {
                return .refuse("too many DNS lookups in flight to resolve \(pending.hostname) for \(pending.workloadUid)")
            }
            // As for a SOCKS5 name: the target port (a tunnel's authority port) is what is checked.
            let usable = found.filter { self.guardrails?.refusal(host: $0.description, port: pending.port) == nil }
            let family = usable.filter { $0.isIPv4 == pending.preferIPv4 }
            guard let ip = (family.isEmpty ? usable : family).randomElement() else {
                return .refuse("no valid routing destination: \(pending.hostname) (workload \(pending.workloadUid)) resolved to no usable address")
            }
            var resolved = pending
            resolved.ip = ip
            return self.connect(to: resolved)
        }
    }

    /// A resolved hostname workload: plain TCP, or a tunnel from the pool, as it speaks.
    private func connect(to pending: PendingName) -> Resolution {
        guard let ip = pending.ip, let workload = state.model.workloads[pending.workloadUid] else {
            return .refuse("workload \(pending.workloadUid) is gone")
        }
        var result: Resolution
        switch workload.tunnelProtocol {
        case .none:
            result = .connect(host: ip.description, port: pending.port, via: "workload \(workload.uid) (\(pending.hostname))", target: pending.target)
        case .hbone:
            result = tunnel(to: workload.uid, dial: ip, port: UInt16(state.configuration.int("ZTUNNEL_HBONE_PORT")), target: ip,
                            targetPort: pending.port, expected: pending.identities, source: pending.target.source,
                            client: pending.client, record: pending.target)
        }
        if case .noCertificate(let identity, let reason, _) = result { result = .noCertificate(identity: identity, reason: reason, retry: pending) }
        return result
    }

    /// On demand (XDS_ON_DEMAND), asks for the client's and `host`'s addresses when no
    /// resource holds them and waits (bounded) for the answers; at once without on-demand or
    /// when both are known. False: too many lookups wait already, and the caller refuses.
    /// `peer`: whose waits these count against (the client by default; an inbound connection,
    /// which looks up no source, names its remote address).
    func lookUp(host: String, client: String?, peer: String? = nil, on loop: EventLoop) -> EventLoopFuture<Bool> {
        guard let onDemand, onDemand.isEnabled else { return loop.makeSucceededFuture(true) }
        let keys = unknownAddressKeys(host: host, client: client)
        if keys.isEmpty { return loop.makeSucceededFuture(true) }
        return onDemand.fetch(keys, client: peer ?? client ?? "?", on: loop) { key in
            self.unknownAddressKeys(host: host, client: client).contains(key)
        }
    }

    /// The on-demand keys (`<network>/<IP>`) of the client's and the destination's addresses
    /// that no workload or service holds.
    func unknownAddressKeys(host: String, client: String?) -> [String] {
        let model = state.model
        let network = state.configuration.string("NETWORK")
        var keys: [String] = []
        if let client, let ip = IPAddress(client)?.unmapped, model.workload(at: NetworkAddress(network: network, ip: ip)) == nil {
            keys.append("\(network)/\(ip)")
        }
        if let ip = IPAddress(host)?.unmapped {
            let address = NetworkAddress(network: network, ip: ip)
            if model.workload(at: address) == nil && model.services(at: address).isEmpty
                && model.services(inCIDRsContaining: address).isEmpty { keys.append("\(network)/\(ip)") }
        }
        return keys
    }

    /// An HBONE tunnel: TCP (and mTLS) to `address:port`, one CONNECT to `authority`.
    struct Tunnel {
        let address: String
        let port: UInt16
        var authority: String
        /// The server must present one of these (§5.4).
        let expected: [String]
        /// What the client presents: the source workload's certificate.
        let context: TLSContext
        let target: Target
        /// In-pod mode: the client's pod, whose namespace the connection leaves from (set when
        /// the tunnel is opened for a client).
        var pod: String?
        /// Double HBONE (§9 step 4): this tunnel goes to a network gateway, and carries an
        /// inner mTLS connection and CONNECT to the destination (not pooled).
        var inner: Inner?

        struct Inner {
            let authority: String
            /// The inner TLS must present one of these: the service's SANs (§5.4).
            let expected: [String]
            /// Our network, sent as `x-forwarded-network` on the inner CONNECT (§5.3).
            let network: String
        }

        /// The client's IP: part of the pool key (§5.5), so clients never share a connection
        /// across source addresses.
        let clientIP: String

        /// The tunneled connection's record: mutual TLS, both identities, the HBONE authority.
        func record(metrics: TrafficMetrics, client: Channel) -> ConnectionRecord {
            target.record(metrics: metrics, client: client.remoteAddress.map(ListenerFactory.address) ?? "?",
                          upstream: "\(address):\(port)", sourceIdentity: context.spiffeId.description, hbone: authority)
        }

        /// The pool's key (§5.5): source identity, expected identities, destination address,
        /// source IP.
        var key: HBONEPool.Key {
            HBONEPool.Key(source: context.spiffeId.description, expected: expected, address: address, port: port, clientIP: clientIP,
                          pod: pod)
        }
    }

    /// What the connection is for, for its metrics and access-log line.
    struct Target {
        var source: Workload?
        var destination: Workload?
        var service: Service?
    }

    /// Where the connection goes with what is known now.
    func resolve(host: String, port: UInt16, client: String?) -> Resolution {
        let model = state.model
        let network = state.configuration.string("NETWORK")
        let source = state.workload(at: client, in: model)
        let ip: IPAddress
        if let literal = IPAddress(host) {
            ip = literal
        } else {
            // A name (SOCKS5): a mesh service's hostname resolves to its VIP on our network, the
            // client's namespace first (as istiod's DNS would answer); other names are refused,
            // since the NetWorker has no resolver (no files, no DNS).
            let services = (model.servicesByHostname[host] ?? []).compactMap { model.services[$0] }  // in key order
            let service = services.first { $0.namespace == source?.namespace } ?? services.first
            guard let service else {
                return .refuse("\(host) is no service of the mesh, and names outside it are not resolved here")
            }
            let vips = service.vips.filter { $0.network == network }.map(\.ip)
            guard let vip = vips.first(where: \.isIPv4) ?? vips.first else {
                return .refuse("service \(service.key) has no VIP on network \"\(network)\" to resolve \(host) to")
            }
            ip = vip
        }
        let destination = NetworkAddress(network: network, ip: ip)
        // The service the destination means, for the record (routing chose by the same rule).
        let service = Router.service(model, at: destination, clientNamespace: source?.namespace)
        switch Router.route(model, to: destination, port: port, clientNamespace: source?.namespace, sourceUid: source?.uid,
                            source: source, pick: Router.weightedRandom) {
        case .passthrough:
            return .connect(host: ip.description, port: port, via: "passthrough", target: Target(source: source))
        case .direct(let uid, let target, let targetPort):
            return .connect(host: target.description, port: targetPort, via: "workload \(uid)",
                            target: Target(source: source, destination: model.workloads[uid], service: service))
        case .waypoint(let uid, let ip, let hbonePort, let target, let targetPort, let expected):
            return tunnel(to: uid, dial: ip, port: hbonePort, target: target, targetPort: targetPort, expected: expected,
                          source: source, client: client,
                          record: Target(source: source, destination: model.workload(at: NetworkAddress(network: network, ip: target)),
                                         service: service))
        case .hbone(let uid, let ip, let targetPort, let expected):
            return tunnel(to: uid, dial: ip, port: UInt16(state.configuration.int("ZTUNNEL_HBONE_PORT")), target: ip,
                          targetPort: targetPort, expected: expected, source: source, client: client,
                          record: Target(source: source, destination: model.workloads[uid], service: service))
        case .doubleHBONE(let uid, let gatewayUid, let ip, let hbonePort, let gatewayExpected, let authority, let expected, let viaWaypoint):
            // Through a waypoint, the destination is the service (as with a waypoint on our
            // network), not the waypoint.
            let resolution = tunnel(to: gatewayUid, dial: ip, port: hbonePort, target: ip, targetPort: port, expected: gatewayExpected,
                                    source: source, client: client,
                                    record: Target(source: source, destination: viaWaypoint ? nil : model.workloads[uid], service: service))
            guard case .tunnel(var outer) = resolution else { return resolution }
            outer.authority = authority
            outer.inner = .init(authority: authority, expected: expected, network: network)
            return .tunnel(outer)
        case .resolveHostname(let uid, let hostname, let targetPort, let expected):
            return .resolveName(PendingName(workloadUid: uid, hostname: hostname, port: targetPort, identities: expected,
                                            target: Target(source: source, destination: model.workloads[uid],
                                                           service: service),
                                            client: client, preferIPv4: ip.isIPv4))
        case .refused(let reason):
            return .refuse(reason)
        }
    }

    /// A tunnel presenting the source workload's certificate, or a refusal when there is none
    /// (never plaintext instead).
    private func tunnel(to uid: String, dial ip: IPAddress, port: UInt16, target: IPAddress, targetPort: UInt16, expected: [String],
                        source: Workload?, client: String?, record: Target) -> Resolution {
        guard let source else {
            return .refuse("\(uid) is reached over HBONE, and the client \(client ?? "?") is no workload of this node to present an identity for")
        }
        guard let identity = source.identity else {
            return .refuse("source workload \(source.uid) has no identity (trust domain or service account unknown)")
        }
        guard let context = identities.clientContext(for: identity) else {
            return .noCertificate(identity: identity,
                                  reason: "no certificate for \(identity) yet; refusing rather than sending \(uid)'s traffic in plaintext")
        }
        let authority = !target.isIPv4 ? "[\(target)]:\(targetPort)" : "\(target):\(targetPort)"
        return .tunnel(Tunnel(address: ip.description, port: port, authority: authority, expected: expected, context: context,
                              target: record, clientIP: client.flatMap(IPAddress.init)?.unmapped.description ?? "?"))
    }
}

extension OutboundRouting.Target {
    /// An outbound connection's record (reporter `source`, ISTIO_COMPAT §15.2-15.3). Plaintext
    /// has no principals and security policy `unknown`; a tunnel (`sourceIdentity` given, and the
    /// `hbone` address) is mutual TLS with both identities.
    func record(metrics: TrafficMetrics, client: String, upstream: String, sourceIdentity: String? = nil,
                hbone: String? = nil) -> ConnectionRecord {
        let labels = TrafficMetrics.Labels(reporter: "source", source: source, sourcePrincipal: sourceIdentity, destination: destination,
                                           service: service, destinationPrincipal: destination?.identity, responseFlags: "-",
                                           isMutualTLS: sourceIdentity != nil)
        var fields: [(String, String)] = [("src.addr", client)]
        if let source { fields += [("src.workload", source.name), ("src.namespace", source.namespace)] }
        if let sourceIdentity { fields.append(("src.identity", sourceIdentity)) }
        fields.append(("dst.addr", upstream))
        if let hbone { fields.append(("dst.hbone_addr", hbone)) }
        if let service { fields.append(("dst.service", service.hostname)) }
        if let destination { fields += [("dst.workload", destination.name), ("dst.namespace", destination.namespace)] }
        if sourceIdentity != nil, let identity = destination?.identity { fields.append(("dst.identity", identity)) }
        return ConnectionRecord(metrics: metrics, labels: labels, direction: "outbound", fields: fields)
    }
}
