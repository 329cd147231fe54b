import Foundation
import Mesh
import Shared
import SwiftProtobuf

/// The xDS worker's resources as published to the NetWorkers: every accepted resource of both
/// types with its name and version, and a generation. On the wire it is a
/// `DeltaDiscoveryResponse` (system_version_info = the generation, each resource's `Any` naming
/// its type), written and read directly on the wire (fuzzed), and the NetWorker converts every
/// resource again itself with the decoders of istiod's pushes: a compromised xDS worker can send it nothing the
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

    /// The snapshot as a `DeltaDiscoveryResponse` (system_version_info 1 = the generation;
    /// resources 2, each a `Resource`: version 1, resource 2 = `Any` {type_url 1, value 2}, name
    /// 3), types and names in order. Written directly rather than through swift-protobuf's
    /// message objects: a mesh of 25,000 resources is published again on every change, and the
    /// bytes are the same either way (`DeltaADSTests` decodes them with swift-protobuf).
    public func encoded() throws -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(resources.values.reduce(0) { $0 + $1.values.reduce(0) { $0 + $1.body.count + 96 } } + 32)
        ProtobufWire.bytes(1, Array(String(generation).utf8), into: &out)
        for typeURL in resources.keys.sorted() {
            let type = Array(typeURL.utf8)
            for (name, entry) in resources[typeURL]!.sorted(by: { $0.key < $1.key }) {
                // Empty strings and bytes are left out, as proto3 writes them.
                let version = Array(entry.version.utf8), name = Array(name.utf8)
                let anyLength = ProtobufWire.fieldLength(type.count) + ProtobufWire.fieldLength(entry.body.count)
                let resourceLength = ProtobufWire.fieldLength(version.count) + 1 + ProtobufWire.varintLength(anyLength) + anyLength
                    + ProtobufWire.fieldLength(name.count)
                ProtobufWire.header(2, length: resourceLength, into: &out)
                ProtobufWire.bytes(1, version, into: &out)
                ProtobufWire.header(2, length: anyLength, into: &out)
                ProtobufWire.bytes(1, type, into: &out)
                ProtobufWire.bytes(2, entry.body, into: &out)
                ProtobufWire.bytes(3, name, into: &out)
            }
        }
        return out
    }

    /// Decodes a snapshot; refuses bytes that are not one, a type it does not know, a resource
    /// twice, a string that is not UTF-8, and a generation that is not a number. Read directly
    /// from the wire (see `encoded`); other fields are skipped as protobuf allows, and anything
    /// malformed (a length past the end, a varint over 10 bytes, a group) is refused. Fuzzed
    /// (target `xds`).
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws -> MeshSnapshot {
        var snapshot = MeshSnapshot()
        var generationText: String?
        do {
            // Room for every resource at once: growing a dictionary of 25,000 rehashes it.
            var counter = ProtobufWire.Reader(bytes)
            var count = 0
            while let (field, wireType) = try counter.tag() {
                if field == 2 { count += 1 }
                try counter.skip(wireType)
            }
            guard count <= 2 * DeltaADS.maxResourcesPerType else {
                throw XDSConversion.Invalid("snapshot of \(count) resources, over \(2 * DeltaADS.maxResourcesPerType)")
            }
            if count > 0 { snapshot.resources[XDSConversion.addressType] = Dictionary(minimumCapacity: count) }
            var reader = ProtobufWire.Reader(bytes)
            while let (field, wireType) = try reader.tag() {
                switch field {
                case 1: generationText = try reader.string(field, wireType)
                case 2: try decodeResource(try reader.lengthDelimited(field, wireType), into: &snapshot)
                default: try reader.skip(wireType)
                }
            }
        } catch let malformed as ProtobufWire.Malformed {
            throw XDSConversion.Invalid("not a mesh snapshot: \(malformed.description)")
        }
        guard let generationText, let generation = UInt64(generationText) else {
            throw XDSConversion.Invalid("snapshot generation \"\((generationText ?? "").prefix(32))\"")
        }
        snapshot.generation = generation
        if snapshot.resources[XDSConversion.addressType]?.isEmpty == true { snapshot.resources[XDSConversion.addressType] = nil }
        return snapshot
    }

    /// One `Resource` (version 1, resource 2 = `Any` {type_url 1, value 2}, name 3).
    private static func decodeResource(_ bytes: Slice<UnsafeRawBufferPointer>, into snapshot: inout MeshSnapshot) throws {
        var version = "", name = "", typeURL = ""
        var body: [UInt8] = []
        var resource = ProtobufWire.Reader(bytes)
        while let (field, wireType) = try resource.tag() {
            switch field {
            case 1: version = try resource.string(field, wireType)
            case 3: name = try resource.string(field, wireType)
            case 2:
                var any = ProtobufWire.Reader(try resource.lengthDelimited(field, wireType))
                while let (field, wireType) = try any.tag() {
                    switch field {
                    case 1: typeURL = try any.string(field, wireType)
                    case 2: body = Array(try any.lengthDelimited(field, wireType))
                    default: try any.skip(wireType)
                    }
                }
            default: try resource.skip(wireType)
            }
        }
        guard typeURL == XDSConversion.addressType || typeURL == XDSConversion.authorizationType else {
            throw XDSConversion.Invalid("snapshot resource of type \(typeURL.prefix(80))")
        }
        guard snapshot.resources[typeURL]?[name] == nil else {
            throw XDSConversion.Invalid("snapshot holds \(name.prefix(80)) twice")
        }
        snapshot.resources[typeURL, default: [:]][name] = Entry(version: version, body: body)
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

    /// Applies the snapshot to `model` as a change from the last one put through `cache`:
    /// resources that went are removed, and those whose bytes changed or that are new are
    /// converted and inserted; nothing else is touched, so one workload pushed into a mesh of
    /// 25,000 costs one removal and one insertion. `model` must hold what `cache` last put there
    /// on top of `base` (the local config's model). A change to a workload, service or policy
    /// that `base` also holds cannot be undone that way (the base's would have to come back):
    /// then nothing is changed and false is returned, and the caller rebuilds with `insert`.
    /// `refused`: the changed resources that did not convert.
    public func update(_ model: inout MeshModel, base: MeshModel, refused: inout [String], cache: inout ConversionCache) -> Bool {
        cache.update(self, model: &model, base: base, refused: &refused)
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

    /// Each resource's bytes and what they converted to, by type and name. Kept apart: finding
    /// what changed compares bytes only, without copying 25,000 converted resources.
    private var bodies: [String: [String: [UInt8]]] = [:]
    private var converted: [String: [String: Converted]] = [:]
    /// How many resources the last `insert` had to convert (the rest came from the cache).
    public private(set) var lastConversions = 0

    public init() {}

    mutating func insert(_ snapshot: MeshSnapshot, into model: inout MeshModel, refused: inout [String]) {
        lastConversions = 0
        var nextBodies: [String: [String: [UInt8]]] = [:]
        var nextConverted: [String: [String: Converted]] = [:]
        for typeURL in [XDSConversion.addressType, XDSConversion.authorizationType] {
            let previousBodies = bodies[typeURL] ?? [:]
            let previous = converted[typeURL] ?? [:]
            var keptBodies: [String: [UInt8]] = [:], kept: [String: Converted] = [:]
            for (name, entry) in snapshot.entries(typeURL).sorted(by: { $0.key < $1.key }) {
                let result: Converted
                if previousBodies[name] == entry.body, let cached = previous[name] {
                    result = cached
                } else {
                    lastConversions += 1
                    result = Self.convert(entry.body, typeURL: typeURL, name: name)
                }
                keptBodies[name] = entry.body
                kept[name] = result
                Self.apply(result, name: name, to: &model, refused: &refused)
            }
            nextBodies[typeURL] = keptBodies
            nextConverted[typeURL] = kept
        }
        bodies = nextBodies
        converted = nextConverted
    }

    mutating func update(_ snapshot: MeshSnapshot, model: inout MeshModel, base: MeshModel, refused: inout [String]) -> Bool {
        guard !bodies.isEmpty else { return false }  // nothing put through yet: `insert` first
        lastConversions = 0
        var gone: [Converted] = []
        var added: [(typeURL: String, name: String, body: [UInt8], converted: Converted)] = []
        var removedNames: [(typeURL: String, name: String)] = []
        for typeURL in [XDSConversion.addressType, XDSConversion.authorizationType] {
            let previous = bodies[typeURL] ?? [:]
            let current = snapshot.entries(typeURL)
            var appeared = 0
            for (name, entry) in current {
                if let body = previous[name] {
                    if body == entry.body { continue }
                    if let old = converted[typeURL]?[name] { gone.append(old) }
                } else {
                    appeared += 1
                }
                lastConversions += 1
                added.append((typeURL, name, entry.body, Self.convert(entry.body, typeURL: typeURL, name: name)))
            }
            // Names went only if the counts say so (then they are looked for).
            if previous.count + appeared != current.count {
                for name in previous.keys where current[name] == nil {
                    if let old = converted[typeURL]?[name] { gone.append(old) }
                    removedNames.append((typeURL, name))
                }
            }
        }
        // Nothing the local config also holds may change this way.
        func collides(_ converted: Converted) -> Bool {
            switch converted {
            case .address(.workload(let workload)): return base.workloads[workload.uid] != nil
            case .address(.service(let service)): return base.services[service.key] != nil
            case .policy(let policy): return base.policies[policy.key] != nil
            case .refused: return false
            }
        }
        if gone.contains(where: collides) || added.contains(where: { collides($0.converted) }) { return false }
        added.sort { ($0.typeURL, $0.name) < ($1.typeURL, $1.name) }  // as `insert` goes: by name
        for old in gone {
            switch old {
            case .address(.workload(let workload)): model.removeWorkload(uid: workload.uid)
            case .address(.service(let service)): model.removeService(key: service.key)
            case .policy(let policy): model.removePolicy(key: policy.key)
            case .refused: break
            }
        }
        for (typeURL, name) in removedNames {
            bodies[typeURL]?[name] = nil
            converted[typeURL]?[name] = nil
        }
        for change in added {
            bodies[change.typeURL, default: [:]][change.name] = change.body
            converted[change.typeURL, default: [:]][change.name] = change.converted
            Self.apply(change.converted, name: change.name, to: &model, refused: &refused)
        }
        return true
    }

    private static func apply(_ converted: Converted, name: String, to model: inout MeshModel, refused: inout [String]) {
        switch converted {
        case .address(.workload(let workload)): model.insert(workload)
        case .address(.service(let service)): model.insert(service)
        case .policy(let policy): model.insert(policy)
        case .refused(let reason): refused.append("\(name): \(reason)")
        }
    }

    /// A resource must hold what its name says (a workload's uid, a service's or policy's key),
    /// as the xDS worker checks: two names holding one workload would make a change applied in
    /// place differ from a rebuild.
    static func convert(_ body: [UInt8], typeURL: String, name: String) -> Converted {
        do {
            if typeURL == XDSConversion.addressType {
                let address = try XDSConversion.address(body)
                guard address.name == name else { throw XDSConversion.Invalid("named \(name.prefix(80)) but holds \(address.name.prefix(80))") }
                return .address(address)
            }
            let policy = try XDSConversion.authorization(body)
            guard policy.key == name else { throw XDSConversion.Invalid("named \(name.prefix(80)) but holds \(policy.key.prefix(80))") }
            return .policy(policy)
        } catch {
            return .refused("\(error)")
        }
    }
}
