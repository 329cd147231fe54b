import Foundation
import HTTP2Client
import Mesh
@testable import Shared
import SwiftProtobuf
import Testing
@testable import XDS

/// The delta ADS protocol without I/O (ISTIO_COMPAT §6.3), the snapshot the xDS worker publishes,
/// and gRPC message framing. The request and response bytes are checked against field numbers
/// written by hand from §7.5.
@Suite struct DeltaADSTests {
    typealias Wire = XDSConversionTests

    static func workloadAddress(uid: String, ip: [UInt8] = [10, 0, 0, 7]) -> [UInt8] {
        let workload = Wire.stringField(20, uid) + Wire.stringField(1, "w") + Wire.stringField(2, "ns")
            + Wire.bytesField(3, ip) + Wire.varintField(5, 1) + Wire.stringField(7, "sa")
        return Wire.bytesField(1, workload)
    }

    static func policy(name: String, namespace: String) -> [UInt8] {
        // Authorization: name 1, namespace 2, scope 3 (NAMESPACE = 1), action 4 (DENY = 1).
        Wire.stringField(1, name) + Wire.stringField(2, namespace) + Wire.varintField(3, 1) + Wire.varintField(4, 1)
    }

    /// A DeltaDiscoveryResponse from bytes written from §7.5: system_version_info 1, resources 2
    /// (Resource: version 1, resource 2 = Any{type_url 1, value 2}, name 3), type_url 4, nonce 5,
    /// removed_resources 6.
    static func response(_ typeURL: String, nonce: String, resources: [(String, String, [UInt8])], removed: [String] = []) throws
        -> Envoy_Service_Discovery_V3_DeltaDiscoveryResponse {
        var bytes = Wire.stringField(1, "v") + Wire.stringField(4, typeURL) + Wire.stringField(5, nonce)
        for (name, version, body) in resources {
            let any = Wire.stringField(1, typeURL) + Wire.bytesField(2, body)
            bytes += Wire.bytesField(2, Wire.stringField(1, version) + Wire.bytesField(2, any) + Wire.stringField(3, name))
        }
        for name in removed { bytes += Wire.stringField(6, name) }
        return try Envoy_Service_Discovery_V3_DeltaDiscoveryResponse(serializedBytes: bytes)
    }

    static func node() -> Envoy_Service_Discovery_V3_Node {
        var node = Envoy_Service_Discovery_V3_Node()
        node.id = "ztunnel~10.0.0.42~z.istio-system~istio-system.svc.cluster.local"
        return node
    }

    @Test func aStreamOpensBothTypesWithTheNodeAndTheVersionsHeld() throws {
        var state = MeshSnapshot()
        state.resources[XDSConversion.addressType] = ["a/b": .init(version: "7", body: [])]
        var ads = DeltaADS(node: Self.node(), state: state)
        let requests = ads.streamOpened()
        #expect(requests.map(\.typeURL) == [XDSConversion.addressType, XDSConversion.authorizationType])
        // DeltaDiscoveryRequest: node 1 (Node: id 1), type_url 2, initial_resource_versions 5
        // (map entry: key 1, value 2); no subscribe list (3) = wildcard.
        let bytes: [UInt8] = try requests[0].serializedBytes()
        let node = Wire.bytesField(1, Wire.stringField(1, Self.node().id))
        let versions = Wire.bytesField(5, Wire.stringField(1, "a/b") + Wire.stringField(2, "7"))
        #expect(bytes.starts(with: node))
        #expect(Self.contains(bytes, Wire.stringField(2, XDSConversion.addressType)))
        #expect(Self.contains(bytes, versions))
        #expect(requests[1].initialResourceVersions.isEmpty && requests[1].hasNode)
    }

    @Test func goodResourcesApplyBadOnesAreNackedAndKeepTheirOldVersion() throws {
        var ads = DeltaADS(node: Self.node())
        _ = ads.streamOpened()
        let first = ads.handle(try Self.response(XDSConversion.addressType, nonce: "n1",
                                                 resources: [("c//Pod/ns/a", "1", Self.workloadAddress(uid: "c//Pod/ns/a"))]))
        #expect(first.refused.isEmpty && first.changed && !first.reply.hasErrorDetail && first.reply.responseNonce == "n1")
        // ACK: type_url 2 and response_nonce 6 only.
        let ack: [UInt8] = try first.reply.serializedBytes()
        #expect(ack == Wire.stringField(2, XDSConversion.addressType) + Wire.stringField(6, "n1"))
        #expect(!ads.isSynced)

        let second = ads.handle(try Self.response(XDSConversion.addressType, nonce: "n2", resources: [
            ("c//Pod/ns/a", "2", Self.workloadAddress(uid: "c//Pod/ns/a", ip: [10, 0, 0, 7, 9])),  // 5-byte IP
            ("c//Pod/ns/b", "1", Self.workloadAddress(uid: "c//Pod/ns/b")),
            ("c//Pod/ns/wrong", "1", Self.workloadAddress(uid: "c//Pod/ns/other")),
        ]))
        #expect(second.refused.count == 2 && second.applied == 1 && second.changed)
        // NACK: error_detail 7 (Status.message 2) = "name: reason" joined with "; ".
        let message = second.reply.errorDetail.message
        #expect(message.hasPrefix("c//Pod/ns/a: ") && message.contains("; c//Pod/ns/wrong: "), "\(message)")
        let nack: [UInt8] = try second.reply.serializedBytes()
        #expect(Self.contains(nack, Wire.bytesField(7, Wire.stringField(2, message))))
        #expect(ads.state.versions(XDSConversion.addressType) == ["c//Pod/ns/a": "1", "c//Pod/ns/b": "1"])

        let removal = ads.handle(try Self.response(XDSConversion.addressType, nonce: "n3", resources: [], removed: ["c//Pod/ns/b", "unknown"]))
        #expect(removal.removed == 1 && removal.refused.isEmpty)
        #expect(ads.state.versions(XDSConversion.addressType) == ["c//Pod/ns/a": "1"])
    }

    @Test func aNackNamesAtMostAHundredRefusals() throws {
        var ads = DeltaADS(node: Self.node())
        let bad = (0..<150).map { ("c//Pod/ns/\($0)", "1", [UInt8]([0x0a, 0x01])) }
        let outcome = ads.handle(try Self.response(XDSConversion.addressType, nonce: "n", resources: bad))
        #expect(outcome.refused.count == DeltaADS.maxReasons)
        #expect(outcome.reply.errorDetail.message.hasSuffix("; 50 more"), "\(outcome.reply.errorDetail.message.suffix(40))")
    }

    @Test func syncNeedsAnAcceptedFirstResponseOfEachTypeAndUnknownTypesAreAcked() throws {
        var ads = DeltaADS(node: Self.node())
        _ = ads.streamOpened()
        let unknown = ads.handle(try Self.response("type.googleapis.com/istio.workload.Workload", nonce: "u", resources: [("x", "1", [1])]))
        #expect(!unknown.changed && unknown.refused.isEmpty && unknown.reply.responseNonce == "u")
        let badPolicy = ads.handle(try Self.response(XDSConversion.authorizationType, nonce: "p1",
                                                     resources: [("ns/p", "1", Self.policy(name: "other", namespace: "ns"))]))
        #expect(badPolicy.refused.count == 1)
        _ = ads.handle(try Self.response(XDSConversion.addressType, nonce: "a1", resources: []))
        #expect(!ads.isSynced)  // a NACK does not count (§6.4)
        _ = ads.handle(try Self.response(XDSConversion.authorizationType, nonce: "p2",
                                         resources: [("ns/p", "1", Self.policy(name: "p", namespace: "ns"))]))
        #expect(ads.isSynced)
        _ = ads.streamOpened()
        #expect(!ads.isSynced)
    }

    @Test func aSnapshotRoundTripsAndConvertsIntoTheModel() throws {
        var ads = DeltaADS(node: Self.node())
        _ = ads.handle(try Self.response(XDSConversion.addressType, nonce: "a",
                                         resources: [("c//Pod/ns/a", "1", Self.workloadAddress(uid: "c//Pod/ns/a"))]))
        _ = ads.handle(try Self.response(XDSConversion.authorizationType, nonce: "p",
                                         resources: [("ns/p", "3", Self.policy(name: "p", namespace: "ns"))]))
        let bytes = try ads.state.encoded()
        let decoded = try bytes.withUnsafeBytes { try MeshSnapshot.decode($0) }
        #expect(decoded == ads.state && decoded.generation == 2)
        let (model, refused) = decoded.model()
        #expect(refused.isEmpty && model.workloads.keys.sorted() == ["c//Pod/ns/a"] && model.policies.keys.sorted() == ["ns/p"])

        // Through a sealed memfd, as the NetWorker receives it.
        let fd = try SealedMemfd.make(name: "test", bytes)
        let mapped = try SealedMemfd.withContents(fd.rawValue, maxBytes: SealedMemfd.maxMeshSnapshotBytes) { try MeshSnapshot.decode($0) }
        #expect(mapped == decoded)
        #expect(throws: SealedMemfd.Refused.self) { try SealedMemfd.checkedSize(fd.rawValue, maxBytes: bytes.count - 1) }
    }

    /// A service Address (§7.1): name 1, namespace 2, hostname 3, addresses 4 (NetworkAddress:
    /// address 2), ports 5 (Port: service_port 1, target_port 2).
    static func serviceAddress(name: String, vip: [UInt8], namespace: String = "ns") -> [UInt8] {
        let service = Wire.stringField(1, name) + Wire.stringField(2, namespace) + Wire.stringField(3, "\(name).svc")
            + Wire.bytesField(4, Wire.bytesField(2, vip)) + Wire.bytesField(5, Wire.varintField(1, 80) + Wire.varintField(2, 8080))
        return Wire.bytesField(2, service)
    }

    /// A change applied in place gives the same model as a rebuild, step after step of random
    /// churn: workloads that share addresses (a reused pod IP), services that share VIPs,
    /// policies, removals, and a refused resource; and a change that touches what the base
    /// (the local config) holds is not applied in place.
    @Test func aChangeAppliedInPlaceEqualsARebuild() throws {
        var generator = SplitMix(seed: 7)
        var snapshot = MeshSnapshot()
        var inForce = SnapshotInForce()
        var model = MeshModel(), refused: [String] = []
        func publish() throws {
            snapshot.generation += 1
            let bytes = try snapshot.encoded()
            try bytes.withUnsafeBytes { try inForce.accept($0) }
        }
        try publish()
        inForce.insertAll(into: &model, refused: &refused)
        var applied = 0
        for step in 0..<300 {
            let n = generator.next() % 12
            switch generator.next() % 7 {
            case 0, 1:
                let ip: [UInt8] = [10, 0, 0, UInt8(generator.next() % 4)]
                snapshot.resources[XDSConversion.addressType, default: [:]]["c//Pod/ns/w\(n)"] =
                    .init(version: "\(step)", body: Self.workloadAddress(uid: "c//Pod/ns/w\(n)", ip: ip))
            case 2:
                let vip: [UInt8] = [10, 96, 0, UInt8(generator.next() % 3)]
                // One hostname in several namespaces, as a service exported to each.
                let namespace = "ns\(generator.next() % 3)"
                snapshot.resources[XDSConversion.addressType, default: [:]]["\(namespace)/s\(n % 4).svc"] =
                    .init(version: "\(step)", body: Self.serviceAddress(name: "s\(n % 4)", vip: vip, namespace: namespace))
            case 3:
                snapshot.resources[XDSConversion.authorizationType, default: [:]]["ns/p\(n)"] =
                    .init(version: "\(step)", body: Self.policy(name: "p\(n)", namespace: "ns"))
            case 4:
                snapshot.resources[XDSConversion.addressType]?["c//Pod/ns/w\(n)"] = nil
                snapshot.resources[XDSConversion.addressType]?["ns\(n % 3)/s\(n % 4).svc"] = nil
            case 5:
                snapshot.resources[XDSConversion.authorizationType]?["ns/p\(n)"] = nil
            default:
                snapshot.resources[XDSConversion.addressType, default: [:]]["bad\(n)"] = .init(version: "\(step)", body: [0xff, 0x01])
            }
            var changed: [String] = []
            try publish()
            #expect(inForce.addressNames == Set(snapshot.entries(XDSConversion.addressType).keys))
            #expect(inForce.applyPending(to: &model, base: MeshModel(), refused: &changed))
            #expect(inForce.pending.isEmpty)
            applied += 1
            let rebuilt = snapshot.model().model
            #expect(model == rebuilt, "step \(step)")
            if model != rebuilt { break }
        }
        #expect(applied == 300)
        // The base holds w1: a change to w1 is refused in place (the caller rebuilds).
        var base = MeshModel()
        var local = Workload(uid: "c//Pod/ns/w1", namespace: "ns")
        local.addresses = [IPAddress("10.9.9.9")!]  // a valid literal
        base.insert(local)
        snapshot.resources[XDSConversion.addressType, default: [:]]["c//Pod/ns/w1"] =
            .init(version: "last", body: Self.workloadAddress(uid: "c//Pod/ns/w1", ip: [10, 1, 1, 1]))
        try publish()
        let before = model
        #expect(!inForce.applyPending(to: &model, base: base, refused: &refused))
        #expect(model == before)
        // The caller's rebuild: the base with the snapshot on top.
        var rebuilt = base
        inForce.insertAll(into: &rebuilt, refused: &refused)
        var expected = base
        snapshot.insert(into: &expected, refused: &refused)
        #expect(rebuilt == expected && inForce.pending.isEmpty)
    }

    /// The xDS worker's writer, which encodes again only what `DeltaADS` touched, writes the
    /// same bytes as encoding the whole state, push after push of random churn (names beyond
    /// ASCII included, whose byte order is not Swift's string order); and a fresh writer (a
    /// restarted worker) starts from the whole state.
    @Test func theWriterWritesWhatEncodingEverythingWrites() throws {
        var generator = SplitMix(seed: 11)
        var ads = DeltaADS(node: Self.node())
        _ = ads.streamOpened()
        var writer = SnapshotWriter()
        let names = ["c//Pod/ns/a", "c//Pod/ns/é", "c//Pod/ns/z", "c//Pod/ns/e\u{301}", "c//Pod/ns/B"]
        for step in 0..<200 {
            let name = names[generator.next() % names.count]
            let response: Envoy_Service_Discovery_V3_DeltaDiscoveryResponse
            switch generator.next() % 3 {
            case 0: response = try Self.response(XDSConversion.addressType, nonce: "\(step)", resources: [],
                                                 removed: [name])
            case 1: response = try Self.response(XDSConversion.authorizationType, nonce: "\(step)",
                                                 resources: [("ns/p\(step % 3)", "\(step)", Self.policy(name: "p\(step % 3)", namespace: "ns"))])
            default: response = try Self.response(XDSConversion.addressType, nonce: "\(step)",
                                                  resources: [(name, "\(step)", Self.workloadAddress(uid: name, ip: [10, 0, 0, UInt8(step % 200)]))])
            }
            _ = ads.handle(response)
            if generator.next() % 2 == 0 { continue }  // several responses between two publishes
            #expect(writer.encode(ads.state, touched: ads.takeTouched()) == (try ads.state.encoded()), "step \(step)")
        }
        var fresh = SnapshotWriter()
        #expect(fresh.encode(ads.state, touched: [:]) == (try ads.state.encoded()))
        // Most of a type touched at once (istiod restarted with new versions, a namespace gone):
        // encoded afresh, the same bytes.
        let many = (0..<300).map { (name: "c//Pod/many/w\($0)", ip: [10, 1, UInt8($0 / 200), UInt8($0 % 200)] as [UInt8]) }
        _ = ads.handle(try Self.response(XDSConversion.addressType, nonce: "many",
                                         resources: many.map { ($0.name, "1", Self.workloadAddress(uid: $0.name, ip: $0.ip)) }))
        #expect(writer.encode(ads.state, touched: ads.takeTouched()) == (try ads.state.encoded()))
        _ = ads.handle(try Self.response(XDSConversion.addressType, nonce: "many-again",
                                         resources: many.map { ($0.name, "2", Self.workloadAddress(uid: $0.name, ip: $0.ip)) }))
        #expect(writer.encode(ads.state, touched: ads.takeTouched()) == (try ads.state.encoded()))
        // "Any name" (the touched set outgrew its bound): encoded afresh.
        #expect(writer.encode(ads.state, touched: nil) == (try ads.state.encoded()))
        // What it writes, a NetWorker takes.
        var inForce = SnapshotInForce()
        try writer.encode(ads.state, touched: ads.takeTouched()).withUnsafeBytes { try inForce.accept($0) }
        #expect(inForce.addressNames == Set(ads.state.entries(XDSConversion.addressType).keys))
    }

    /// A workload whose name comes back in another form of the same string ("é" composed, then
    /// decomposed): the removal of the old form is applied before the new one is put, so the
    /// workload is there, as a rebuild has it.
    @Test func aNameThatComesBackInAnotherFormIsKept() throws {
        var inForce = SnapshotInForce()
        var model = MeshModel(), refused: [String] = []
        var expected = MeshModel()
        for (generation, name) in [(1, "c//Pod/ns/\u{e9}"), (2, "c//Pod/ns/e\u{301}")] {
            var snapshot = MeshSnapshot()
            snapshot.generation = UInt64(generation)
            snapshot.resources[XDSConversion.addressType] = [name: .init(version: "1", body: Self.workloadAddress(uid: name))]
            try snapshot.encoded().withUnsafeBytes { try inForce.accept($0) }
            #expect(inForce.applyPending(to: &model, base: MeshModel(), refused: &refused))
            expected = snapshot.model().model
        }
        #expect(model.workloads.count == 1 && model == expected && refused.isEmpty)
    }

    /// A small deterministic generator for the churn above.
    struct SplitMix {
        var state: UInt64
        init(seed: UInt64) { state = seed }
        mutating func next() -> Int {
            state &+= 0x9e37_79b9_7f4a_7c15
            var z = state
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            return Int(truncatingIfNeeded: (z ^ (z >> 31)) >> 1)
        }
    }

    @Test func aPushChangesOnlyTheResourcesWhoseBytesChanged() throws {
        var snapshot = MeshSnapshot()
        snapshot.generation = 1
        snapshot.resources[XDSConversion.addressType] = [
            "c//Pod/ns/a": .init(version: "1", body: Self.workloadAddress(uid: "c//Pod/ns/a")),
            "c//Pod/ns/b": .init(version: "1", body: Self.workloadAddress(uid: "c//Pod/ns/b")),
        ]
        snapshot.resources[XDSConversion.authorizationType] = ["ns/p": .init(version: "1", body: Self.policy(name: "p", namespace: "ns"))]
        var inForce = SnapshotInForce()
        try snapshot.encoded().withUnsafeBytes { try inForce.accept($0) }
        #expect(inForce.pending.count == 3 && inForce.generation == 1 && inForce.addressNames == ["c//Pod/ns/a", "c//Pod/ns/b"])
        var model = MeshModel(), refused: [String] = []
        #expect(inForce.applyPending(to: &model, base: MeshModel(), refused: &refused))
        #expect(model.workloads.count == 2 && model.policies.count == 1)

        // b changes address, a stays (a new version alone is a change of bytes), the policy goes.
        snapshot.generation = 2
        snapshot.resources[XDSConversion.addressType]?["c//Pod/ns/b"] = .init(version: "2", body: Self.workloadAddress(uid: "c//Pod/ns/b", ip: [10, 0, 0, 8]))
        snapshot.resources[XDSConversion.authorizationType] = [:]
        try snapshot.encoded().withUnsafeBytes { try inForce.accept($0) }
        #expect(inForce.pending == [
            .remove(typeURL: XDSConversion.authorizationType, name: "ns/p"),
            .put(typeURL: XDSConversion.addressType, name: "c//Pod/ns/b", body: Self.workloadAddress(uid: "c//Pod/ns/b", ip: [10, 0, 0, 8])),
        ])
        #expect(inForce.applyPending(to: &model, base: MeshModel(), refused: &refused) && refused.isEmpty)
        #expect(model.workloads["c//Pod/ns/b"]?.addresses.map(\.description) == ["10.0.0.8"] && model.policies.isEmpty)
        #expect(model == snapshot.model().model && inForce.generation == 2)
    }

    /// What `SnapshotInForce` refuses, leaving the snapshot in force as it was: resources out of
    /// byte order or twice, a changed resource of another type or with a name that is not UTF-8,
    /// a generation that is not a number, bytes that are no protobuf.
    @Test func aSnapshotOutOfOrderOrMalformedIsRefusedAndTheOldOneKept() throws {
        func resource(_ type: String, _ name: [UInt8], _ body: [UInt8] = []) -> [UInt8] {
            Wire.bytesField(2, Wire.stringField(1, "1") + Wire.bytesField(2, Wire.stringField(1, type) + Wire.bytesField(2, body))
                            + Wire.bytesField(3, name))
        }
        let address = XDSConversion.addressType, policy = XDSConversion.authorizationType
        let a = Array("c//Pod/ns/a".utf8), b = Array("c//Pod/ns/b".utf8)
        let good = Wire.stringField(1, "5") + resource(policy, Array("ns/p".utf8)) + resource(address, a) + resource(address, b)
        var inForce = SnapshotInForce()
        try good.withUnsafeBytes { try inForce.accept($0) }
        #expect(inForce.generation == 5 && inForce.pending.count == 3)
        let refusals: [[UInt8]] = [
            Wire.stringField(1, "6") + resource(address, b) + resource(address, a),                       // out of order
            Wire.stringField(1, "6") + resource(address, a) + resource(address, a),                       // twice
            Wire.stringField(1, "6") + resource(address, a) + resource(policy, Array("ns/p".utf8)),        // types out of order
            Wire.stringField(1, "6") + resource("type.googleapis.com/other", a),                            // another type
            Wire.stringField(1, "6") + resource(address, [0x63, 0xff]),                                     // not UTF-8
            Wire.stringField(1, "six") + resource(address, a),                                              // generation
            Wire.stringField(1, "+6") + resource(address, a),                                               // a sign
            resource(address, a),                                                                           // no generation
            [0x12, 0x05, 0x0a],                                                                             // truncated
            // "é" twice, in bytes first decomposed (e + U+0301) then composed: in byte order, but
            // one key as a Swift string.
            Wire.stringField(1, "6") + resource(address, Array("c//Pod/ns/e\u{301}".utf8)) + resource(address, Array("c//Pod/ns/\u{e9}".utf8)),
            // The Kelvin sign is canonically "K": ASCII and not, the same name.
            Wire.stringField(1, "6") + resource(address, Array("c//Pod/ns/K".utf8)) + resource(address, Array("c//Pod/ns/\u{212a}".utf8)),
        ]
        for bad in refusals {
            #expect(throws: XDSConversion.Invalid.self) { try bad.withUnsafeBytes { try inForce.accept($0) } }
            #expect(inForce.generation == 5 && inForce.bytes == good && inForce.hasSnapshot)
            #expect(inForce.pending.count == 3 && inForce.addressNames == ["c//Pod/ns/a", "c//Pod/ns/b"])
        }
        // More resources of a type than the xDS worker may hold: refused (a type's count starts
        // again at the next type).
        var crowded = Wire.stringField(1, "6") + resource(policy, Array("ns/p".utf8))
        for index in 0...DeltaADS.maxResourcesPerType {
            crowded += resource(address, Array("c//Pod/ns/w\(String(1_000_000 + index))".utf8))
        }
        #expect(throws: XDSConversion.Invalid.self) { try crowded.withUnsafeBytes { try inForce.accept($0) } }
        #expect(inForce.generation == 5 && inForce.bytes == good)
        // A resource identical to one in force is taken as it is; the rest are new.
        let next = Wire.stringField(1, "7") + resource(address, a) + resource(address, Array("c//Pod/ns/c".utf8))
        try next.withUnsafeBytes { try inForce.accept($0) }
        #expect(inForce.pending.suffix(3) == [.remove(typeURL: policy, name: "ns/p"), .remove(typeURL: address, name: "c//Pod/ns/b"),
                                              .put(typeURL: address, name: "c//Pod/ns/c", body: [])])
        #expect(inForce.addressNames == ["c//Pod/ns/a", "c//Pod/ns/c"])
    }

    @Test func badSnapshotsAreRefused() throws {
        let garbage: [UInt8] = [0xff, 0xff, 0xff]
        #expect(throws: XDSConversion.Invalid.self) { try garbage.withUnsafeBytes { try MeshSnapshot.decode($0) } }
        var snapshot = MeshSnapshot()
        snapshot.resources["type.googleapis.com/other"] = ["x": .init(version: "1", body: [])]
        let other = try snapshot.encoded()
        #expect(throws: XDSConversion.Invalid.self) { try other.withUnsafeBytes { try MeshSnapshot.decode($0) } }
        // A resource that does not convert is left out with its reason; the rest stands.
        var mixed = MeshSnapshot()
        mixed.resources[XDSConversion.addressType] = ["bad": .init(version: "1", body: [0x0a, 0x02, 0xff]),
                                                      "c//Pod/ns/a": .init(version: "1", body: Self.workloadAddress(uid: "c//Pod/ns/a"))]
        let (model, refused) = mixed.model()
        #expect(model.workloads.count == 1 && refused.count == 1 && refused[0].hasPrefix("bad: "))
        // The wire read directly: a length past the end, a varint cut short, a group, a name
        // that is not UTF-8, a resource field of the wrong wire type, no generation.
        let good = try mixed.encoded()
        let malformed: [[UInt8]] = [
            Array(good.dropLast()), [0x0a, 0x05, 0x31], [0x0a, 0x01, 0x31, 0x12, 0x80], [0x0a, 0x01, 0x31, 0x13],
            [0x0a, 0x01, 0x31] + Wire.bytesField(2, Wire.bytesField(3, [0xc3, 0x28])),
            [0x0a, 0x01, 0x31] + Wire.bytesField(2, Wire.varintField(3, 1)),
            Wire.bytesField(2, Wire.stringField(3, "x")),
        ]
        for bytes in malformed {
            #expect(throws: XDSConversion.Invalid.self, "\(bytes.prefix(16))") { try bytes.withUnsafeBytes { try MeshSnapshot.decode($0) } }
        }
        // More resources than the xDS worker could ever hold: refused before any room is made.
        let flood: [UInt8] = [0x0a, 0x01, 0x31] + Array(repeating: [0x12, 0x00] as [UInt8], count: 2 * DeltaADS.maxResourcesPerType + 1).flatMap { $0 }
        #expect(throws: XDSConversion.Invalid("snapshot of \(2 * DeltaADS.maxResourcesPerType + 1) resources, over \(2 * DeltaADS.maxResourcesPerType)")) {
            try flood.withUnsafeBytes { try MeshSnapshot.decode($0) }
        }
        // A resource must hold what its name says (the xDS worker checks it; the NetWorker too).
        var misnamed = MeshSnapshot()
        misnamed.resources[XDSConversion.addressType] = ["c//Pod/ns/x": .init(version: "1", body: Self.workloadAddress(uid: "c//Pod/ns/a"))]
        let (empty, why) = misnamed.model()
        #expect(empty.workloads.isEmpty && why == ["c//Pod/ns/x: named c//Pod/ns/x but holds c//Pod/ns/a"])
    }

    /// The snapshot is written and read without swift-protobuf's message objects; it must stay
    /// a DeltaDiscoveryResponse byte for byte as swift-protobuf writes it, and read what it writes.
    @Test func theSnapshotIsTheDeltaDiscoveryResponseSwiftProtobufWrites() throws {
        var snapshot = MeshSnapshot()
        snapshot.generation = 300
        snapshot.resources[XDSConversion.addressType] = [
            "c//Pod/ns/b": .init(version: "7", body: Self.workloadAddress(uid: "c//Pod/ns/b")),
            "c//Pod/ns/a": .init(version: "", body: [UInt8](repeating: 0x41, count: 300)),
        ]
        snapshot.resources[XDSConversion.authorizationType] = ["ns/p": .init(version: "é", body: Self.policy(name: "p", namespace: "ns"))]
        var message = Envoy_Service_Discovery_V3_DeltaDiscoveryResponse()
        message.systemVersionInfo = "300"
        for typeURL in [XDSConversion.addressType, XDSConversion.authorizationType].sorted() {
            for (name, entry) in snapshot.entries(typeURL).sorted(by: { $0.key < $1.key }) {
                var resource = Envoy_Service_Discovery_V3_Resource()
                resource.name = name
                resource.version = entry.version
                resource.resource.typeURL = typeURL
                resource.resource.value = Data(entry.body)
                message.resources.append(resource)
            }
        }
        let bytes = try snapshot.encoded()
        let reference: [UInt8] = try message.serializedBytes()
        #expect(bytes == reference, "\(bytes.count) vs \(reference.count): \(bytes.prefix(40)) vs \(reference.prefix(40))")
        #expect(try bytes.withUnsafeBytes { try MeshSnapshot.decode($0) } == snapshot)
        // Fields it does not know are skipped, as protobuf allows.
        let extra = bytes + Wire.varintField(9, 5) + Wire.stringField(5, "nonce")
        #expect(try extra.withUnsafeBytes { try MeshSnapshot.decode($0) } == snapshot)
    }

    @Test func anUnsealedMemfdIsRefused() throws {
        let unsealed = try SealedMemfd.makeUnsealed(name: "unsealed")
        #expect(throws: SealedMemfd.Refused.self) { try SealedMemfd.checkedSize(unsealed.rawValue, maxBytes: 1 << 20) }
        // Not a memfd at all: a pipe.
        var pipeFds: [Int32] = [0, 0]
        _ = pipe(&pipeFds)
        defer { close(pipeFds[0]); close(pipeFds[1]) }
        #expect(throws: SealedMemfd.Refused.self) { try SealedMemfd.checkedSize(pipeFds[0], maxBytes: 1 << 20) }
    }

    @Test func grpcMessagesAreReassembledAndBoundedAndCompressionRefused() throws {
        var framer = GRPCFramer(maxMessageBytes: 8)
        let framed = GRPCFramer.frame([1, 2, 3]) + GRPCFramer.frame([4])
        var messages: [[UInt8]] = []
        for byte in framed { messages += try framer.append([byte]) }
        #expect(messages == [[1, 2, 3], [4]] && framer.pendingBytes == 0)
        #expect(throws: GRPCFramer.Refused.self) { _ = try framer.append([0, 0, 0, 0, 9]) }
        var compressed = GRPCFramer(maxMessageBytes: 8)
        #expect(throws: GRPCFramer.Refused.self) { _ = try compressed.append([1, 0, 0, 0, 1, 7]) }
    }

    /// XDS_ON_DEMAND (§6.3): the Address stream subscribes to `*` and unsubscribes it; a
    /// lookup names one key with no nonce; a response answers the keys it holds (by name, alias
    /// or address) or removes; readiness needs only Authorization; a reopened stream asks again
    /// for what it holds and what is still unanswered.
    @Test func onDemandSubscribesToNothingAndAnswersLookups() throws {
        var ads = DeltaADS(node: Self.node(), onDemand: true)
        let opened = ads.streamOpened()
        #expect(opened[0].resourceNamesSubscribe == ["*"] && opened[0].resourceNamesUnsubscribe == ["*"])
        #expect(opened[1].resourceNamesSubscribe.isEmpty && opened[1].resourceNamesUnsubscribe.isEmpty)
        _ = ads.handle(try Self.response(XDSConversion.authorizationType, nonce: "p1", resources: []))
        #expect(ads.isSynced)

        let asked = ads.demand("/10.0.0.7", now: 0)
        let lookup = try #require(asked)
        #expect(lookup.typeURL == XDSConversion.addressType && lookup.resourceNamesSubscribe == ["/10.0.0.7"])
        #expect(lookup.responseNonce.isEmpty && !lookup.hasNode)
        #expect(ads.demand("/10.0.0.7", now: 10) == nil, "a key already asked for is not asked again")
        #expect(ads.demand("/10.0.0.99", now: 10) != nil)
        #expect(ads.demand("test/uid-3", now: 10) != nil)
        #expect(ads.pendingDemands == ["/10.0.0.7", "/10.0.0.99", "test/uid-3"])

        // istiod names the resource by uid: the key is answered by its address.
        let found = ads.handle(try Self.response(XDSConversion.addressType, nonce: "a1",
                                                 resources: [("uid-1", "1", Self.workloadAddress(uid: "uid-1"))]))
        #expect(found.answered == ["/10.0.0.7"] && found.changed)
        // The lookup key is unsubscribed (istiod would not answer it again), the uid stays.
        #expect(found.followUp?.resourceNamesUnsubscribe == ["/10.0.0.7"])
        let gone = ads.handle(try Self.response(XDSConversion.addressType, nonce: "a2", resources: [], removed: ["/10.0.0.99"]))
        #expect(gone.answered == ["/10.0.0.99"] && gone.followUp?.resourceNamesUnsubscribe == ["/10.0.0.99"])
        #expect(ads.pendingDemands == ["test/uid-3"])
        #expect(ads.demand("test/uid-3", now: 20) == nil)
        #expect(ads.demand("test/uid-3", now: 10 + DeltaADS.demandExpiryMilliseconds) != nil, "an unanswered key is asked again later")

        let reopened = ads.streamOpened()
        #expect(reopened[0].resourceNamesSubscribe == ["*", "test/uid-3", "uid-1"])
        #expect(reopened[0].resourceNamesUnsubscribe == ["*"] && reopened[0].initialResourceVersions == ["uid-1": "1"])
    }

    @Test func withoutOnDemandThereAreNoLookups() {
        var ads = DeltaADS(node: Self.node())
        #expect(ads.demand("/10.0.0.7", now: 0) == nil)
        #expect(ads.requiredTypes == DeltaADS.typeURLs)
    }

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard needle.count <= haystack.count else { return false }
        return (0...(haystack.count - needle.count)).contains { Array(haystack[$0..<($0 + needle.count)]) == needle }
    }
}

