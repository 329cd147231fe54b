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
    /// 3), types and names in the order of their UTF-8 bytes, as `SnapshotInForce` requires: what
    /// a fresh `SnapshotWriter` writes. Written directly rather than through swift-protobuf's
    /// message objects: a mesh of 25,000 resources is published again on every change, and the
    /// bytes are the same either way (`DeltaADSTests` decodes them with swift-protobuf).
    public func encoded() throws -> [UInt8] {
        var writer = SnapshotWriter()
        return writer.encode(self, touched: nil)
    }

    /// One resource as field 2 of the response. Empty strings and bytes are left out, as proto3
    /// writes them.
    static func appendResource(type: [UInt8], name: String, entry: Entry, into out: inout [UInt8]) {
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
            // The same reading of a resource as a NetWorker's (`SnapshotInForce.Cursor`), without
            // its order check: this side reads back what its own writer wrote.
            var cursor = SnapshotInForce.Cursor(bytes)
            while let resource = try cursor.next() {
                let typeURL = try SnapshotInForce.text(resource.typeURL, "type URL")
                let name = try SnapshotInForce.text(resource.name, "name")
                guard typeURL == XDSConversion.addressType || typeURL == XDSConversion.authorizationType else {
                    throw XDSConversion.Invalid("snapshot resource of type \(typeURL.prefix(80))")
                }
                guard snapshot.resources[typeURL]?[name] == nil else {
                    throw XDSConversion.Invalid("snapshot holds \(name.prefix(80)) twice")
                }
                snapshot.resources[typeURL, default: [:]][name] = Entry(version: try SnapshotInForce.text(resource.version, "version"),
                                                                        body: Array(resource.body))
            }
            generationText = try cursor.generationText.map { try SnapshotInForce.text($0, "generation") }
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
        for typeURL in resources.keys.sorted(by: Self.inByteOrder) {
            for (name, entry) in resources[typeURL]!.sorted(by: { Self.inByteOrder($0.key, $1.key) }) {  // a key of resources
                SnapshotInForce.insert(typeURL: typeURL, name: name, body: entry.body, into: &model, refused: &refused)
            }
        }
    }

    /// The order resources are written in and NetWorkers require (`SnapshotInForce`): by UTF-8
    /// bytes, which Swift's `<` on strings is not beyond ASCII.
    static func inByteOrder(_ a: String, _ b: String) -> Bool { a.utf8.lexicographicallyPrecedes(b.utf8) }
}

/// A resource as a NetWorker converts it.
enum ConvertedResource: Sendable {
    case address(XDSConversion.Address)
    case policy(Policy)
    case refused(String)

    /// A resource must hold what its name says (a workload's uid, a service's or policy's key),
    /// as the xDS worker checks: two names holding one workload would make a change applied in
    /// place differ from a rebuild.
    static func convert(_ body: [UInt8], typeURL: String, name: String) -> ConvertedResource {
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

/// Writes the xDS worker's snapshots, byte for byte as `MeshSnapshot.encoded` does, keeping each
/// resource's encoding in the order NetWorkers require: after a change, only the resources it
/// touched are encoded again and put in place (a binary search), and publishing is a copy. With
/// 25,000 resources, encoding all of them and sorting their names cost the worker tens of
/// milliseconds on every push.
public struct SnapshotWriter: Sendable {
    /// Per type URL, the resources' names and encodings, in the order of the names' bytes.
    private var types: [String: [(name: String, bytes: [UInt8])]] = [:]
    /// Per type URL, each name as it is in `types`. Swift's strings compare (and hash) by
    /// canonical equivalence: the state may hold a name as "é" while `DeltaADS` reports it
    /// touched as "e\u{301}"; this finds the form that is in the list.
    private var forms: [String: [String: String]] = [:]
    private var primed = false

    public init() {}

    /// The bytes of `snapshot`. `touched`: the names (by type URL) changed or removed since the
    /// last call (`DeltaADS.takeTouched`), nil for "any"; the first call encodes everything.
    public mutating func encode(_ snapshot: MeshSnapshot, touched: [String: Set<String>]?) -> [UInt8] {
        guard let touched, primed else {
            types = [:]
            forms = [:]
            for typeURL in snapshot.resources.keys { encodeAll(typeURL, of: snapshot) }
            primed = true
            return write(snapshot.generation)
        }
        for (typeURL, names) in touched {
            // Many names touched (an istiod restart with new versions, a namespace deleted): one
            // sort beats moving a long list once per name.
            let held = types[typeURL]?.count ?? 0
            if names.count > 64 && names.count > held / 16 || !update(typeURL, names: names, of: snapshot) {
                encodeAll(typeURL, of: snapshot)
            }
        }
        return write(snapshot.generation)
    }

    private func write(_ generation: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(types.values.reduce(32) { $0 + $1.reduce(0) { $0 + $1.bytes.count } })
        ProtobufWire.bytes(1, Array(String(generation).utf8), into: &out)
        for typeURL in types.keys.sorted(by: MeshSnapshot.inByteOrder) {
            for resource in types[typeURL]! { out.append(contentsOf: resource.bytes) }  // a key of types
        }
        return out
    }

    /// Encodes every resource of `typeURL` afresh.
    private mutating func encodeAll(_ typeURL: String, of snapshot: MeshSnapshot) {
        let entries = snapshot.resources[typeURL] ?? [:]
        let type = Array(typeURL.utf8)
        let list = entries.sorted { MeshSnapshot.inByteOrder($0.key, $1.key) }.map { name, entry in
            var bytes: [UInt8] = []
            MeshSnapshot.appendResource(type: type, name: name, entry: entry, into: &bytes)
            return (name: name, bytes: bytes)
        }
        types[typeURL] = list.isEmpty ? nil : list
        forms[typeURL] = list.isEmpty ? nil : Dictionary(list.map { ($0.name, $0.name) }, uniquingKeysWith: { first, _ in first })
    }

    /// Re-encodes the touched names of `typeURL` in place. False when the list is not what
    /// `forms` says it is (it then must be encoded afresh; never seen, but a snapshot the
    /// NetWorkers refuse would freeze their mesh).
    private mutating func update(_ typeURL: String, names: Set<String>, of snapshot: MeshSnapshot) -> Bool {
        let type = Array(typeURL.utf8)
        var list = types.removeValue(forKey: typeURL) ?? []  // taken out: changed in place
        var known = forms.removeValue(forKey: typeURL) ?? [:]
        defer {
            if !list.isEmpty { types[typeURL] = list }
            if !known.isEmpty { forms[typeURL] = known }
        }
        func position(_ name: String) -> Int {
            var low = 0, high = list.count
            while low < high {
                let middle = (low + high) / 2
                if MeshSnapshot.inByteOrder(list[middle].name, name) { low = middle + 1 } else { high = middle }
            }
            return low
        }
        for name in names {
            var stored: String? = nil
            var bytes: [UInt8] = []
            if let entries = snapshot.resources[typeURL], let index = entries.index(forKey: name) {
                let (form, entry) = entries[index]
                MeshSnapshot.appendResource(type: type, name: form, entry: entry, into: &bytes)
                stored = form
            }
            // Out with the form in the list, in with the form in the state.
            if let old = known.removeValue(forKey: name) {
                let at = position(old)
                guard at < list.count, list[at].name.utf8.elementsEqual(old.utf8) else { return false }
                if let stored, stored.utf8.elementsEqual(old.utf8) {
                    list[at].bytes = bytes  // the same place
                    known[stored] = stored
                    continue
                }
                list.remove(at: at)
            }
            if let stored {
                list.insert((stored, bytes), at: position(stored))
                known[stored] = stored
            }
        }
        return true
    }
}
