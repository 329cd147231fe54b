import Foundation
import FuzzDriver
import Mesh
import SwiftProtobuf
import XDS

/// libFuzzer entry point for what istiod sends (ISTIO_COMPAT §7): the first byte picks the
/// decoder (an Address resource, an Authorization resource, a whole DeltaDiscoveryResponse whose
/// resources are then converted by type URL, the same response through the xDS worker's
/// `DeltaADS`, or a mesh snapshot as a NetWorker maps it); the rest is the message. Nothing may
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
    switch data[0] % 5 {
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

runFuzzer { data, size in fuzzOneInput(data, size) }
