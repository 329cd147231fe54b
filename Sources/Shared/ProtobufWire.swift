/// Protocol buffers' wire format by hand, as much as the hand-written decoders need: a strict
/// reader (varints of at most 10 bytes and 64 bits, lengths checked against the end before any
/// addition, field numbers 1 to 2^29-1, groups refused) and the writer's varints and
/// length-delimited fields. Used by istio-cni's ZDS records (Supervisor) and the mesh snapshot
/// (xDS worker and NetWorkers). Pure (no imports): fuzz targets compile it with those files.
public enum ProtobufWire {
    public struct Malformed: Error, Equatable, CustomStringConvertible {
        public let description: String
        public init(_ description: String) { self.description = description }
    }

    /// Reads the fields of one message in turn, over bytes held elsewhere (an array slice, a
    /// mapped buffer); nested messages are read from the subsequences it returns.
    public struct Reader<Bytes: RandomAccessCollection> where Bytes.Element == UInt8, Bytes.Index == Int {
        @usableFromInline let bytes: Bytes
        @usableFromInline var index: Int

        @inlinable public init(_ bytes: Bytes) {
            self.bytes = bytes
            index = bytes.startIndex
        }

        /// The next field number and wire type, or nil at the end.
        @inlinable public mutating func tag() throws -> (Int, Int)? {
            guard index < bytes.endIndex else { return nil }
            let key = try varint()
            let field = key >> 3
            guard field >= 1, field <= 0x1fff_ffff else { throw Malformed("field number \(field)") }
            return (Int(field), Int(key & 7))
        }

        @inlinable public mutating func varint() throws -> UInt64 {
            var value: UInt64 = 0
            for shift in stride(from: 0, to: 70, by: 7) {
                guard index < bytes.endIndex else { throw Malformed("truncated varint") }
                let byte = bytes[index]
                index += 1
                guard shift < 63 || byte <= 1 else { throw Malformed("varint longer than 64 bits") }
                value |= UInt64(byte & 0x7f) << UInt64(shift)
                if byte & 0x80 == 0 { return value }
            }
            throw Malformed("varint longer than 10 bytes")
        }

        @inlinable public mutating func lengthDelimited(_ field: Int, _ wireType: Int) throws -> Bytes.SubSequence {
            guard wireType == 2 else { throw Malformed("field \(field) has wire type \(wireType), expected 2") }
            let length = try varint()
            guard length <= UInt64(bytes.endIndex - index) else { throw Malformed("field \(field) runs past the record") }
            let slice = bytes[index..<(index + Int(length))]
            index += Int(length)
            return slice
        }

        /// A string field: at most `max` bytes of UTF-8.
        @inlinable public mutating func string(_ field: Int, _ wireType: Int, max: Int = Int.max) throws -> String {
            let slice = try lengthDelimited(field, wireType)
            guard slice.count <= max else { throw Malformed("field \(field) is longer than \(max) bytes") }
            guard let text = String(validating: slice, as: UTF8.self) else { throw Malformed("field \(field) is not UTF-8") }
            return text
        }

        @inlinable public mutating func skip(_ wireType: Int) throws {
            switch wireType {
            case 0: _ = try varint()
            case 1: try advance(8)
            case 2: _ = try lengthDelimited(0, 2)
            case 5: try advance(4)
            default: throw Malformed("wire type \(wireType)")
            }
        }

        @inlinable mutating func advance(_ count: Int) throws {
            guard bytes.endIndex - index >= count else { throw Malformed("truncated fixed-width field") }
            index += count
        }
    }

    public static func varint(_ value: UInt64, into out: inout [UInt8]) {
        var value = value
        while value >= 0x80 {
            out.append(UInt8(value & 0x7f) | 0x80)
            value >>= 7
        }
        out.append(UInt8(value))
    }

    public static func varintLength(_ value: Int) -> Int {
        var value = UInt64(value), count = 1
        while value >= 0x80 {
            value >>= 7
            count += 1
        }
        return count
    }

    /// The bytes a length-delimited field with a one-byte key takes for `length` bytes of content:
    /// none when empty (proto3 leaves empty strings and bytes out; see `bytes`).
    public static func fieldLength(_ length: Int) -> Int { length == 0 ? 0 : 1 + varintLength(length) + length }

    /// A length-delimited field's key and length (fields 1 to 15: a one-byte key).
    public static func header(_ field: Int, length: Int, into out: inout [UInt8]) {
        out.append(UInt8(field << 3 | 2))
        varint(UInt64(length), into: &out)
    }

    /// A non-empty string or bytes field (an empty one is left out, as proto3 writes it).
    public static func bytes(_ field: Int, _ content: [UInt8], into out: inout [UInt8]) {
        guard !content.isEmpty else { return }
        header(field, length: content.count, into: &out)
        out.append(contentsOf: content)
    }
}
