/// The Istio CA's answer to `CreateCertificate`, from the HTTP/2 response as received: status,
/// headers (trailers included), body. Pure and self-contained with `CAProtobuf` (no imports), so
/// the fuzz target `Fuzz/targets/ca_response.swift` compiles the two alone: these bytes come from
/// the network, from a CA that may be impersonated or broken.
enum CAResponse {
    struct Refusal: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    /// The most certificates a chain may hold: a leaf, a few intermediates, the root bundle.
    static let maxChainElements = 16

    /// The leaf and intermediates (PEM, one element each) and the root bundle (the last element,
    /// ISTIO_COMPAT §4.3), or the CA's error. A response without a root is an error.
    static func chain(status: Int, headers: [(String, String)], body: [UInt8]) throws -> (chain: [String], roots: String) {
        guard status == 200 else { throw Refusal("CA answered HTTP \(status)") }
        let grpcStatus = headers.last { $0.0 == "grpc-status" }?.1 ?? "missing"
        guard grpcStatus == "0" else {
            let message = headers.last { $0.0 == "grpc-message" }?.1 ?? ""
            throw Refusal("CA returned gRPC status \(grpcStatus.prefix(16)) \(message.prefix(256))")
        }
        guard body.count >= 5, body[0] == 0 else { throw Refusal("malformed gRPC response body") }
        let length = Int(body[1]) << 24 | Int(body[2]) << 16 | Int(body[3]) << 8 | Int(body[4])
        guard length == body.count - 5 else { throw Refusal("gRPC message length \(length) for \(body.count - 5) bytes") }
        let chain = try CAProtobuf.decodeResponse(Array(body[5...]))
        guard chain.count <= maxChainElements else { throw Refusal("a chain of \(chain.count) elements") }
        guard chain.count >= 2, let roots = chain.last else { throw Refusal("no root certificate present") }
        return (Array(chain.dropLast()), roots)
    }
}
