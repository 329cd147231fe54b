/// libFuzzer target: one record from istio-cni's ZDS socket, the Supervisor's only input from
/// outside its processes (Sources/Supervisor/ZDSMessages.swift). Nothing may trap; what decodes
/// has a uid of the allowed characters within bounds, and an Add has a pod name and namespace.
/// The first byte also drives the ack encoder with a tail of the input as the error text: an ack
/// stays within a record and is well-formed protobuf.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzZDS(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let request = try? ZDS.decodeRequest(bytes) {
        switch request {
        case .add(let uid, let info):
            check(uid)
            if info.name.isEmpty || info.namespace.isEmpty { fatalError("an Add without a name or namespace") }
        case .keep(let uid), .del(let uid):
            check(uid)
        case .snapshotSent:
            break
        }
    }
    if let first = bytes.first, first & 1 == 1 {
        let text = String(decoding: bytes.dropFirst(), as: UTF8.self)
        let ack = ZDS.ack(error: text)
        if ack.count > ZDS.maxMessageBytes { fatalError("an ack of \(ack.count) bytes") }
        var reader = ZDS.Reader(ack[...])
        guard let (field, wireType) = try? reader.tag(), field == 1, wireType == 2,
              let body = try? reader.lengthDelimited(field, wireType), (try? reader.tag()) == nil else {
            fatalError("an ack that is not WorkloadResponse{ack}")
        }
        var inner = ZDS.Reader(body)
        if let (innerField, innerType) = try? inner.tag() {
            guard innerField == 1, let error = try? inner.string(innerField, innerType, max: ZDS.maxMessageBytes) else {
                fatalError("an Ack whose error is not a UTF-8 string")
            }
            _ = error
        }
    }
    return 0
}

private func check(_ uid: String) {
    if uid.isEmpty || uid.utf8.count > ZDS.maxUIDBytes { fatalError("a uid of \(uid.utf8.count) bytes") }
    if !uid.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x61 && $0 <= 0x7a) || $0 == 0x2d || $0 == 0x5f || $0 == 0x2e }) {
        fatalError("a uid with a character outside [A-Za-z0-9-_.]")
    }
}
