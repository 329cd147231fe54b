import NIOCore
import NIOEmbedded
import Shared
import Testing
@testable import NetWorker

/// `Socks5Handler` on an `EmbeddedChannel`: what it answers and when it closes for refused
/// destinations, malformed handshakes and a client that never finishes its handshake. (A
/// successful CONNECT needs a real upstream socket, which an EmbeddedChannel cannot make.)
@Suite struct Socks5HandlerTests {
    private static let handshakeMilliseconds: Int64 = 1_500
    private static let bounds = Bounds(handshakeMilliseconds: handshakeMilliseconds, idleMilliseconds: 60_000,
                                       maxConnectionsPerListener: 8)
    private static let proxyPorts: Set<UInt16> = [15001, 15006, 15008, 15080]

    private func handshakeTimeouts(_ reporter: BoundReporter) -> String? {
        reporter.metricLines().first { $0.hasPrefix("ztunnel_bound_reached_total{listener=\"socks5\",bound=\"handshake_timeout\"}") }
    }

    /// A connected channel with the handler, and its reporter.
    private func makeChannel() throws -> (EmbeddedChannel, BoundReporter) {
        let reporter = BoundReporter(now: { 0 })
        let handler = Socks5Handler(guardrails: DestinationGuard(proxyPorts: Self.proxyPorts), bounds: Self.bounds,
                                    reporter: reporter)
        // Connected first, as an accepted connection is when its pipeline is set up.
        let channel = EmbeddedChannel()
        try channel.connect(to: SocketAddress(ipAddress: "10.0.0.9", port: 40_000)).wait()
        try channel.pipeline.syncOperations.addHandler(handler)
        #expect(channel.isActive)
        return (channel, reporter)
    }

    private func send(_ channel: EmbeddedChannel, _ bytes: [UInt8]) throws {
        try channel.writeInbound(channel.allocator.buffer(bytes: bytes))
    }

    /// Every byte written to the client so far, across writes.
    private func written(_ channel: EmbeddedChannel) throws -> [UInt8] {
        var bytes: [UInt8] = []
        while var buffer = try channel.readOutbound(as: ByteBuffer.self) {
            bytes += buffer.readBytes(length: buffer.readableBytes) ?? []
        }
        return bytes
    }

    @Test func loopbackOnAProxyPortIsNotAllowed() throws {
        let requests: [[UInt8]] = [
            [5, 1, 0, 1, 127, 0, 0, 1, 0x3a, 0x99],  // 127.0.0.1:15001
            [5, 1, 0, 4] + [UInt8](repeating: 0, count: 15) + [1, 0x3a, 0xa0],  // [::1]:15008
        ]
        for request in requests {
            let (channel, reporter) = try makeChannel()
            defer { _ = try? channel.finish() }
            try send(channel, [5, 1, 0])
            #expect(try written(channel) == [5, 0])
            #expect(channel.isActive)
            try send(channel, request)
            #expect(try written(channel) == [5, 2, 0, 1, 0, 0, 0, 0, 0, 0])
            #expect(!channel.isActive)
            // Closing cancelled the handshake deadline.
            channel.embeddedEventLoop.advanceTime(by: .milliseconds(Self.handshakeMilliseconds * 2))
            #expect(handshakeTimeouts(reporter) == nil)
        }
    }

    @Test func refusalInTheSameSegmentAsTheGreeting() throws {
        let (channel, _) = try makeChannel()
        defer { _ = try? channel.finish() }
        // Greeting, CONNECT 127.9.9.9:15080 and early data, all in one segment.
        try send(channel, [5, 1, 0] + [5, 1, 0, 1, 127, 9, 9, 9, 0x3a, 0xe8] + Array("early".utf8))
        #expect(try written(channel) == [5, 0] + [5, 2, 0, 1, 0, 0, 0, 0, 0, 0])
        #expect(!channel.isActive)
    }

    @Test func malformedGreetingCloses() throws {
        let (channel, _) = try makeChannel()
        defer { _ = try? channel.finish() }
        try send(channel, [4, 1, 0])
        #expect(try written(channel).isEmpty)
        #expect(!channel.isActive)
    }

    @Test func greetingWithoutNoAuthIsAnsweredAndClosed() throws {
        let (channel, _) = try makeChannel()
        defer { _ = try? channel.finish() }
        try send(channel, [5, 1, 2])
        #expect(try written(channel) == [5, 0xff])
        #expect(!channel.isActive)
    }

    @Test func unsupportedRequestsAreAnsweredAndClosed() throws {
        let name = Array("exa mple.com".utf8)
        let cases: [([UInt8], UInt8)] = [
            ([5, 2, 0, 1, 10, 0, 0, 1, 0, 80], 7),  // BIND
            ([5, 3, 0, 1, 10, 0, 0, 1, 0, 80], 7),  // UDP ASSOCIATE
            ([5, 1, 0, 3, UInt8(name.count)] + name + [0, 80], 1),  // a name no DNS name can be
            ([5, 1, 0, 2, 0, 0], 8),  // an unknown address type
        ]
        for (request, code) in cases {
            let (channel, _) = try makeChannel()
            defer { _ = try? channel.finish() }
            try send(channel, [5, 1, 0] + request)
            #expect(try written(channel) == [5, 0, 5, code, 0, 1, 0, 0, 0, 0, 0, 0])
            #expect(!channel.isActive)
        }
    }

    @Test func silentClientIsClosedAtTheHandshakeDeadline() throws {
        let (channel, reporter) = try makeChannel()
        defer { _ = try? channel.finish() }
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(Self.handshakeMilliseconds - 1))
        #expect(channel.isActive)
        #expect(handshakeTimeouts(reporter) == nil)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        #expect(!channel.isActive)
        #expect(handshakeTimeouts(reporter)?.hasSuffix("} 1") == true)
    }

    @Test func clientThatStopsAfterTheGreetingIsClosedAtTheDeadline() throws {
        let (channel, reporter) = try makeChannel()
        defer { _ = try? channel.finish() }
        try send(channel, [5, 1, 0])
        #expect(try written(channel) == [5, 0])
        try send(channel, [5, 1, 0])  // half a request, then nothing
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(Self.handshakeMilliseconds - 1))
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        #expect(!channel.isActive)
        #expect(handshakeTimeouts(reporter)?.hasSuffix("} 1") == true)
    }
}
