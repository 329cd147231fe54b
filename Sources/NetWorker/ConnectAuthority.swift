/// The `:authority` of an HBONE CONNECT (ISTIO_COMPAT §5.3, §10): `IP:port`, `[IPv6]:port`, or
/// `hostname:port`. Pure and self-contained (no imports): the fuzz target
/// `Fuzz/targets/connect_authority.swift` compiles it alone, as it parses bytes from any client.
enum ConnectAuthority: Equatable {
    /// A literal address (brackets removed) and a port.
    case address(String, UInt16)
    /// A hostname (service form) and a port.
    case hostname(String, UInt16)

    /// At most what a DNS name and a port take; longer is refused before any work.
    static let maxLength = 253 + 1 + 5 + 2

    /// Nil unless the text is exactly one of the three forms with a port 1-65535. A hostname is
    /// letters, digits, `-` and `.` only; anything with a `:` outside brackets is an IPv6 literal
    /// written without them, which is refused.
    static func parse(_ text: String) -> ConnectAuthority? {
        guard text.utf8.count <= maxLength, let colon = text.lastIndex(of: ":") else { return nil }
        let portText = text[text.index(after: colon)...]
        guard !portText.isEmpty, portText.count <= 5, portText.allSatisfy({ $0.isASCII && $0.isNumber }),
              let port = UInt16(portText), port > 0 else { return nil }
        let host = text[..<colon]
        if host.hasPrefix("[") {
            guard host.hasSuffix("]"), host.count > 2 else { return nil }
            let inner = host.dropFirst().dropLast()
            // Brackets are for IPv6 literals only (RFC 3986): they must hold a ':'.
            guard inner.utf8.contains(UInt8(ascii: ":")), inner.allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }) else { return nil }
            return .address(String(inner), port)
        }
        guard !host.isEmpty, !host.utf8.contains(UInt8(ascii: ":")) else { return nil }
        if host.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }) { return .address(String(host), port) }
        guard host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == ".") }),
              host.first != "-", host.first != "." else { return nil }
        return .hostname(String(host), port)
    }
}
