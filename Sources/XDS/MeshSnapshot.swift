import Foundation
import Mesh
import SwiftProtobuf

/// The xDS worker's resources as published to the NetWorkers: every accepted resource of both
/// types with its name and version, and a generation. On the wire it is a
/// `DeltaDiscoveryResponse` (system_version_info = the generation, each resource's `Any` naming
/// its type), so the NetWorker decodes it with the same fuzzed decoder as istiod's pushes and
/// converts every resource again itself: a compromised xDS worker can send it nothing the
/// conversion would refuse from istiod. A restarted xDS worker reads it back to resubscribe with
/// `initial_resource_versions`.
public struct MeshSnapshot: Equatable, Sendable {
    public struct Entry: Equatable, Sendable {
        public let version: String
        /// The resource's serialized message (`Address` or `Authorization`).
        public let body: [UInt8]
        public init(version: String, body: [UInt8]) { self.version = version; self.body = body }
    }

    public var generation: UInt64 = 0
    /// Resource name → entry, per type URL (`XDSConversion.addressType`, `.authorizationType`).
    public var resources: [String: [String: Entry]] = [:]

    public init() {}

    public func entries(_ typeURL: String) -> [String: Entry] { resources[typeURL] ?? [:] }

    /// name → version of one type: what a new stream claims to hold.
    public func versions(_ typeURL: String) -> [String: String] { entries(typeURL).mapValues(\.version) }

    public func encoded() throws -> [UInt8] {
        var message = Envoy_Service_Discovery_V3_DeltaDiscoveryResponse()
        message.systemVersionInfo = String(generation)
        for typeURL in resources.keys.sorted() {
            for (name, entry) in resources[typeURL]!.sorted(by: { $0.key < $1.key }) {
                var resource = Envoy_Service_Discovery_V3_Resource()
                resource.name = name
                resource.version = entry.version
                resource.resource.typeURL = typeURL
                resource.resource.value = Data(entry.body)
                message.resources.append(resource)
            }
        }
        return try message.serializedBytes()
    }

    /// Decodes a snapshot; refuses bytes that are not one, a type it does not know, a resource
    /// twice, and a generation that is not a number.
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws -> MeshSnapshot {
        let message: Envoy_Service_Discovery_V3_DeltaDiscoveryResponse
        do {
            let data = bytes.isEmpty ? Data() : Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: bytes.baseAddress!),
                                                     count: bytes.count, deallocator: .none)
            message = try XDSConversion.response(data)
        } catch {
            throw XDSConversion.Invalid("not a mesh snapshot: \(error)")
        }
        guard let generation = UInt64(message.systemVersionInfo) else {
            throw XDSConversion.Invalid("snapshot generation \"\(message.systemVersionInfo.prefix(32))\"")
        }
        var snapshot = MeshSnapshot()
        snapshot.generation = generation
        for resource in message.resources {
            let typeURL = resource.resource.typeURL
            guard typeURL == XDSConversion.addressType || typeURL == XDSConversion.authorizationType else {
                throw XDSConversion.Invalid("snapshot resource of type \(typeURL.prefix(80))")
            }
            guard snapshot.resources[typeURL]?[resource.name] == nil else {
                throw XDSConversion.Invalid("snapshot holds \(resource.name.prefix(80)) twice")
            }
            snapshot.resources[typeURL, default: [:]][resource.name] = Entry(version: resource.version, body: [UInt8](resource.resource.value))
        }
        return snapshot
    }

    /// The mesh model the snapshot describes, and the resources that did not convert ("name:
    /// reason"), which are left out.
    public func model() -> (model: MeshModel, refused: [String]) {
        var model = MeshModel()
        var refused: [String] = []
        insert(into: &model, refused: &refused)
        return (model, refused)
    }

    /// Adds the snapshot's resources to `model` (the local config's, when both are set).
    public func insert(into model: inout MeshModel, refused: inout [String]) {
        var cache = ConversionCache()
        cache.insert(self, into: &model, refused: &refused)
    }

    /// Adds the snapshot's resources to `model`, converting only those whose bytes changed since
    /// the last snapshot put through `cache`: a push of one workload into a mesh of 25,000 then
    /// decodes one resource, not all of them.
    public func insert(into model: inout MeshModel, refused: inout [String], cache: inout ConversionCache) {
        cache.insert(self, into: &model, refused: &refused)
    }
}

/// Converted resources by type and name with the bytes they came from (a resource is converted
/// again only when its bytes differ); entries the latest snapshot no longer holds are dropped.
public struct ConversionCache: Sendable {
    enum Converted: Sendable {
        case address(XDSConversion.Address)
        case policy(Policy)
        case refused(String)
    }

    private var entries: [String: [String: (body: [UInt8], converted: Converted)]] = [:]
    /// How many resources the last `insert` had to convert (the rest came from the cache).
    public private(set) var lastConversions = 0

    public init() {}

    mutating func insert(_ snapshot: MeshSnapshot, into model: inout MeshModel, refused: inout [String]) {
        lastConversions = 0
        var next: [String: [String: (body: [UInt8], converted: Converted)]] = [:]
        for typeURL in [XDSConversion.addressType, XDSConversion.authorizationType] {
            let previous = entries[typeURL] ?? [:]
            var kept: [String: (body: [UInt8], converted: Converted)] = [:]
            for (name, entry) in snapshot.entries(typeURL).sorted(by: { $0.key < $1.key }) {
                let converted: Converted
                if let cached = previous[name], cached.body == entry.body {
                    converted = cached.converted
                } else {
                    lastConversions += 1
                    converted = Self.convert(entry.body, typeURL: typeURL)
                }
                kept[name] = (entry.body, converted)
                switch converted {
                case .address(.workload(let workload)): model.insert(workload)
                case .address(.service(let service)): model.insert(service)
                case .policy(let policy): model.insert(policy)
                case .refused(let reason): refused.append("\(name): \(reason)")
                }
            }
            next[typeURL] = kept
        }
        entries = next
    }

    static func convert(_ body: [UInt8], typeURL: String) -> Converted {
        do {
            return typeURL == XDSConversion.addressType ? .address(try XDSConversion.address(body))
                                                         : .policy(try XDSConversion.authorization(body))
        } catch {
            return .refused("\(error)")
        }
    }
}
