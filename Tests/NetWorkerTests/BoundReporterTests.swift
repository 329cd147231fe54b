import Testing
@testable import NetWorker

/// `BoundReporter`: every time a bound is reached it is counted per listener and bound; it is
/// logged only when it opens an episode (first hit, or first after `quietMilliseconds` without
/// one), and the counts are exported as `ztunnel_bound_reached_total` lines.
@Suite struct BoundReporterTests {
    /// A clock the test moves.
    private final class ManualClock: @unchecked Sendable {
        var milliseconds: Int64 = 1_000_000
    }

    @Test func firstHitIsLoggedRepeatsAreNot() {
        let clock = ManualClock()
        let reporter = BoundReporter(now: { clock.milliseconds })
        #expect(reporter.reached(.connections, listener: "socks5", peer: "10.0.0.1:1", detail: "cap"))
        #expect(!reporter.reached(.connections, listener: "socks5", peer: "10.0.0.2:1", detail: "cap"))
        clock.milliseconds += 1_000
        #expect(!reporter.reached(.connections, listener: "socks5", peer: "10.0.0.3:1", detail: "cap"))
    }

    @Test func quietSpellOpensANewEpisode() {
        let clock = ManualClock()
        let quiet = BoundReporter.quietMilliseconds
        let reporter = BoundReporter(now: { clock.milliseconds })
        #expect(reporter.reached(.idleTimeout, listener: "outbound", peer: "?", detail: ""))
        clock.milliseconds += quiet - 1
        #expect(!reporter.reached(.idleTimeout, listener: "outbound", peer: "?", detail: ""))
        // The spell is measured from the latest hit, not from the one that was logged.
        clock.milliseconds += quiet - 1
        #expect(!reporter.reached(.idleTimeout, listener: "outbound", peer: "?", detail: ""))
        clock.milliseconds += quiet
        #expect(reporter.reached(.idleTimeout, listener: "outbound", peer: "?", detail: ""))
        #expect(!reporter.reached(.idleTimeout, listener: "outbound", peer: "?", detail: ""))
    }

    @Test func episodesAreKeptPerListenerAndBound() {
        let reporter = BoundReporter(now: { 0 })
        #expect(reporter.reached(.handshakeTimeout, listener: "socks5", peer: "?", detail: ""))
        #expect(reporter.reached(.handshakeTimeout, listener: "inbound", peer: "?", detail: ""))
        #expect(reporter.reached(.idleTimeout, listener: "socks5", peer: "?", detail: ""))
        #expect(!reporter.reached(.handshakeTimeout, listener: "socks5", peer: "?", detail: ""))
        #expect(!reporter.reached(.handshakeTimeout, listener: "inbound", peer: "?", detail: ""))
    }

    @Test func countsAppearInMetricLines() {
        let reporter = BoundReporter(now: { 0 })
        #expect(reporter.metricLines() == [
            "# HELP ztunnel_bound_reached Connections closed because they reached a bound (deadline, cap, buffer).",
            "# TYPE ztunnel_bound_reached counter",
        ])
        for _ in 0..<3 { reporter.reached(.handshakeTimeout, listener: "socks5", peer: "?", detail: "") }
        reporter.reached(.requestHeadSize, listener: "admin", peer: "?", detail: "")
        reporter.reached(.connections, listener: "socks5", peer: "?", detail: "")
        let lines = reporter.metricLines()
        #expect(Array(lines.dropFirst(2)) == [
            "ztunnel_bound_reached_total{listener=\"admin\",bound=\"request_head_size\"} 1",
            "ztunnel_bound_reached_total{listener=\"socks5\",bound=\"handshake_timeout\"} 3",
            "ztunnel_bound_reached_total{listener=\"socks5\",bound=\"max_connections\"} 1",
        ])
    }

    @Test func repeatsAreCountedEvenWhenNotLogged() {
        let clock = ManualClock()
        let reporter = BoundReporter(now: { clock.milliseconds })
        var logged = 0
        for _ in 0..<100 {
            if reporter.reached(.earlyData, listener: "outbound", peer: "?", detail: "") { logged += 1 }
            clock.milliseconds += 10
        }
        #expect(logged == 1)
        #expect(reporter.metricLines().contains("ztunnel_bound_reached_total{listener=\"outbound\",bound=\"early_data\"} 100"))
    }

    @Test func boundNames() {
        #expect(BoundReporter.Bound.allCases.map(\.rawValue) == [
            "max_connections", "handshake_timeout", "idle_timeout", "request_head_timeout", "request_head_size",
            "handshake_input", "early_data",
        ])
    }
}
