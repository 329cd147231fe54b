/// libFuzzer target: a CA's HTTP/2 answer to CreateCertificate. The first two bytes choose the
/// HTTP status and the gRPC status header; the rest is the body (gRPC frame, then protobuf).
/// Nothing may trap; an accepted answer has a root bundle and at most `maxChainElements`.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCAResponse(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard bytes.count >= 2 else { return 0 }
    let status = bytes[0] & 1 == 0 ? 200 : Int(bytes[0])
    let headers = [("content-type", "application/grpc"), ("grpc-status", bytes[1] & 1 == 0 ? "0" : String(bytes[1]))]
    guard let (chain, roots) = try? CAResponse.chain(status: status, headers: headers, body: Array(bytes[2...])) else { return 0 }
    if chain.isEmpty || chain.count >= CAResponse.maxChainElements { fatalError("accepted a chain of \(chain.count)") }
    _ = roots
    return 0
}
