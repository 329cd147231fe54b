import Testing
@testable import NetWorker

/// `Socks5Parser`: the SOCKS5 handshake of RFC 1928 as a state machine over received bytes
/// (no-auth only, CONNECT only, IPv4 and IPv6 only), however the bytes are split, and its bound
/// on what it buffers.
@Suite struct Socks5ParserTests {
    private static let greeting: [UInt8] = [5, 1, 0]
    /// CONNECT 10.1.2.3:8080.
    private static let connectIPv4: [UInt8] = [5, 1, 0, 1, 10, 1, 2, 3, 0x1f, 0x90]
    /// CONNECT [2001:db8::a:1]:443.
    private static let connectIPv6: [UInt8] = [5, 1, 0, 4,
                                               0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0, 1,
                                               0x01, 0xbb]
    private static let ipv6Host = "2001:db8:0:0:0:0:a:1"

    /// Feeds `chunks` one after the other as the handler does (after `.reply`, feeds nothing to
    /// continue), and returns the replies sent and every action that was not a reply.
    private func run(_ chunks: [[UInt8]], parser: inout Socks5Parser) -> (replies: [[UInt8]], actions: [Socks5Parser.Action]) {
        var replies: [[UInt8]] = []
        var actions: [Socks5Parser.Action] = []
        for chunk in chunks {
            var action = parser.feed(chunk)
            while case .reply(let bytes) = action {
                replies.append(bytes)
                action = parser.feed([])
            }
            actions.append(action)
        }
        return (replies, actions)
    }

    private func run(_ chunks: [[UInt8]]) -> (replies: [[UInt8]], actions: [Socks5Parser.Action]) {
        var parser = Socks5Parser()
        return run(chunks, parser: &parser)
    }

    /// The decision (the one action that is neither a reply nor `needMore`), if any.
    private func decision(_ actions: [Socks5Parser.Action]) -> [Socks5Parser.Action] {
        actions.filter { $0 != .needMore }
    }

    private func failureReply(_ action: Socks5Parser.Action?) -> [UInt8]? {
        if case .fail(let bytes, _) = action { return bytes }
        return nil
    }

    // MARK: - Greeting

    @Test func greetingWithNoAuthIsAccepted() {
        var parser = Socks5Parser()
        #expect(parser.feed(Self.greeting) == .reply([5, 0]))
        #expect(parser.feed([]) == .needMore)
        // No-auth among other methods.
        var other = Socks5Parser()
        #expect(other.feed([5, 3, 2, 1, 0]) == .reply([5, 0]))
    }

    @Test func greetingWithoutNoAuthFails() {
        for greeting: [UInt8] in [[5, 1, 2], [5, 2, 1, 2], [5, 0], [5, 3, 0x80, 0xfe, 0xff]] {
            var parser = Socks5Parser()
            let action = parser.feed(greeting)
            #expect(failureReply(action) == [5, 0xff], "\(greeting)")
        }
    }

    @Test func versionOtherThanFiveFails() {
        for version: UInt8 in [0, 4, 6, 0xff] {
            var parser = Socks5Parser()
            let action = parser.feed([version, 1, 0])
            #expect(failureReply(action) == [], "version \(version)")
        }
        // An HTTP request sent to the SOCKS5 port.
        var parser = Socks5Parser()
        #expect(failureReply(parser.feed(Array("GET / HTTP/1.1\r\n".utf8))) == [])
    }

    @Test func incompleteGreetingNeedsMore() {
        var parser = Socks5Parser()
        #expect(parser.feed([5]) == .needMore)
        #expect(parser.feed([2]) == .needMore)
        #expect(parser.feed([2]) == .needMore)
        #expect(parser.feed([0]) == .reply([5, 0]))
    }

    // MARK: - Request

    @Test func connectIPv4() {
        let (replies, actions) = run([Self.greeting, Self.connectIPv4])
        #expect(replies == [[5, 0]])
        #expect(decision(actions) == [.connect(host: "10.1.2.3", port: 8080, leftover: [])])
    }

    @Test func connectIPv6() {
        let (replies, actions) = run([Self.greeting, Self.connectIPv6])
        #expect(replies == [[5, 0]])
        #expect(decision(actions) == [.connect(host: Self.ipv6Host, port: 443, leftover: [])])

        let loopback: [UInt8] = [5, 1, 0, 4] + [UInt8](repeating: 0, count: 15) + [1, 0x3a, 0x98]
        #expect(decision(run([Self.greeting, loopback]).actions)
            == [.connect(host: "0:0:0:0:0:0:0:1", port: 15000, leftover: [])])
    }

    @Test func portEdges() {
        for (high, low, port): (UInt8, UInt8, UInt16) in [(0, 0, 0), (0, 1, 1), (1, 0, 256), (0xff, 0xff, 65535)] {
            let request: [UInt8] = [5, 1, 0, 1, 127, 0, 0, 1, high, low]
            #expect(decision(run([Self.greeting + request]).actions) == [.connect(host: "127.0.0.1", port: port, leftover: [])])
        }
    }

    @Test func leftoverBytesAreKept() {
        let data: [UInt8] = Array("GET / HTTP/1.1\r\n\r\n".utf8)
        for (request, host, port) in [(Self.connectIPv4, "10.1.2.3", UInt16(8080)), (Self.connectIPv6, Self.ipv6Host, 443)] {
            // Everything in one segment.
            var (replies, actions) = run([Self.greeting + request + data])
            #expect(replies == [[5, 0]])
            #expect(decision(actions) == [.connect(host: host, port: port, leftover: data)])
            // The request and the data in one segment, after the greeting.
            (replies, actions) = run([Self.greeting, request + data])
            #expect(decision(actions) == [.connect(host: host, port: port, leftover: data)])
        }
    }

    @Test func byteByByte() {
        for (request, host, port) in [(Self.connectIPv4, "10.1.2.3", UInt16(8080)), (Self.connectIPv6, Self.ipv6Host, 443)] {
            let message = Self.greeting + request
            var parser = Socks5Parser()
            var replies: [[UInt8]] = []
            for (offset, byte) in message.enumerated() {
                var action = parser.feed([byte])
                while case .reply(let bytes) = action {
                    replies.append(bytes)
                    action = parser.feed([])
                }
                if offset == message.count - 1 {
                    #expect(action == .connect(host: host, port: port, leftover: []))
                } else {
                    #expect(action == .needMore, "byte \(offset)")
                }
                if offset == Self.greeting.count - 1 { #expect(replies == [[5, 0]]) }
                if offset < Self.greeting.count - 1 { #expect(replies.isEmpty) }
            }
            #expect(replies == [[5, 0]])
        }
    }

    /// Every split of greeting + request + data in two segments: the same reply and destination,
    /// and as leftover the data that arrived with the end of the request.
    @Test func everyTwoWaySplit() {
        let data: [UInt8] = [0xde, 0xad, 0xbe, 0xef]
        for (request, host, port) in [(Self.connectIPv4, "10.1.2.3", UInt16(8080)), (Self.connectIPv6, Self.ipv6Host, 443)] {
            let message = Self.greeting + request + data
            let requestEnd = Self.greeting.count + request.count
            for split in 0...message.count {
                let (replies, actions) = run([Array(message[..<split]), Array(message[split...])])
                #expect(replies == [[5, 0]], "split at \(split)")
                let leftover = split < requestEnd ? data : Array(message[requestEnd..<split])
                #expect(decision(actions) == [.connect(host: host, port: port, leftover: leftover)], "split at \(split)")
            }
        }
    }

    @Test func bindAndUDPAssociateAreNotSupported() {
        for command: UInt8 in [2, 3, 0, 9] {
            let (replies, actions) = run([Self.greeting, [5, command, 0, 1, 10, 0, 0, 1, 0, 80]])
            #expect(replies == [[5, 0]])
            let failure = failureReply(decision(actions).first)
            #expect(failure == [5, 7, 0, 1, 0, 0, 0, 0, 0, 0], "command \(command)")
            #expect(failure?[1] == Socks5Parser.ReplyCode.commandNotSupported.rawValue)
        }
    }

    /// Domain names (ATYP 3) are taken when they can be DNS names; routing decides what they
    /// reach (mesh service hostnames only, in OutboundRouting).
    @Test func domainNamesAreTakenWhenTheyCanBeDNSNames() {
        let name = Array("Echo.shop.svc.cluster.local".utf8)
        let request: [UInt8] = [5, 1, 0, 3, UInt8(name.count)] + name + [0, 80] + Array("early".utf8)
        let (replies, actions) = run([Self.greeting, request])
        #expect(replies == [[5, 0]])
        #expect(decision(actions).first == .connect(host: "echo.shop.svc.cluster.local", port: 80, leftover: Array("early".utf8)))
        // Byte by byte, the same decision.
        var parser = Socks5Parser()
        _ = run([Self.greeting], parser: &parser)
        var last = Socks5Parser.Action.needMore
        for byte in [5, 1, 0, 3, UInt8(name.count)] + name + [0, 80] { last = parser.feed([byte]) }
        #expect(last == .connect(host: "echo.shop.svc.cluster.local", port: 80, leftover: []))
        // Names a DNS name cannot be, and an empty one, are refused.
        for bad in ["a b", "-x.com", ".x", "x/y", "a\u{0}b", "é.com"] {
            let bytes = Array(bad.utf8)
            let actions = run([Self.greeting, [5, 1, 0, 3, UInt8(bytes.count)] + bytes + [0, 80]]).actions
            #expect(failureReply(decision(actions).first)?[1] == Socks5Parser.ReplyCode.generalFailure.rawValue, "\(bad)")
        }
        #expect(failureReply(decision(run([Self.greeting, [5, 1, 0, 3, 0, 0, 80]]).actions).first)?[1] == 1)
        // Unknown address types are still refused.
        for type: UInt8 in [0, 2, 5, 0xff] {
            #expect(failureReply(decision(run([Self.greeting, [5, 1, 0, type]]).actions).first)?[1] == 8, "type \(type)")
        }
    }

    @Test func malformedRequestHeaderFails() {
        // Wrong version, then a non-zero reserved byte.
        for request: [UInt8] in [[4, 1, 0, 1, 10, 0, 0, 1, 0, 80], [5, 1, 1, 1, 10, 0, 0, 1, 0, 80]] {
            let (_, actions) = run([Self.greeting, request])
            #expect(failureReply(decision(actions).first) == [], "\(request)")
        }
    }

    // MARK: - Bounds and the end state

    @Test func moreThanMaxBufferedBeforeADecisionFails() {
        let limit = Socks5Parser.maxBuffered
        // A valid handshake, but too many bytes behind it in one segment: refused, not buffered.
        var parser = Socks5Parser()
        let tooMuch = Self.greeting + Self.connectIPv4 + [UInt8](repeating: 0x41, count: limit + 1 - 13)
        #expect(tooMuch.count == limit + 1)
        #expect(failureReply(parser.feed(tooMuch)) == [])
        #expect(parser.feed(Self.greeting) == .needMore)

        // After the greeting, the same bound on what is buffered plus what arrives.
        var afterGreeting = Socks5Parser()
        #expect(afterGreeting.feed(Self.greeting + [5]) == .reply([5, 0]))
        #expect(afterGreeting.feed([]) == .needMore)
        #expect(failureReply(afterGreeting.feed([UInt8](repeating: 1, count: limit))) == [])

        // Exactly the bound is served.
        let data = [UInt8](repeating: 0x41, count: limit - 13)
        let (replies, actions) = run([Self.greeting + Self.connectIPv4 + data])
        #expect(replies == [[5, 0]])
        #expect(decision(actions) == [.connect(host: "10.1.2.3", port: 8080, leftover: data)])
    }

    @Test func afterADecisionNothingMoreIsTaken() {
        var connected = Socks5Parser()
        _ = run([Self.greeting, Self.connectIPv4], parser: &connected)
        var failed = Socks5Parser()
        #expect(failureReply(failed.feed([4, 1, 0])) == [])
        var refused = Socks5Parser()
        #expect(failureReply(refused.feed([5, 1, 2])) == [5, 0xff])
        var overflowed = Socks5Parser()
        #expect(failureReply(overflowed.feed([UInt8](repeating: 5, count: Socks5Parser.maxBuffered + 1))) == [])

        for var parser in [connected, failed, refused, overflowed] {
            #expect(parser.feed([]) == .needMore)
            #expect(parser.feed(Self.greeting) == .needMore)
            #expect(parser.feed(Self.connectIPv4) == .needMore)
            // However much more arrives, nothing is held: never the buffer bound's failure.
            for _ in 0..<3 {
                #expect(parser.feed([UInt8](repeating: 5, count: Socks5Parser.maxBuffered)) == .needMore)
            }
        }
    }
}
