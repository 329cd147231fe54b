#if canImport(Shared)
import Shared
#endif

/// The istio-cni ⇄ ztunnel protocol (ZDS, ISTIO_COMPAT §7.4, §8): the few protobuf messages the
/// Supervisor reads and writes, decoded by hand. This is the Supervisor's only input from outside
/// its own processes, so the decoder is small, strict and bounded: one SEQPACKET record of at
/// most 1 KiB, known fields with the right wire types, unknown fields skipped, every string
/// checked. Pure (the wire reader is `ProtobufWire`, Shared's, also pure): the fuzz target
/// compiles the two alone.
enum ZDS {
    /// Both sides read a record into a 1 KiB buffer (§8); a longer one is an error.
    static let maxMessageBytes = 1024
    static let maxUIDBytes = 128
    static let maxNameBytes = 253

    struct WorkloadInfo: Equatable {
        var name = ""
        var namespace = ""
        var serviceAccount = ""
    }

    /// A `WorkloadRequest` (its oneof `payload`).
    enum Request: Equatable {
        case add(uid: String, info: WorkloadInfo)
        case keep(uid: String)
        case del(uid: String)
        case snapshotSent
    }

    typealias Malformed = ProtobufWire.Malformed
    typealias Reader = ProtobufWire.Reader<ArraySlice<UInt8>>

    /// `ZdsHello{version: V1}`, sent bare right after connecting.
    static let hello: [UInt8] = [0x08, 0x01]

    /// `WorkloadResponse{ack: Ack{error}}`; an empty error is success.
    static func ack(error: String = "") -> [UInt8] {
        var errorBytes = Array(error.utf8.prefix(maxMessageBytes - 16))
        // Never cut a UTF-8 sequence in two: drop continuation bytes left at the end.
        while let last = errorBytes.last, last & 0xc0 == 0x80 { errorBytes.removeLast() }
        if let last = errorBytes.last, last >= 0xc0 { errorBytes.removeLast() }
        var ack: [UInt8] = []
        if !errorBytes.isEmpty { ack = [0x0a] + varint(UInt64(errorBytes.count)) + errorBytes }
        return [0x0a] + varint(UInt64(ack.count)) + ack
    }

    static func varint(_ value: UInt64) -> [UInt8] {
        var bytes: [UInt8] = []
        ProtobufWire.varint(value, into: &bytes)
        return bytes
    }

    /// Decodes one record. Exactly one payload: none, two, or a wrong wire type is malformed.
    static func decodeRequest(_ bytes: [UInt8]) throws -> Request {
        guard bytes.count <= maxMessageBytes else { throw Malformed("a record of \(bytes.count) bytes (at most \(maxMessageBytes))") }
        var reader = Reader(bytes[...])
        var request: Request?
        while let (field, wireType) = try reader.tag() {
            let payload: Request?
            switch field {
            case 1: payload = try decodeAdd(try reader.lengthDelimited(field, wireType))
            case 2: payload = .del(uid: try uid(in: try reader.lengthDelimited(field, wireType), field: 2, what: "DelWorkload"))
            case 3:
                _ = try reader.lengthDelimited(field, wireType)  // SnapshotSent has no fields; any are skipped
                payload = .snapshotSent
            case 5: payload = .keep(uid: try uid(in: try reader.lengthDelimited(field, wireType), field: 1, what: "KeepWorkload"))
            default:
                try reader.skip(wireType)
                payload = nil
            }
            if let payload {
                guard request == nil else { throw Malformed("more than one payload in a WorkloadRequest") }
                request = payload
            }
        }
        guard let request else { throw Malformed("a WorkloadRequest without a payload") }
        return request
    }

    private static func decodeAdd(_ bytes: ArraySlice<UInt8>) throws -> Request {
        var reader = Reader(bytes)
        var uid: String?
        var info: WorkloadInfo?
        while let (field, wireType) = try reader.tag() {
            switch field {
            case 1: uid = try checkedUID(try reader.string(field, wireType, max: maxUIDBytes), what: "AddWorkload")
            case 2: info = try decodeInfo(try reader.lengthDelimited(field, wireType))
            default: try reader.skip(wireType)
            }
        }
        guard let uid else { throw Malformed("AddWorkload without a uid") }
        guard let info else { throw Malformed("AddWorkload \(uid) without workload_info") }
        return .add(uid: uid, info: info)
    }

    private static func decodeInfo(_ bytes: ArraySlice<UInt8>) throws -> WorkloadInfo {
        var reader = Reader(bytes)
        var info = WorkloadInfo()
        while let (field, wireType) = try reader.tag() {
            switch field {
            case 1: info.name = try checkedName(try reader.string(field, wireType, max: maxNameBytes), what: "name")
            case 2: info.namespace = try checkedName(try reader.string(field, wireType, max: maxNameBytes), what: "namespace")
            case 3: info.serviceAccount = try checkedName(try reader.string(field, wireType, max: maxNameBytes), what: "service_account")
            default: try reader.skip(wireType)
            }
        }
        guard !info.name.isEmpty, !info.namespace.isEmpty else { throw Malformed("workload_info without a name or namespace") }
        return info
    }

    private static func uid(in bytes: ArraySlice<UInt8>, field uidField: Int, what: String) throws -> String {
        var reader = Reader(bytes)
        var uid: String?
        while let (field, wireType) = try reader.tag() {
            if field == uidField {
                uid = try checkedUID(try reader.string(field, wireType, max: maxUIDBytes), what: what)
            } else {
                try reader.skip(wireType)
            }
        }
        guard let uid else { throw Malformed("\(what) without a uid") }
        return uid
    }

    /// A Kubernetes pod UID: letters, digits, `-` (we also take `_` and `.`), not empty.
    private static func checkedUID(_ text: String, what: String) throws -> String {
        guard !text.isEmpty, text.utf8.allSatisfy({ isAlphanumeric($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") }) else {
            throw Malformed("\(what) uid is empty or not letters, digits and -_.")
        }
        return text
    }

    /// A Kubernetes object name: letters, digits, `-` and `.` (DNS subdomain), or empty.
    private static func checkedName(_ text: String, what: String) throws -> String {
        guard text.utf8.allSatisfy({ isAlphanumeric($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") }) else {
            throw Malformed("workload_info \(what) is not a Kubernetes name")
        }
        return text
    }

    private static func isAlphanumeric(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
            || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
    }
}
