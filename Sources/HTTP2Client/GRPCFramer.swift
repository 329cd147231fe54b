/// gRPC's length-prefixed messages (1 byte compressed flag, 4 bytes big-endian length) over an
/// HTTP/2 stream's DATA, which may split or join them anywhere. Compression is never negotiated,
/// so a compressed message is refused, as is one longer than the bound.
public struct GRPCFramer {
    public struct Refused: Error, CustomStringConvertible {
        public let description: String
    }

    public let maxMessageBytes: Int
    private var buffer: [UInt8] = []
    private var offset = 0

    public init(maxMessageBytes: Int) { self.maxMessageBytes = maxMessageBytes }

    /// One message framed for sending.
    public static func frame(_ message: [UInt8]) -> [UInt8] {
        [0] + withUnsafeBytes(of: UInt32(truncatingIfNeeded: message.count).bigEndian, Array.init) + message
    }

    /// Bytes received that do not yet make a whole message.
    public var pendingBytes: Int { buffer.count - offset }

    /// Adds received bytes and returns every message they complete.
    public mutating func append(_ bytes: [UInt8]) throws -> [[UInt8]] {
        buffer += bytes
        var messages: [[UInt8]] = []
        while buffer.count - offset >= 5 {
            guard buffer[offset] == 0 else { throw Refused(description: "a compressed gRPC message (flag \(buffer[offset])), never negotiated") }
            let length = buffer[(offset + 1)..<(offset + 5)].reduce(0) { $0 << 8 | Int($1) }
            guard length <= maxMessageBytes else { throw Refused(description: "a gRPC message of \(length) bytes, at most \(maxMessageBytes)") }
            guard buffer.count - offset - 5 >= length else { break }
            messages.append(Array(buffer[(offset + 5)..<(offset + 5 + length)]))
            offset += 5 + length
        }
        if offset == buffer.count {
            buffer.removeAll(keepingCapacity: buffer.count <= 1 << 20)
            offset = 0
        } else if offset > 1 << 20 {
            buffer.removeFirst(offset)
            offset = 0
        }
        return messages
    }
}
