import Foundation
import Mesh
import SwiftProtobuf

/// The delta ADS protocol as ztunnel speaks it (ISTIO_COMPAT §6.3), without any I/O: the
/// requests that open a stream, and for each response the ACK or NACK and the resources it
/// changes. Every resource is decoded and converted on its own; a bad one is refused with its
/// reason (NACK) while the good ones apply, and the refused one keeps its old version and is not
/// claimed on a reconnect.
public struct DeltaADS {
    /// The two subscriptions, in the order upstream opens them.
    public static let typeURLs = [XDSConversion.addressType, XDSConversion.authorizationType]

    /// The most refusal reasons one NACK names (the rest are counted).
    public static let maxReasons = 100
    /// The most resources held per type (five times the largest mesh the design card names).
    public static let maxResourcesPerType = 100_000

    /// Every accepted resource; what is published and what a new stream claims to hold.
    public private(set) var state: MeshSnapshot
    public let node: Envoy_Service_Discovery_V3_Node
    /// Types whose first response on this stream was accepted (readiness, §6.4).
    public private(set) var acknowledgedTypes: Set<String> = []
    /// The names (by type URL) changed or removed since `takeTouched`: what a `SnapshotWriter`
    /// encodes again. Bounded: past `maxResourcesPerType` names of a type (churn before the
    /// first publish, which empties it), it is dropped and `touchedAll` set instead.
    public private(set) var touched: [String: Set<String>] = [:]
    public private(set) var touchedAll = false

    /// The names touched since the last call, or nil when they are too many to list (the writer
    /// then encodes everything).
    public mutating func takeTouched() -> [String: Set<String>]? {
        defer { touched = [:]; touchedAll = false }
        return touchedAll ? nil : touched
    }

    private mutating func touch(_ typeURL: String, _ name: String) {
        guard !touchedAll else { return }
        if touched[typeURL, default: []].insert(name).inserted, touched[typeURL]!.count > Self.maxResourcesPerType {
            touched = [:]
            touchedAll = true
        }
    }
    /// XDS_ON_DEMAND (§6.3): Address resources are not pushed wholesale; each is asked for by a
    /// key (`<network>/<IP>`, a uid, `<namespace>/<hostname>`) when a connection needs it.
    public let onDemand: Bool
    /// Keys asked for and not yet answered, with when (asked again when the stream reopens, or
    /// when asked for after `demandExpiryMilliseconds`: an answer that never came must not
    /// block the key).
    private var demands: [String: Int64] = [:]
    public var pendingDemands: Set<String> { Set(demands.keys) }
    /// The most keys waiting for istiod at once; more are refused until some are answered.
    public static let maxPendingDemands = 4096
    public static let demandExpiryMilliseconds: Int64 = 5_000

    public struct Outcome {
        /// The ACK or NACK to send.
        public let reply: Envoy_Service_Discovery_V3_DeltaDiscoveryRequest
        /// Whether `state` changed.
        public let changed: Bool
        /// "name: reason" of each refused resource (empty for an ACK).
        public let refused: [String]
        /// Resources added or replaced, and removed.
        public let applied: Int
        public let removed: Int
        /// On-demand keys this response answered (found or removed).
        public var answered: [String] = []
        /// A request to send after the reply (on demand: unsubscribing answered lookup keys).
        public var followUp: Envoy_Service_Discovery_V3_DeltaDiscoveryRequest?
    }

    public init(node: Envoy_Service_Discovery_V3_Node, state: MeshSnapshot = MeshSnapshot(), onDemand: Bool = false) {
        self.node = node
        self.state = state
        self.onDemand = onDemand
    }

    /// The types whose first response gates readiness: both, or only Authorization on demand.
    public var requiredTypes: [String] { onDemand ? [XDSConversion.authorizationType] : Self.typeURLs }

    /// Whether the first response of every required type has been accepted since the stream opened.
    public var isSynced: Bool { Set(requiredTypes).isSubset(of: acknowledgedTypes) }

    /// The first request of each type on a new stream: the node, a wildcard subscription and the
    /// versions held. On demand, Address subscribes to `*` and unsubscribes `*` ("nothing"),
    /// plus, by name, what it holds and what is still asked for.
    public mutating func streamOpened() -> [Envoy_Service_Discovery_V3_DeltaDiscoveryRequest] {
        acknowledgedTypes = []
        return Self.typeURLs.map { typeURL in
            var request = Envoy_Service_Discovery_V3_DeltaDiscoveryRequest()
            request.node = node
            request.typeURL = typeURL
            request.initialResourceVersions = state.versions(typeURL)
            if onDemand && typeURL == XDSConversion.addressType {
                let names = Set(state.entries(typeURL).keys).union(demands.keys)
                request.resourceNamesSubscribe = ["*"] + names.sorted()
                request.resourceNamesUnsubscribe = ["*"]
            }
            return request
        }
    }

    /// An on-demand lookup (§6.3): the request to send, or nil when on-demand is off, the key is
    /// already asked for, or too many are waiting.
    public mutating func demand(_ key: String, now: Int64) -> Envoy_Service_Discovery_V3_DeltaDiscoveryRequest? {
        guard onDemand, !key.isEmpty else { return nil }
        if let asked = demands[key], now - asked < Self.demandExpiryMilliseconds { return nil }
        if demands.count >= Self.maxPendingDemands {
            demands = demands.filter { now - $0.value < Self.demandExpiryMilliseconds }
            guard demands.count < Self.maxPendingDemands else { return nil }
        }
        demands[key] = now
        var request = Envoy_Service_Discovery_V3_DeltaDiscoveryRequest()
        request.typeURL = XDSConversion.addressType
        request.resourceNamesSubscribe = [key]
        return request
    }

    /// The keys an Address resource answers: its name and aliases, and the `<network>/<IP>` of
    /// each of its addresses (a workload's IPs, a service's VIPs), since istiod names the
    /// resource by uid or `namespace/hostname` whatever key it was asked by.
    static func keys(of address: XDSConversion.Address, aliases: [String]) -> Set<String> {
        var keys = Set(aliases)
        keys.insert(address.name)
        switch address {
        case .workload(let workload):
            for ip in workload.addresses { keys.insert("\(workload.network)/\(ip)") }
        case .service(let service):
            for vip in service.vips { keys.insert("\(vip.network)/\(vip.ip)") }
        }
        return keys
    }

    /// Applies one response and says what to answer.
    public mutating func handle(_ response: Envoy_Service_Discovery_V3_DeltaDiscoveryResponse) -> Outcome {
        var reply = Envoy_Service_Discovery_V3_DeltaDiscoveryRequest()
        reply.typeURL = response.typeURL
        reply.responseNonce = response.nonce
        guard Self.typeURLs.contains(response.typeURL) else {
            // Upstream logs an unknown type and ACKs it.
            return Outcome(reply: reply, changed: false, refused: [], applied: 0, removed: 0)
        }
        // Taken out of the state and put back: changed in place, not copied (25,000 entries).
        let had = state.resources.removeValue(forKey: response.typeURL)
        var entries = had ?? [:]
        var refused: [String] = []
        var applied = 0, removed = 0
        for name in response.removedResources where entries.removeValue(forKey: name) != nil {
            removed += 1
            touch(response.typeURL, name)
        }
        var changed = removed > 0
        var answered = Set<String>()
        let asked = response.typeURL == XDSConversion.addressType ? pendingDemands : []
        if !asked.isEmpty {
            answered.formUnion(asked.intersection(response.removedResources))
        }
        for resource in response.resources {
            // A refused resource answers its keys too: istiod will not send it again.
            if !asked.isEmpty { answered.formUnion(asked.intersection([resource.name] + resource.aliases)) }
            let body = [UInt8](resource.resource.value)
            do {
                guard !resource.name.isEmpty else { throw XDSConversion.Invalid("a resource without a name") }
                if response.typeURL == XDSConversion.addressType {
                    let address = try XDSConversion.address(body)
                    guard address.name == resource.name else {
                        throw XDSConversion.Invalid("named \(resource.name) but holds \(address.name)")
                    }
                    if !asked.isEmpty {
                        answered.formUnion(asked.intersection(Self.keys(of: address, aliases: resource.aliases)))
                    }
                } else {
                    let policy = try XDSConversion.authorization(body)
                    guard policy.key == resource.name else { throw XDSConversion.Invalid("named \(resource.name) but holds \(policy.key)") }
                }
                guard entries[resource.name] != nil || entries.count < Self.maxResourcesPerType else {
                    throw XDSConversion.Invalid("more than \(Self.maxResourcesPerType) resources of this type")
                }
                let entry = MeshSnapshot.Entry(version: resource.version, body: body)
                if entries.updateValue(entry, forKey: resource.name) != entry {
                    changed = true
                    touch(response.typeURL, resource.name)
                }
                applied += 1
            } catch {
                refused.append("\(resource.name.isEmpty ? "(unnamed)" : resource.name): \(error)")
            }
        }
        if had != nil || changed { state.resources[response.typeURL] = entries }
        if changed { state.generation &+= 1 }
        if refused.isEmpty {
            acknowledgedTypes.insert(response.typeURL)
        } else {
            // Bounded: a response of a million empty resources must not build a NACK of gigabytes.
            let shown = refused.prefix(Self.maxReasons).map { String($0.prefix(512)) }
            let more = refused.count > Self.maxReasons ? ["\(refused.count - Self.maxReasons) more"] : []
            reply.errorDetail.message = (shown + more).joined(separator: "; ")
            refused = Array(refused.prefix(Self.maxReasons))
        }
        for key in answered { demands[key] = nil }
        var outcome = Outcome(reply: reply, changed: changed, refused: refused, applied: applied, removed: removed)
        outcome.answered = answered.sorted()
        // istiod keeps every name it was asked for subscribed and answers a name asked again only
        // if something changed: an answered key that is no resource name is unsubscribed, so the
        // next lookup of it is answered afresh.
        let lookupsOnly = answered.filter { entries[$0] == nil }.sorted()
        if !lookupsOnly.isEmpty {
            var unsubscribe = Envoy_Service_Discovery_V3_DeltaDiscoveryRequest()
            unsubscribe.typeURL = XDSConversion.addressType
            unsubscribe.resourceNamesUnsubscribe = lookupsOnly
            outcome.followUp = unsubscribe
        }
        return outcome
    }
}
