import HTTP2Client
import Testing
@testable import CertWorker

/// The Istio CA messages on the protobuf wire and the gRPC response checks.
@Suite struct IstioCAMessageTests {
    @Test func requestFieldNumbersMatchTheIstioAPI() {
        let bytes = CAProtobuf.encodeRequest(csrPEM: "C", validitySeconds: 300, impersonatedIdentity: "spiffe://td/ns/a/sa/b")
        // csr = 1 (length-delimited "C"), validity_duration = 3 (varint 300), metadata = 4 (Struct).
        #expect(Array(bytes.prefix(6)) == [0x0a, 0x01, 0x43, 0x18, 0xac, 0x02])
        #expect(bytes[6] == 0x22)
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.contains("ImpersonatedIdentity") && text.contains("spiffe://td/ns/a/sa/b"))
        // ztunnel's own identity goes without metadata.
        #expect(CAProtobuf.encodeRequest(csrPEM: "C", validitySeconds: 1, impersonatedIdentity: nil) == [0x0a, 0x01, 0x43, 0x18, 0x01])
    }

    @Test func responseDecodingIsStrictAndSkipsUnknownFields() throws {
        let chain: [UInt8] = [0x0a, 0x02, 0x41, 0x42, 0x10, 0x07, 0x0a, 0x01, 0x43]  // "AB", unknown varint 2, "C"
        #expect(try CAProtobuf.decodeResponse(chain) == ["AB", "C"])
        #expect(throws: CAProtobuf.DecodeError.self) { try CAProtobuf.decodeResponse([0x0a, 0x05, 0x41]) }
        #expect(throws: CAProtobuf.DecodeError.self) { try CAProtobuf.decodeResponse([0x0b]) }  // wire type 3
        #expect(throws: CAProtobuf.DecodeError.self) { try CAProtobuf.decodeResponse([0x0a, 0x80]) }
        // Found in review: a length of 2^63 or more must be an error, not a trap.
        let huge: [UInt8] = [0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x41]
        #expect(throws: CAProtobuf.DecodeError.self) { try CAProtobuf.decodeResponse(huge) }
        #expect(throws: CAProtobuf.DecodeError.self) { try CAProtobuf.decodeResponse([0x09, 0x01]) }  // fixed64 past the end
    }

    func response(status: Int = 200, grpc: String = "0", message: [UInt8]) -> HTTP2Call.Response {
        var response = HTTP2Call.Response()
        response.status = status
        response.headers = [("content-type", "application/grpc"), ("grpc-status", grpc), ("grpc-message", "denied")]
        response.body = [0] + withUnsafeBytes(of: UInt32(message.count).bigEndian, Array.init) + message
        return response
    }

    @Test func grpcResponses() throws {
        let two: [UInt8] = [0x0a, 0x01, 0x4c, 0x0a, 0x01, 0x52]  // ["L", "R"]
        let issued = try IstioCAClient.result(of: response(message: two))
        #expect(issued.chainPEM == ["L"] && issued.rootsPEM == "R")
        // One element: no root, which ztunnel treats as a failed CSR.
        #expect(throws: IstioCAClient.CAError.self) { try IstioCAClient.result(of: response(message: [0x0a, 0x01, 0x4c])) }
        #expect(throws: IstioCAClient.CAError.self) { try IstioCAClient.result(of: response(grpc: "16", message: two)) }
        #expect(throws: IstioCAClient.CAError.self) { try IstioCAClient.result(of: response(status: 503, message: two)) }
        var truncated = response(message: two)
        truncated.body.removeLast()
        #expect(throws: IstioCAClient.CAError.self) { try IstioCAClient.result(of: truncated) }
    }
}
