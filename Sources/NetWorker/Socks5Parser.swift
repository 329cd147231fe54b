/// The SOCKS5 handshake (RFC 1928) as a pure state machine over received bytes: no-auth method
/// only, CONNECT only, IPv4 and IPv6 addresses (ISTIO_COMPAT §14). Domain names are refused with
/// "address type not supported" until the DNS proxy exists.
struct Socks5Parser {
    enum Action: Equatable {
        case needMore
        /// Send these bytes and keep parsing.
        case reply([UInt8])
        /// The client asked to connect here; bytes after the request (if any) are `leftover`.
        case connect(host: String, port: UInt16, leftover: [UInt8])
        /// Send these bytes (a SOCKS error reply, possibly empty) and close.
        case fail([UInt8], reason: String)
    }

    enum ReplyCode: UInt8 {
        case succeeded = 0, generalFailure = 1, notAllowed = 2, networkUnreachable = 3, hostUnreachable = 4,
             connectionRefused = 5, commandNotSupported = 7, addressTypeNotSupported = 8
    }

    private enum Phase { case greeting, request, done }
    private var phase = Phase.greeting
    private var buffer: [UInt8] = []

    /// The most bytes held before a decision: a greeting is at most 257 bytes and a request 22,
    /// plus what a client pipelines behind them (kept and sent first, up to the early-data bound
    /// of 64 KiB). More is refused, so a client that streams bytes at the handshake cannot make
    /// us buffer without end.
    static let maxBuffered = 64 * 1024

    /// Feeds received bytes; returns what to do next. Call again with no bytes after `.reply` to
    /// continue with what is buffered. After a decision (`connect` or `fail`) it holds nothing
    /// more and answers `needMore`.
    mutating func feed(_ bytes: [UInt8]) -> Action {
        guard phase != .done else { return .needMore }
        guard buffer.count + bytes.count <= Self.maxBuffered else {
            phase = .done
            buffer.removeAll()
            return .fail([], reason: "more than \(Self.maxBuffered) bytes before the handshake completed")
        }
        buffer += bytes
        switch phase {
        case .greeting: return parseGreeting()
        case .request: return parseRequest()
        case .done: return .needMore
        }
    }

    private mutating func parseGreeting() -> Action {
        guard buffer.count >= 2 else { return .needMore }
        guard buffer[0] == 5 else { phase = .done; return .fail([], reason: "not SOCKS5 (version \(buffer[0]))") }
        let count = Int(buffer[1])
        guard buffer.count >= 2 + count else { return .needMore }
        let methods = buffer[2..<2 + count]
        buffer.removeFirst(2 + count)
        guard methods.contains(0) else { phase = .done; return .fail([5, 0xff], reason: "client offers no no-auth method") }
        phase = .request
        return .reply([5, 0])
    }

    private mutating func parseRequest() -> Action {
        guard buffer.count >= 4 else { return .needMore }
        guard buffer[0] == 5, buffer[2] == 0 else { phase = .done; return .fail([], reason: "malformed request header") }
        guard buffer[1] == 1 else {
            phase = .done
            return .fail(Self.reply(.commandNotSupported), reason: "command \(buffer[1]) is not CONNECT")
        }
        let host: String
        let addressLength: Int
        switch buffer[3] {
        case 1:
            addressLength = 4
            guard buffer.count >= 4 + addressLength + 2 else { return .needMore }
            host = buffer[4..<8].map(String.init).joined(separator: ".")
        case 4:
            addressLength = 16
            guard buffer.count >= 4 + addressLength + 2 else { return .needMore }
            host = stride(from: 4, to: 20, by: 2).map { String(UInt16(buffer[$0]) << 8 | UInt16(buffer[$0 + 1]), radix: 16) }
                .joined(separator: ":")
        case 3:
            // A domain name: one length byte, then the name (RFC 1928). Only what a DNS name can
            // hold is taken (letters, digits, '-', '.'), so nothing odd reaches a log or a lookup.
            guard buffer.count >= 5 else { return .needMore }
            let nameLength = Int(buffer[4])
            guard nameLength > 0 else { phase = .done; return .fail(Self.reply(.generalFailure), reason: "empty domain name") }
            addressLength = 1 + nameLength
            guard buffer.count >= 4 + addressLength + 2 else { return .needMore }
            let name = buffer[5..<(5 + nameLength)]
            guard name.allSatisfy({ Self.isNameByte($0) }), name.first != UInt8(ascii: "-"), name.first != UInt8(ascii: ".") else {
                phase = .done
                return .fail(Self.reply(.generalFailure), reason: "domain name with characters a DNS name cannot have")
            }
            host = String(decoding: name, as: UTF8.self).lowercased()
        default:
            phase = .done
            return .fail(Self.reply(.addressTypeNotSupported), reason: "address type \(buffer[3]) is not supported")
        }
        let portOffset = 4 + addressLength
        let port = UInt16(buffer[portOffset]) << 8 | UInt16(buffer[portOffset + 1])
        let leftover = Array(buffer[(portOffset + 2)...])
        buffer.removeAll()
        phase = .done
        return .connect(host: host, port: port, leftover: leftover)
    }

    private static func isNameByte(_ byte: UInt8) -> Bool {
        (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a) || byte == 0x2d || byte == 0x2e
    }

    /// A reply with the given code and an all-zero IPv4 bound address.
    static func reply(_ code: ReplyCode) -> [UInt8] { [5, code.rawValue, 0, 1, 0, 0, 0, 0, 0, 0] }
}
