/// Why a frame or message was refused. Every case is a peer's fault or a closed channel, never a
/// reason to trap: the receiver decides what to do with the peer (STYLE.md §3, two trust levels).
public enum IPCError: Error, Equatable, CustomStringConvertible {
    case truncated(what: String, needed: Int, available: Int)
    case oversize(length: Int, max: Int)
    case lengthMismatch(declared: Int, actual: Int)
    case trailingBytes(type: String, count: Int)
    case unknownType(UInt16)
    case wrongFdCount(type: String, expected: Int, actual: Int)
    case fdCountMismatch(declared: Int, received: Int)
    case controlTruncated
    case malformed(String)
    case closed
    /// A non-blocking send found the peer's queue full: it is not reading.
    case wouldBlock
    case system(String)

    public var description: String {
        switch self {
        case .truncated(let what, let needed, let available): return "truncated \(what): needs \(needed) bytes, \(available) left"
        case .oversize(let length, let max): return "frame of \(length) bytes exceeds the maximum of \(max)"
        case .lengthMismatch(let declared, let actual): return "header declares \(declared) payload bytes, frame has \(actual)"
        case .trailingBytes(let type, let count): return "\(count) trailing bytes after \(type)"
        case .unknownType(let type): return "unknown message type 0x\(String(type, radix: 16))"
        case .wrongFdCount(let type, let expected, let actual): return "\(type) carries \(expected) fds, got \(actual)"
        case .fdCountMismatch(let declared, let received): return "header declares \(declared) fds, \(received) received"
        case .controlTruncated: return "control data truncated (MSG_CTRUNC)"
        case .malformed(let reason): return "malformed: \(reason)"
        case .closed: return "channel closed"
        case .wouldBlock: return "peer is not reading (queue full)"
        case .system(let reason): return reason
        }
    }
}
