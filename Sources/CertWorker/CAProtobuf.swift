/// The Istio CA's two messages on the protobuf wire (proto/istio/v1/auth/ca.proto), by hand.
/// The decoder is strict about what it reads and skips unknown fields, as protobuf requires.
enum CAProtobuf {
    struct DecodeError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = "IstioCertificateResponse: \(description)" }
    }

    /// IstioCertificateRequest { csr = 1; validity_duration = 3; metadata = 4 (Struct) }.
    static func encodeRequest(csrPEM: String, validitySeconds: Int64, impersonatedIdentity: String?) -> [UInt8] {
        var out: [UInt8] = []
        appendLengthDelimited(&out, field: 1, Array(csrPEM.utf8))
        appendVarint(&out, UInt64(3 << 3 | 0))  // validity_duration = 3, varint
        appendVarint(&out, UInt64(bitPattern: validitySeconds))
        if let impersonatedIdentity {
            // Struct { map<string, Value> fields = 1 }; entry { key = 1; value = 2 };
            // Value { string_value = 3 }.
            var value: [UInt8] = []
            appendLengthDelimited(&value, field: 3, Array(impersonatedIdentity.utf8))
            var entry: [UInt8] = []
            appendLengthDelimited(&entry, field: 1, Array("ImpersonatedIdentity".utf8))
            appendLengthDelimited(&entry, field: 2, value)
            var structure: [UInt8] = []
            appendLengthDelimited(&structure, field: 1, entry)
            appendLengthDelimited(&out, field: 4, structure)
        }
        return out
    }

    /// IstioCertificateResponse { repeated string cert_chain = 1 }.
    static func decodeResponse(_ bytes: [UInt8]) throws -> [String] {
        var chain: [String] = []
        var offset = 0
        while offset < bytes.count {
            let key = try readVarint(bytes, &offset)
            let (field, wireType) = (key >> 3, key & 7)
            switch wireType {
            case 0: _ = try readVarint(bytes, &offset)
            case 1: offset += 8  // checked against the end below
            case 5: offset += 4
            case 2:
                guard let length = Int(exactly: try readVarint(bytes, &offset)), length <= bytes.count - offset else {
                    throw DecodeError("truncated field \(field)")
                }
                if field == 1 {
                    guard let text = String(validating: bytes[offset..<offset + length], as: UTF8.self) else {
                        throw DecodeError("cert_chain is not UTF-8")
                    }
                    chain.append(text)
                }
                offset += length
            default:
                throw DecodeError("wire type \(wireType) of field \(field)")
            }
            guard offset <= bytes.count else { throw DecodeError("truncated") }
        }
        return chain
    }

    private static func appendVarint(_ out: inout [UInt8], _ value: UInt64) {
        var value = value
        while value >= 0x80 {
            out.append(UInt8(value & 0x7f) | 0x80)
            value >>= 7
        }
        out.append(UInt8(value))
    }

    private static func appendLengthDelimited(_ out: inout [UInt8], field: UInt64, _ bytes: [UInt8]) {
        appendVarint(&out, field << 3 | 2)
        appendVarint(&out, UInt64(bytes.count))
        out += bytes
    }

    private static func readVarint(_ bytes: [UInt8], _ offset: inout Int) throws -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while offset < bytes.count {
            let byte = bytes[offset]
            offset += 1
            result |= UInt64(byte & 0x7f) << shift
            if byte & 0x80 == 0 { return result }
            shift += 7
            if shift > 63 { throw DecodeError("varint too long") }
        }
        throw DecodeError("truncated varint")
    }
}
