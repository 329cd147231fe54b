import Shared

/// One IPC frame: `u32 payload length, u16 type, u32 request id, u8 fd count`, big-endian, then the
/// payload. On SOCK_SEQPACKET one frame is one packet, so the length is checked against the packet,
/// not used to find the next frame.
public struct IPCFrame {
    public static let headerSize = 11
    /// The largest frame either side accepts. Checked before anything is allocated from a length.
    public static let maxFrame = 64 * 1024
    public static let maxPayload = maxFrame - headerSize
    /// The most fds one frame may carry.
    public static let maxFds = 4

    public var type: UInt16
    public var requestId: UInt32
    public var payload: [UInt8]
    /// Received fds, already owned; closed with the frame unless a message takes them.
    public var fds: [OwnedFD]

    public init(type: UInt16, requestId: UInt32, payload: [UInt8], fds: [OwnedFD] = []) {
        self.type = type
        self.requestId = requestId
        self.payload = payload
        self.fds = fds
    }

    /// The header and payload as sent.
    public func encodedBytes() throws -> [UInt8] {
        guard payload.count <= Self.maxPayload else {
            throw IPCError.oversize(length: payload.count + Self.headerSize, max: Self.maxFrame)
        }
        var writer = WireWriter()
        writer.u32(UInt32(payload.count))
        writer.u16(type)
        writer.u32(requestId)
        writer.u8(UInt8(fds.count))
        return writer.bytes + payload
    }

    /// Parses one received packet. `fds` are the descriptors that came with it, already owned, so
    /// they are closed on every refusal below.
    public static func decode(packet: [UInt8], fds: [OwnedFD]) throws -> IPCFrame {
        guard packet.count <= maxFrame else { throw IPCError.oversize(length: packet.count, max: maxFrame) }
        var reader = WireReader(packet)
        let length = Int(try reader.u32("frame header"))
        let type = try reader.u16("frame header")
        let requestId = try reader.u32("frame header")
        let fdCount = Int(try reader.u8("frame header"))
        guard length == reader.remaining else {
            throw IPCError.lengthMismatch(declared: length, actual: reader.remaining)
        }
        guard fdCount == fds.count else { throw IPCError.fdCountMismatch(declared: fdCount, received: fds.count) }
        return IPCFrame(type: type, requestId: requestId, payload: Array(packet[headerSize...]), fds: fds)
    }
}
