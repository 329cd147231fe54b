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
    }

    public init(node: Envoy_Service_Discovery_V3_Node, state: MeshSnapshot = MeshSnapshot()) {
        self.node = node
        self.state = state
    }

    /// Whether the first response of every type has been accepted since the stream opened.
    public var isSynced: Bool { Set(Self.typeURLs).isSubset(of: acknowledgedTypes) }

    /// The first request of each type on a new stream: the node, a wildcard subscription and the
    /// versions held.
    public mutating func streamOpened() -> [Envoy_Service_Discovery_V3_DeltaDiscoveryRequest] {
        acknowledgedTypes = []
        return Self.typeURLs.map { typeURL in
            var request = Envoy_Service_Discovery_V3_DeltaDiscoveryRequest()
            request.node = node
            request.typeURL = typeURL
            request.initialResourceVersions = state.versions(typeURL)
            return request
        }
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
        var entries = state.entries(response.typeURL)
        var refused: [String] = []
        var applied = 0, removed = 0
        for name in response.removedResources where entries.removeValue(forKey: name) != nil { removed += 1 }
        var changed = removed > 0
        for resource in response.resources {
            let body = [UInt8](resource.resource.value)
            do {
                guard !resource.name.isEmpty else { throw XDSConversion.Invalid("a resource without a name") }
                if response.typeURL == XDSConversion.addressType {
                    let address = try XDSConversion.address(body)
                    guard address.name == resource.name else {
                        throw XDSConversion.Invalid("named \(resource.name) but holds \(address.name)")
                    }
                } else {
                    let policy = try XDSConversion.authorization(body)
                    guard policy.key == resource.name else { throw XDSConversion.Invalid("named \(resource.name) but holds \(policy.key)") }
                }
                guard entries[resource.name] != nil || entries.count < Self.maxResourcesPerType else {
                    throw XDSConversion.Invalid("more than \(Self.maxResourcesPerType) resources of this type")
                }
                let entry = MeshSnapshot.Entry(version: resource.version, body: body)
                if entries.updateValue(entry, forKey: resource.name) != entry { changed = true }
                applied += 1
            } catch {
                refused.append("\(resource.name.isEmpty ? "(unnamed)" : resource.name): \(error)")
            }
        }
        if changed {
            state.resources[response.typeURL] = entries
            state.generation &+= 1
        }
        if refused.isEmpty {
            acknowledgedTypes.insert(response.typeURL)
        } else {
            // Bounded: a response of a million empty resources must not build a NACK of gigabytes.
            let shown = refused.prefix(Self.maxReasons).map { String($0.prefix(512)) }
            let more = refused.count > Self.maxReasons ? ["\(refused.count - Self.maxReasons) more"] : []
            reply.errorDetail.message = (shown + more).joined(separator: "; ")
            refused = Array(refused.prefix(Self.maxReasons))
        }
        return Outcome(reply: reply, changed: changed, refused: refused, applied: applied, removed: removed)
    }
}
