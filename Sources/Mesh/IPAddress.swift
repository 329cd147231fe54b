/// An IPv4 or IPv6 address as its network-order bytes (4 or 16), parsed strictly from text and
/// printed canonically (dotted quad; RFC 5952 for IPv6). Pure, no imports: the mesh model, the
/// local config and (later) xDS use it, and its parser is fuzzed with theirs.
public struct IPAddress: Hashable, Comparable, CustomStringConvertible, Sendable {
    public let bytes: [UInt8]

    public var isIPv4: Bool { bytes.count == 4 }

    /// The IPv4 address of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), else the address itself:
    /// a dual-stack socket reports IPv4 peers that way, and they are the same host.
    public var unmapped: IPAddress {
        guard bytes.count == 16, bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xff, bytes[11] == 0xff,
              let v4 = IPAddress(bytes: Array(bytes[12...])) else { return self }
        return v4
    }

    /// From raw bytes (xDS `bytes` fields): nil unless 4 or 16 long (ISTIO_COMPAT §6.3).
    public init?(bytes: [UInt8]) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    public init?(_ text: String) {
        if let v4 = Self.parseIPv4(Substring(text)) {
            bytes = v4
        } else if let mapped = Self.parseIPv4Mapped(text) {
            bytes = mapped
        } else if let v6 = Self.parseIPv6(text) {
            bytes = v6
        } else {
            return nil
        }
    }

    public static func < (a: IPAddress, b: IPAddress) -> Bool {
        a.bytes.count != b.bytes.count ? a.bytes.count < b.bytes.count : a.bytes.lexicographicallyPrecedes(b.bytes)
    }

    /// Four decimal octets, no leading zeros, each at most 255.
    /// One pass over the UTF-8 bytes, no intermediate strings: addresses are parsed for every
    /// connection the proxy routes.
    public static func parseIPv4(_ text: Substring) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(4)
        var value = 0
        var digits = 0
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                if digits > 0 && value == 0 { return nil }  // a leading zero ("01", "00")
                value = value * 10 + Int(byte - UInt8(ascii: "0"))
                digits += 1
                if value > 255 { return nil }
            case UInt8(ascii: "."):
                guard digits > 0, out.count < 3 else { return nil }
                out.append(UInt8(value))
                value = 0
                digits = 0
            default:
                return nil
            }
        }
        guard digits > 0, out.count == 3 else { return nil }
        out.append(UInt8(value))
        return out
    }

    /// `::ffff:a.b.c.d`, as a dual-stack socket writes an IPv4 peer, without the general
    /// parser's splitting (it ran for every connection); what it accepts, `parseIPv6` accepts
    /// alike (`IPAddressTests`).
    public static func parseIPv4Mapped(_ text: String) -> [UInt8]? {
        let prefix = "::ffff:".utf8
        guard text.utf8.starts(with: prefix),
              let v4 = parseIPv4(Substring(text.utf8.dropFirst(prefix.count))) else { return nil }
        return [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] + v4
    }

    /// Eight groups of up to four hex digits, one `::` for a run of zero groups, an optional
    /// trailing dotted IPv4; no zone, no brackets.
    public static func parseIPv6(_ text: String) -> [UInt8]? {
        let utf8 = Array(text.utf8)
        guard utf8.contains(58), utf8.count <= 45 else { return nil }
        let marks = utf8.indices.dropLast().filter { utf8[$0] == 58 && utf8[$0 + 1] == 58 }
        guard marks.count <= 1 else { return nil }  // ":::" or two "::"
        let halves = marks.first.map { [String(decoding: utf8[..<$0], as: UTF8.self), String(decoding: utf8[($0 + 2)...], as: UTF8.self)] }
            ?? [text]
        func groups(_ part: String, allowIPv4Tail: Bool) -> [UInt16]? {
            if part.isEmpty { return [] }
            var result: [UInt16] = []
            let pieces = part.split(separator: ":", omittingEmptySubsequences: false)
            for (index, piece) in pieces.enumerated() {
                if allowIPv4Tail && index == pieces.count - 1 && piece.utf8.contains(UInt8(ascii: ".")) {
                    guard let v4 = parseIPv4(piece) else { return nil }
                    result.append(UInt16(v4[0]) << 8 | UInt16(v4[1]))
                    result.append(UInt16(v4[2]) << 8 | UInt16(v4[3]))
                    continue
                }
                guard !piece.isEmpty, piece.count <= 4, let value = UInt16(piece, radix: 16),
                      piece.allSatisfy({ $0.isHexDigit }) else { return nil }
                result.append(value)
            }
            return result
        }
        let head: [UInt16]
        var tail: [UInt16] = []
        if halves.count == 2 {
            guard let h = groups(halves[0], allowIPv4Tail: false), let t = groups(halves[1], allowIPv4Tail: true),
                  h.count + t.count <= 7 else { return nil }
            head = h
            tail = t
        } else {
            guard let all = groups(halves[0], allowIPv4Tail: true), all.count == 8 else { return nil }
            head = all
        }
        let words = head + [UInt16](repeating: 0, count: 8 - head.count - tail.count) + tail
        return words.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xff)] }
    }

    public var description: String {
        if isIPv4 { return bytes.map(String.init).joined(separator: ".") }
        let words = stride(from: 0, to: 16, by: 2).map { UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]) }
        // RFC 5952: the longest run (two or more) of zero groups becomes "::", the first if tied.
        var bestStart = -1, bestLength = 0, index = 0
        while index < 8 {
            if words[index] == 0 {
                var end = index
                while end < 8 && words[end] == 0 { end += 1 }
                if end - index > bestLength && end - index >= 2 { bestStart = index; bestLength = end - index }
                index = end
            } else {
                index += 1
            }
        }
        let hex = words.map { String($0, radix: 16) }
        guard bestStart >= 0 else { return hex.joined(separator: ":") }
        let left = hex[..<bestStart].joined(separator: ":")
        let right = hex[(bestStart + bestLength)...].joined(separator: ":")
        return left + "::" + right
    }
}

/// A CIDR block: an address and a prefix length (0...32 or 0...128).
public struct IPPrefix: Hashable, CustomStringConvertible, Sendable {
    public let address: IPAddress
    public let length: Int

    public init?(address: IPAddress, length: Int) {
        guard length >= 0, length <= address.bytes.count * 8 else { return nil }
        self.address = address
        self.length = length
    }

    /// `10.0.0.0/8`, or a bare address (a host prefix).
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let address = IPAddress(String(parts[0])) else { return nil }
        var length = address.bytes.count * 8
        if parts.count == 2 {
            guard parts[1].allSatisfy({ $0.isASCII && $0.isNumber }), parts[1].count <= 3, let value = Int(parts[1]) else { return nil }
            length = value
        }
        self.init(address: address, length: length)
    }

    /// Whether `other` falls within this block (same family only).
    public func contains(_ other: IPAddress) -> Bool {
        guard other.bytes.count == address.bytes.count else { return false }
        var remaining = length
        for index in 0..<address.bytes.count where remaining > 0 {
            let bits = min(8, remaining)
            let mask = UInt8(truncatingIfNeeded: 0xff << (8 - bits))
            if address.bytes[index] & mask != other.bytes[index] & mask { return false }
            remaining -= bits
        }
        return true
    }

    public var description: String { "\(address)/\(length)" }
}
