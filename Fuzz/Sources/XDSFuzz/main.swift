import Foundation
import FuzzDriver
import Mesh
import SwiftProtobuf
import XDS

/// libFuzzer entry point for what istiod sends (ISTIO_COMPAT §7): the first byte picks the
/// decoder (an Address resource, an Authorization resource, a whole DeltaDiscoveryResponse whose
/// resources are then converted by type URL, the same response through the xDS worker's
/// `DeltaADS`, a mesh snapshot as the xDS worker reads one back, or two snapshots, the second
/// compared with the first as a NetWorker does); the rest is the message. Nothing may
/// trap: bad input is a refusal (XDSConversion.Invalid) or a protobuf decoding error. A converted
/// workload or service must also go into a mesh model without trouble; the worker's reply always
/// carries the response's nonce, and what it accepted survives the snapshot round trip.
func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard size > 0, let data else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    var model = MeshModel()
    func apply(_ address: XDSConversion.Address) {
        switch address {
        case .workload(let workload): model.insert(workload)
        case .service(let service): model.insert(service)
        }
    }
    switch data[0] % 6 {
    case 5:
        twoSnapshots(bytes)
        return 0
    case 3:
        guard let response = try? XDSConversion.response(bytes) else { return 0 }
        var ads = DeltaADS(node: Envoy_Service_Discovery_V3_Node())
        _ = ads.streamOpened()
        let outcome = ads.handle(response)
        precondition(outcome.reply.responseNonce == response.nonce && outcome.reply.typeURL == response.typeURL)
        precondition(outcome.refused.isEmpty == !outcome.reply.hasErrorDetail)
        guard let encoded = try? ads.state.encoded() else { fatalError("an accepted state that does not encode") }
        let decoded = encoded.withUnsafeBytes { try? MeshSnapshot.decode($0) }
        precondition(decoded == ads.state, "the accepted state does not survive the snapshot")
        precondition(decoded?.model().refused.isEmpty == true, "an accepted resource the NetWorker refuses")
        // The xDS worker's writer, after a second response that removes the first half of the
        // names and gives the rest new versions, writes what encoding the whole state writes.
        var writer = SnapshotWriter()
        precondition(writer.encode(ads.state, touched: ads.takeTouched()) == encoded, "the writer's first snapshot differs")
        var second = response
        let half = response.resources.count / 2
        second.nonce += "-2"
        second.removedResources = response.resources.prefix(half).map(\.name)
        second.resources = response.resources.dropFirst(half).map { resource in
            var changed = resource
            changed.version += "'"
            return changed
        }
        _ = ads.handle(second)
        guard let again = try? ads.state.encoded() else { fatalError("an accepted state that does not encode") }
        precondition(writer.encode(ads.state, touched: ads.takeTouched()) == again, "the writer's update differs from a full encode")
        return 0
    case 4:
        if let snapshot = bytes.withUnsafeBytes({ try? MeshSnapshot.decode($0) }) {
            _ = snapshot.model()
            // What was read writes back to bytes that read the same.
            guard let encoded = try? snapshot.encoded() else { fatalError("a decoded snapshot that does not encode") }
            precondition(encoded.withUnsafeBytes { try? MeshSnapshot.decode($0) } == snapshot, "a snapshot that does not round-trip")
        }
        return 0
    case 0:
        if let address = try? XDSConversion.address(bytes) { apply(address) }
    case 1:
        if let policy = try? XDSConversion.authorization(bytes) { model.insert(policy) }
    default:
        guard let response = try? XDSConversion.response(bytes) else { return 0 }
        for resource in response.resources where resource.hasResource {
            let value = Array(resource.resource.value)
            switch resource.resource.typeURL {
            case XDSConversion.addressType: if let address = try? XDSConversion.address(value) { apply(address) }
            case XDSConversion.authorizationType: if let policy = try? XDSConversion.authorization(value) { model.insert(policy) }
            default: break
            }
        }
    }
    return 0
}

/// Two snapshots (the first two bytes say where the second begins), the second accepted after the
/// first as a NetWorker does (`SnapshotInForce`). Whether it is accepted does not depend on the
/// first; a refusal leaves the first in force, unchanged; its changes applied in place to the
/// first's model give the model a rebuild from the second alone gives. Some of the first's
/// resources also stand for a local config (the base), so that changes to them are refused in
/// place and the model is left as it was.
func twoSnapshots(_ bytes: [UInt8]) {
    guard bytes.count >= 2 else { return }
    let rest = Array(bytes.dropFirst(2))
    let cut = min(Int(bytes[0]) << 8 | Int(bytes[1]), rest.count)
    let (a, b) = (Array(rest[..<cut]), Array(rest[cut...]))
    var inForce = SnapshotInForce()
    guard (try? a.withUnsafeBytes { try inForce.accept($0) }) != nil else { return }
    // The base: the first snapshot's resources whose name starts with an odd byte.
    var base = MeshModel()
    if var local = a.withUnsafeBytes({ try? MeshSnapshot.decode($0) }) {
        for (typeURL, entries) in local.resources {
            local.resources[typeURL] = entries.filter { $0.key.utf8.first.map { $0 & 1 == 1 } ?? false }
        }
        base = local.model().model
    }
    var model = base, refused: [String] = []
    inForce.insertAll(into: &model, refused: &refused)
    let before = inForce.bytes, beforeNames = inForce.addressNames, beforeGeneration = inForce.generation
    var fresh = SnapshotInForce()
    let alone = (try? b.withUnsafeBytes { try fresh.accept($0) }) != nil
    let after = (try? b.withUnsafeBytes { try inForce.accept($0) }) != nil
    precondition(alone == after, "a snapshot accepted or refused depending on the one before")
    guard after else {
        precondition(inForce.bytes == before && inForce.addressNames == beforeNames && inForce.generation == beforeGeneration
                     && inForce.pending.isEmpty, "a refused snapshot changed the one in force")
        return
    }
    precondition(inForce.addressNames == fresh.addressNames && inForce.generation == fresh.generation)
    let held = model
    var rebuilt = base
    fresh.insertAll(into: &rebuilt, refused: &refused)
    if inForce.applyPending(to: &model, base: base, refused: &refused) {
        precondition(model == rebuilt, "changes applied in place differ from a rebuild")
    } else {
        precondition(model == held, "a change refused in place changed the model")
        var again = base
        inForce.insertAll(into: &again, refused: &refused)
        precondition(again == rebuilt, "the rebuild after a refused change differs")
    }
}

runFuzzer { data, size in fuzzOneInput(data, size) }
