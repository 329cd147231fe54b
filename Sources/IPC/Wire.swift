/// Hand-written big-endian encoding for IPC payloads (STYLE.md §3: never memcpy structs onto the
/// wire). `WireReader` consumes exactly what a message declares and `finish()` refuses leftovers,
/// the way OpenSMTPD's `m_get_*` and `m_end` do.
public struct WireWriter {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public mutating func u8(_ value: UInt8) { bytes.append(value) }
    public mutating func bool(_ value: Bool) { bytes.append(value ? 1 : 0) }
    public mutating func u16(_ value: UInt16) {
        bytes.append(UInt8(value >> 8)); bytes.append(UInt8(value & 0xff))
    }
    public mutating func u32(_ value: UInt32) {
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8((value >> UInt32(shift)) & 0xff)) }
    }
    public mutating func i32(_ value: Int32) { u32(UInt32(bitPattern: value)) }
    public mutating func u64(_ value: UInt64) {
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8((value >> UInt64(shift)) & 0xff)) }
    }
    public mutating func i64(_ value: Int64) { u64(UInt64(bitPattern: value)) }
    /// Length-prefixed (u32) bytes.
    public mutating func data(_ value: [UInt8]) {
        u32(UInt32(value.count)); bytes.append(contentsOf: value)
    }
    /// Length-prefixed UTF-8.
    public mutating func string(_ value: String) { data(Array(value.utf8)) }
}

/// Reads a payload written by `WireWriter`. Every read checks the remaining length first; nothing
/// traps on short or hostile input.
public struct WireReader {
    private let bytes: [UInt8]
    private var offset = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var remaining: Int { bytes.count - offset }

    private mutating func take(_ count: Int, _ what: String) throws -> ArraySlice<UInt8> {
        guard count >= 0, count <= remaining else {
            throw IPCError.truncated(what: what, needed: count, available: remaining)
        }
        defer { offset += count }
        return bytes[offset..<offset + count]
    }

    public mutating func u8(_ what: String) throws -> UInt8 { try take(1, what).first ?? 0 }

    public mutating func bool(_ what: String) throws -> Bool {
        switch try u8(what) {
        case 0: return false
        case 1: return true
        case let other: throw IPCError.malformed("\(what): \(other) is not a boolean")
        }
    }

    public mutating func u16(_ what: String) throws -> UInt16 {
        try take(2, what).reduce(0) { $0 << 8 | UInt16($1) }
    }

    public mutating func u32(_ what: String) throws -> UInt32 {
        try take(4, what).reduce(0) { $0 << 8 | UInt32($1) }
    }

    public mutating func i32(_ what: String) throws -> Int32 { Int32(bitPattern: try u32(what)) }

    public mutating func u64(_ what: String) throws -> UInt64 {
        try take(8, what).reduce(0) { $0 << 8 | UInt64($1) }
    }

    public mutating func i64(_ what: String) throws -> Int64 { Int64(bitPattern: try u64(what)) }

    public mutating func data(_ what: String, max: Int = IPCFrame.maxPayload) throws -> [UInt8] {
        let count = Int(try u32(what))
        guard count <= max else { throw IPCError.malformed("\(what): length \(count) over \(max)") }
        return Array(try take(count, what))
    }

    /// A length-prefixed string; invalid UTF-8 is refused, not repaired.
    public mutating func string(_ what: String, max: Int = 4096) throws -> String {
        let raw = try data(what, max: max)
        guard let text = String(validating: raw, as: UTF8.self) else {
            throw IPCError.malformed("\(what): not UTF-8")
        }
        return text
    }

    /// A u16 element count, checked against `max` before anything is allocated.
    public mutating func count(_ what: String, max: Int) throws -> Int {
        let value = Int(try u16(what))
        guard value <= max else { throw IPCError.malformed("\(what): \(value) elements over \(max)") }
        return value
    }

    /// Refuses trailing bytes: a payload is exactly what its type declares.
    public func finish(_ what: String) throws {
        if remaining != 0 { throw IPCError.trailingBytes(type: what, count: remaining) }
    }
}
