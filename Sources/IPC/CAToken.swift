/// The bearer token the CertWorker sends to the Istio CA (`authorization: Bearer <token>`). The
/// Supervisor reads it (AUTH_TOKEN names a file, re-read every 10 s since projected tokens
/// rotate, or is the token itself) and hands the value to the CertWorker alone.
public enum CAToken {
    /// Projected service-account tokens are a few KiB.
    public static let maxBytes = 16 * 1024

    /// The token as users expect it to be read: surrounding whitespace (a trailing newline from
    /// `echo` or an editor) removed. Issue #6: it used to be sent as-is, an invalid HTTP/2 header
    /// value that istiod refuses.
    public static func normalized(_ bytes: [UInt8]) -> String {
        let isSpace: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 || $0 == 0x0a || $0 == 0x0d }
        guard let first = bytes.firstIndex(where: { !isSpace($0) }), let last = bytes.lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return String(decoding: bytes[first...last], as: UTF8.self)
    }

    /// Why `token` cannot be sent as a header value, or nil. Only visible ASCII is accepted: a NUL
    /// (once read past the end of its C copy), a control character or a line break inside it
    /// would corrupt or split the header.
    public static func problem(with token: String) -> String? {
        if token.isEmpty { return "the token is empty" }
        if token.utf8.count > maxBytes { return "the token is over \(maxBytes) bytes" }
        if let bad = token.utf8.first(where: { $0 < 0x21 || $0 > 0x7e }) { return "the token holds byte 0x\(String(bad, radix: 16))" }
        return nil
    }
}
