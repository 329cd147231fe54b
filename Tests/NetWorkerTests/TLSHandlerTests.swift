import NIOCore
import NIOEmbedded
import Shared
import Testing
@testable import NetWorker

/// A server `TLSHandler` on an `EmbeddedChannel` whose certificate choice refuses (no workload
/// owns the address): a silent connection is left alone until the handshake deadline, then
/// closed and reported; a client that sends bytes is closed at once, with the refusal's reason
/// passed on, since there is nothing to present.
/// (The `Bounds.tlsHandshakeInputBytes` check is only reached once an SSL exists, which needs an
/// identity; it is not tested here.)
@Suite struct TLSHandlerTests {
    private static let handshakeMilliseconds: Int64 = 3_000
    private static let bounds = Bounds(handshakeMilliseconds: handshakeMilliseconds, idleMilliseconds: 60_000,
                                       maxConnectionsPerListener: 8)

    /// Keeps the user events the TLS handler passes on.
    final class Events: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        var failures: [String] = []
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let failed = event as? TLSFailed { failures.append(failed.reason) }
        }
    }

    private func makeChannel(events: Events = Events()) throws -> (EmbeddedChannel, BoundReporter) {
        let reporter = BoundReporter(now: { 0 })
        let handler = TLSHandler(role: .server(choose: { _ in .failure(.init(reason: "no workload owns 10.0.0.1")) }),
                                 signer: SignerClient(), bounds: Self.bounds, reporter: reporter)
        // Connected first, as an accepted connection is when its pipeline is set up.
        let channel = EmbeddedChannel()
        try channel.connect(to: SocketAddress(ipAddress: "10.0.0.9", port: 40_000)).wait()
        try channel.pipeline.syncOperations.addHandlers([handler, events])
        return (channel, reporter)
    }

    private func handshakeTimeouts(_ reporter: BoundReporter) -> String? {
        let prefix = "ztunnel_bound_reached_total{listener=\"inbound\",bound=\"handshake_timeout\"} "
        return reporter.metricLines().first { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)) }
    }

    /// The SSL is made only when bytes arrive: had it been attempted for a silent connection,
    /// the missing identity would have closed the connection at once.
    @Test func silentConnectionIsClosedAtTheHandshakeDeadline() throws {
        let (channel, reporter) = try makeChannel()
        defer { _ = try? channel.finish() }
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(Self.handshakeMilliseconds - 1))
        #expect(channel.isActive)
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        #expect(handshakeTimeouts(reporter) == nil)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        #expect(!channel.isActive)
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        #expect(handshakeTimeouts(reporter) == "1")
    }

    @Test func bytesWithoutAnIdentityClose() throws {
        let events = Events()
        let (channel, reporter) = try makeChannel(events: events)
        defer { _ = try? channel.finish() }
        // The start of a TLS record (handshake, TLS 1.0 record version), as a ClientHello begins.
        try channel.writeInbound(channel.allocator.buffer(bytes: [0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x03]))
        #expect(!channel.isActive)
        #expect(events.failures == ["no workload owns 10.0.0.1"])
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        // Closing cancelled the deadline: the connection is not reported as a timeout as well.
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(Self.handshakeMilliseconds * 2))
        #expect(handshakeTimeouts(reporter) == nil)
    }

    @Test func inputClosedBeforeTheHandshakeCloses() throws {
        let (channel, reporter) = try makeChannel()
        defer { _ = try? channel.finish() }
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(!channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(Self.handshakeMilliseconds * 2))
        #expect(handshakeTimeouts(reporter) == nil)
    }
}
