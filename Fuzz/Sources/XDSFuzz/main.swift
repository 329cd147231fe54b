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
/// first; a refusal leaves the first in force; its changes applied in place to the first's model
/// give the model a rebuild from the second alone gives.
func twoSnapshots(_ bytes: [UInt8]) {
    guard bytes.count >= 2 else { return }
    let rest = Array(bytes.dropFirst(2))
    let cut = min(Int(bytes[0]) << 8 | Int(bytes[1]), rest.count)
    let (a, b) = (Array(rest[..<cut]), Array(rest[cut...]))
    var inForce = SnapshotInForce()
    guard (try? a.withUnsafeBytes { try inForce.accept($0) }) != nil else { return }
    var model = MeshModel(), refused: [String] = []
    inForce.insertAll(into: &model, refused: &refused)
    let before = inForce.bytes
    var fresh = SnapshotInForce()
    let alone = (try? b.withUnsafeBytes { try fresh.accept($0) }) != nil
    let after = (try? b.withUnsafeBytes { try inForce.accept($0) }) != nil
    precondition(alone == after, "a snapshot accepted or refused depending on the one before")
    guard after else {
        precondition(inForce.bytes == before, "a refused snapshot changed the one in force")
        return
    }
    precondition(inForce.addressNames == fresh.addressNames && inForce.generation == fresh.generation)
    precondition(inForce.applyPending(to: &model, base: MeshModel(), refused: &refused), "a change refused with no base")
    var rebuilt = MeshModel()
    fresh.insertAll(into: &rebuilt, refused: &refused)
    precondition(model == rebuilt, "changes applied in place differ from a rebuild")
}

runFuzzer { data, size in fuzzOneInput(data, size) }
