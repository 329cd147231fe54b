import NIOCore
import NIOEmbedded
import Shared
import Testing
@testable import NetWorker

/// `RequestHeadGuard` on an `EmbeddedChannel`: the admin, stats and readiness ports pass at most
/// `Bounds.httpMaxHeadBytes` inbound bytes on to the HTTP decoder and close a connection that
/// sends more, or that has not been answered within `httpHeadMilliseconds`; both are reported.
@Suite struct RequestHeadGuardTests {
    private static let bounds = Bounds(handshakeMilliseconds: 10_000, idleMilliseconds: 60_000, maxConnectionsPerListener: 8)

    private func makeChannel(listener: String = "admin") throws -> (EmbeddedChannel, BoundReporter) {
        let reporter = BoundReporter(now: { 0 })
        // Connected first, as an accepted connection is when its pipeline is set up.
        let channel = EmbeddedChannel()
        try channel.connect(to: SocketAddress(ipAddress: "10.0.0.9", port: 40_000)).wait()
        try channel.pipeline.syncOperations.addHandler(RequestHeadGuard(listener: listener, bounds: Self.bounds, reporter: reporter))
        return (channel, reporter)
    }

    private func reported(_ reporter: BoundReporter, _ bound: BoundReporter.Bound, listener: String = "admin") -> String? {
        let prefix = "ztunnel_bound_reached_total{listener=\"\(listener)\",bound=\"\(bound.rawValue)\"} "
        return reporter.metricLines().first { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)) }
    }

    private func send(_ channel: EmbeddedChannel, count: Int, byte: UInt8 = 0x61) throws {
        try channel.writeInbound(channel.allocator.buffer(repeating: byte, count: count))
    }

    @Test func bytesUnderTheBoundPassThrough() throws {
        let (channel, reporter) = try makeChannel()
        defer { _ = try? channel.finish() }
        let request = "GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n"
        try channel.writeInbound(channel.allocator.buffer(string: request))
        var passed = try #require(try channel.readInbound(as: ByteBuffer.self))
        #expect(passed.readString(length: passed.readableBytes) == request)
        #expect(channel.isActive)
        #expect(reported(reporter, .requestHeadSize) == nil)
    }

    @Test func exactlyTheBoundPassesInPieces() throws {
        let (channel, reporter) = try makeChannel()
        defer { _ = try? channel.finish() }
        let half = Bounds.httpMaxHeadBytes / 2
        try send(channel, count: half)
        try send(channel, count: Bounds.httpMaxHeadBytes - half)
        var total = 0
        while let buffer = try channel.readInbound(as: ByteBuffer.self) { total += buffer.readableBytes }
        #expect(total == Bounds.httpMaxHeadBytes)
        #expect(channel.isActive)
        #expect(reported(reporter, .requestHeadSize) == nil)
    }

    @Test func oneByteOverTheBoundCloses() throws {
        let (channel, reporter) = try makeChannel(listener: "stats")
        defer { _ = try? channel.finish() }
        try send(channel, count: Bounds.httpMaxHeadBytes)
        #expect(try channel.readInbound(as: ByteBuffer.self)?.readableBytes == Bounds.httpMaxHeadBytes)
        try send(channel, count: 1)
        #expect(!channel.isActive)
        // The byte over the bound is not passed on.
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
        #expect(reported(reporter, .requestHeadSize, listener: "stats") == "1")
    }

    @Test func oneLargeSegmentIsRefusedWhole() throws {
        let (channel, reporter) = try makeChannel()
        defer { _ = try? channel.finish() }
        try send(channel, count: Bounds.httpMaxHeadBytes + 1)
        #expect(!channel.isActive)
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
        #expect(reported(reporter, .requestHeadSize) == "1")
    }

    @Test func idleChannelIsClosedAtTheHeadDeadline() throws {
        let (channel, reporter) = try makeChannel(listener: "readiness")
        defer { _ = try? channel.finish() }
        try channel.writeInbound(channel.allocator.buffer(string: "GET /healthz/ready HTTP/1.1\r\n"))  // and never the rest
        let limit = Self.bounds.httpHeadMilliseconds
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(limit - 1))
        #expect(channel.isActive)
        #expect(reported(reporter, .requestHeadTimeout, listener: "readiness") == nil)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        #expect(!channel.isActive)
        #expect(reported(reporter, .requestHeadTimeout, listener: "readiness") == "1")
    }

    /// Review finding: once the answer is being written, a slow reader of a long answer
    /// (/config_dump) is not cut off by the head deadline.
    @Test func anAnswerCancelsTheHeadDeadline() throws {
        let (channel, reporter) = try makeChannel()
        defer { _ = try? channel.finish() }
        try channel.writeInbound(channel.allocator.buffer(string: "GET /config_dump HTTP/1.1\r\n\r\n"))
        try channel.writeOutbound(channel.allocator.buffer(string: "HTTP/1.1 200 OK\r\n"))
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(Self.bounds.httpHeadMilliseconds * 10))
        #expect(channel.isActive)
        #expect(reported(reporter, .requestHeadTimeout) == nil)
    }

    @Test func closedChannelIsNotReportedAtTheDeadline() throws {
        let (channel, reporter) = try makeChannel()
        defer { _ = try? channel.finish() }
        try channel.close().wait()
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(Self.bounds.httpHeadMilliseconds * 2))
        #expect(reported(reporter, .requestHeadTimeout) == nil)
    }
}
