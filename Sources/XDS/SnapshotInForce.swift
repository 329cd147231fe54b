import Foundation
import Mesh
import Shared

/// The xDS side of a NetWorker's mesh model: the bytes of the snapshot in force, and what the
/// next one changes, found on the bytes themselves.
///
/// The xDS worker publishes its whole accepted set on every change (so a restarted NetWorker, or
/// one that skipped a generation, needs nothing but the latest snapshot). To make a change cost
/// what it changes rather than what the mesh holds, the writer puts the resources in a strict
/// order (type URL, then name, both by their UTF-8 bytes), and the NetWorker walks the new
/// snapshot beside the last one: a resource whose bytes are identical is skipped without a copy
/// or an allocation, and only the resources that appeared, changed or went are decoded,
/// converted and applied to the model. A snapshot out of that order (or holding a resource twice)
/// is refused like any malformed one.
///
/// Resources identical to the last snapshot's are not checked again (they were when they first
/// came); everything else is: the structure, the order, the type URLs, UTF-8 names, the count.
/// Swift's strings compare by canonical equivalence ("é" written two ways is one key of the
/// model), so two names of a type that differ in bytes but not as strings are refused as a
/// resource twice; that costs a pass over the names only when one of them is not ASCII.
/// Fuzzed (target `xds`): the changes between two snapshots turn the first's resources into the
/// second's.
public struct SnapshotInForce: Sendable {
    public enum Change: Equatable, Sendable {
        case put(typeURL: String, name: String, body: [UInt8])
        case remove(typeURL: String, name: String)
    }

    /// The snapshot's bytes (empty before the first).
    public private(set) var bytes: [UInt8] = []
    public private(set) var generation: UInt64 = 0
    /// The names of its Address resources (workload uids and service keys).
    public private(set) var addressNames = Set<String>()
    /// What the last accepted snapshot changed that the model does not have yet.
    public private(set) var pending: [Change] = []
    /// Whether a snapshot was accepted (one always holds its generation, so its bytes are never
    /// empty).
    public var hasSnapshot: Bool { !bytes.isEmpty }

    public init() {}

    /// Checks `new` against the snapshot in force and, if it is one, makes it the snapshot in
    /// force: its changes become `pending`. On a refusal nothing changes.
    public mutating func accept(_ new: UnsafeRawBufferPointer) throws {
        let (generation, changes) = try bytes.withUnsafeBytes { old in
            try Self.changes(from: hasSnapshot ? old : nil, to: new)
        }
        // Removals come first (`changes`), then puts: a name may come back in another form.
        bytes = Array(new)
        self.generation = generation
        for change in changes {
            switch change {
            case .put(XDSConversion.addressType, let name, _): addressNames.insert(name)
            case .remove(XDSConversion.addressType, let name): addressNames.remove(name)
            default: break
            }
        }
        pending += changes
    }

    /// Applies the pending changes to `model`, which must hold `base` (the local config's model)
    /// and the previous snapshot, as `insertAll` or this left it. A change to a workload, service
    /// or policy that `base` also holds cannot be undone that way (the base's would have to come
    /// back): then nothing is changed, false is returned, and the caller rebuilds with `insertAll`.
    /// `refused`: the changed resources that did not convert ("name: reason").
    public mutating func applyPending(to model: inout MeshModel, base: MeshModel, refused: inout [String]) -> Bool {
        for change in pending {
            switch change {
            case .put(let typeURL, let name, _), .remove(let typeURL, let name):
                let collides = typeURL == XDSConversion.addressType
                    ? base.workloads[name] != nil || base.services[name] != nil
                    : base.policies[name] != nil
                if collides { return false }
            }
        }
        for change in pending {
            switch change {
            case .remove(let typeURL, let name):
                Self.remove(typeURL: typeURL, name: name, from: &model)
            case .put(let typeURL, let name, let body):
                // Whatever the name held before goes first (a workload may become a service).
                Self.remove(typeURL: typeURL, name: name, from: &model)
                Self.insert(typeURL: typeURL, name: name, body: body, into: &model, refused: &refused)
            }
        }
        pending = []
        return true
    }

    /// Converts every resource of the snapshot in force into `model` (on top of the local
    /// config's, when both are set); the pending changes are then part of it.
    public mutating func insertAll(into model: inout MeshModel, refused: inout [String]) {
        pending = []
        guard hasSnapshot else { return }
        bytes.withUnsafeBytes { all in
            var cursor = Cursor(all)
            do {
                while let resource = try cursor.next() {
                    Self.insert(typeURL: try Self.text(resource.typeURL, "type URL"), name: try Self.text(resource.name, "name"),
                                body: Array(resource.body), into: &model, refused: &refused)
                }
            } catch {
                // Bytes `accept` took, read by the same code: unreachable. Were it reached, a
                // model without the snapshot's policies would allow what they deny; stop instead.
                preconditionFailure("the snapshot in force cannot be read again: \(error)")
            }
        }
    }

    private static func remove(typeURL: String, name: String, from model: inout MeshModel) {
        if typeURL == XDSConversion.addressType {
            model.removeWorkload(uid: name)
            model.removeService(key: name)
        } else {
            model.removePolicy(key: name)
        }
    }

    static func insert(typeURL: String, name: String, body: [UInt8], into model: inout MeshModel, refused: inout [String]) {
        switch ConvertedResource.convert(body, typeURL: typeURL, name: name) {
        case .address(.workload(let workload)): model.insert(workload)
        case .address(.service(let service)): model.insert(service)
        case .policy(let policy): model.insert(policy)
        case .refused(let reason): refused.append("\(name): \(reason)")
        }
    }

    // MARK: - The walk

    /// One resource of a snapshot, as slices of its bytes.
    struct Resource {
        let whole: Slice<UnsafeRawBufferPointer>
        let version: Slice<UnsafeRawBufferPointer>
        let typeURL: Slice<UnsafeRawBufferPointer>
        let name: Slice<UnsafeRawBufferPointer>
        let body: Slice<UnsafeRawBufferPointer>
    }

    /// The resources of a snapshot in turn, and its generation once they are all read.
    struct Cursor {
        var reader: ProtobufWire.Reader<UnsafeRawBufferPointer>
        var generationText: Slice<UnsafeRawBufferPointer>?

        init(_ bytes: UnsafeRawBufferPointer) { reader = ProtobufWire.Reader(bytes) }

        /// `DeltaDiscoveryResponse`: system_version_info 1 (the generation), resources 2, each a
        /// `Resource` (version 1, resource 2 = `Any` {type_url 1, value 2}, name 3); other
        /// fields skipped as protobuf allows, the last of a repeated singular field kept.
        mutating func next() throws -> Resource? {
            while let (field, wireType) = try reader.tag() {
                switch field {
                case 1: generationText = try reader.lengthDelimited(field, wireType)
                case 2: return try Self.resource(try reader.lengthDelimited(field, wireType))
                default: try reader.skip(wireType)
                }
            }
            return nil
        }

        static func resource(_ whole: Slice<UnsafeRawBufferPointer>) throws -> Resource {
            let empty = whole[whole.startIndex..<whole.startIndex]
            var version = empty, typeURL = empty, name = empty, body = empty
            var resource = ProtobufWire.Reader(whole)
            while let (field, wireType) = try resource.tag() {
                switch field {
                case 1: version = try resource.lengthDelimited(field, wireType)
                case 3: name = try resource.lengthDelimited(field, wireType)
                case 2:
                    var any = ProtobufWire.Reader(try resource.lengthDelimited(field, wireType))
                    while let (field, wireType) = try any.tag() {
                        switch field {
                        case 1: typeURL = try any.lengthDelimited(field, wireType)
                        case 2: body = try any.lengthDelimited(field, wireType)
                        default: try any.skip(wireType)
                        }
                    }
                default: try resource.skip(wireType)
                }
            }
            return Resource(whole: whole, version: version, typeURL: typeURL, name: name, body: body)
        }
    }

    private static let knownTypes = [Array(XDSConversion.addressType.utf8), Array(XDSConversion.authorizationType.utf8)]

    /// Byte order of two slices (memcmp over the shorter, then the shorter first).
    static func order(_ a: Slice<UnsafeRawBufferPointer>, _ b: Slice<UnsafeRawBufferPointer>) -> Int {
        let common = min(a.count, b.count)
        if common > 0 {
            let result = memcmp(a.base.baseAddress! + a.startIndex, b.base.baseAddress! + b.startIndex, common)  // non-empty slices
            if result != 0 { return Int(result) }
        }
        return a.count - b.count
    }

    /// (type URL, name) order.
    static func order(_ a: Resource, _ b: Resource) -> Int {
        let byType = order(a.typeURL, b.typeURL)
        return byType != 0 ? byType : order(a.name, b.name)
    }

    static func text(_ slice: Slice<UnsafeRawBufferPointer>, _ what: String) throws -> String {
        guard let text = String(validating: slice, as: UTF8.self) else { throw XDSConversion.Invalid("snapshot \(what) is not UTF-8") }
        return text
    }

    /// The generation of `new` and what changed from `old` (nil: everything is new): the
    /// removals first, then the puts, so that applied in turn they never remove what a put of
    /// an equivalent name just brought. `old` must be a snapshot this accepted before.
    static func changes(from old: UnsafeRawBufferPointer?, to new: UnsafeRawBufferPointer) throws -> (UInt64, [Change]) {
        var changes: [Change] = [], puts: [Change] = []
        var cursor = Cursor(new)
        var nonASCII = false
        var generationText: Slice<UnsafeRawBufferPointer>?
        do {
            var oldCursor = old.map(Cursor.init)
            var oldNext = try oldCursor?.next()
            func removed(_ resource: Resource) throws -> Change {
                .remove(typeURL: try text(resource.typeURL, "type URL"), name: try text(resource.name, "name"))
            }
            var previous: Resource?
            var ofType = 0  // resources of the current type: the xDS worker's limit holds here too
            while let resource = try cursor.next() {
                if let previous, order(previous, resource) >= 0 {
                    throw XDSConversion.Invalid("snapshot resources out of order or twice (at \(String(decoding: resource.name.prefix(80), as: UTF8.self)))")
                }
                ofType = previous.map { order($0.typeURL, resource.typeURL) == 0 } == true ? ofType + 1 : 1
                guard ofType <= DeltaADS.maxResourcesPerType else {
                    throw XDSConversion.Invalid("snapshot of more than \(DeltaADS.maxResourcesPerType) resources of a type")
                }
                previous = resource
                if !nonASCII { nonASCII = resource.name.contains { $0 >= 0x80 } }
                while let gone = oldNext, order(gone, resource) < 0 {
                    changes.append(try removed(gone))
                    oldNext = try oldCursor?.next()
                }
                if let same = oldNext, order(same, resource) == 0 {
                    oldNext = try oldCursor?.next()
                    if order(same.whole, resource.whole) == 0 { continue }  // unchanged: checked when it came
                }
                guard knownTypes.contains(where: { $0.elementsEqual(resource.typeURL) }) else {
                    throw XDSConversion.Invalid("snapshot resource of type \(String(decoding: resource.typeURL.prefix(80), as: UTF8.self))")
                }
                puts.append(.put(typeURL: try text(resource.typeURL, "type URL"), name: try text(resource.name, "name"),
                                 body: Array(resource.body)))
            }
            while let gone = oldNext {
                changes.append(try removed(gone))
                oldNext = try oldCursor?.next()
            }
            generationText = cursor.generationText
            if nonASCII {
                var names: [[UInt8]: Set<String>] = [:]  // by type URL
                var again = Cursor(new)
                while let resource = try again.next() {
                    guard names[Array(resource.typeURL), default: []].insert(try text(resource.name, "name")).inserted else {
                        throw XDSConversion.Invalid("snapshot holds \(String(decoding: resource.name.prefix(80), as: UTF8.self)) twice (as equivalent strings)")
                    }
                }
            }
        } catch let malformed as ProtobufWire.Malformed {
            throw XDSConversion.Invalid("not a mesh snapshot: \(malformed.description)")
        }
        guard let generationText, generationText.allSatisfy({ (0x30...0x39).contains($0) }),
              let generation = UInt64(String(decoding: generationText, as: UTF8.self)) else {
            throw XDSConversion.Invalid("snapshot generation missing or not a number")
        }
        return (generation, changes + puts)
    }
}
