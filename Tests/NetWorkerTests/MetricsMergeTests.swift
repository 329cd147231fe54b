import Testing
@testable import NetWorker

/// Summing the NetWorkers' counters for one scrape. Our own lines define the families and their
/// comments; a peer (another process, possibly compromised) contributes only strictly shaped
/// samples of those families, and can only add.
@Suite struct MetricsMergeTests {
    static let own = ["# HELP istio_tcp_connections_opened The number of TCP connections opened.",
                      "# TYPE istio_tcp_connections_opened counter",
                      "istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"a b\"} 3",
                      "# TYPE ztunnel_bound_reached counter",
                      "ztunnel_bound_reached_total{listener=\"socks5\",bound=\"idle_timeout\"} 1"]

    @Test func theSameSeriesIsSummedAndFamiliesStayTogether() {
        let peer = Array(("istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"a b\"} 4\n"
                          + "ztunnel_bound_reached_total{listener=\"socks5\",bound=\"idle_timeout\"} 2\n"
                          + "istio_tcp_connections_opened_total{reporter=\"destination\"} 1\n").utf8)
        #expect(MetricsMerge.merge(own: Self.own, peers: [peer]) == [
            "# HELP istio_tcp_connections_opened The number of TCP connections opened.",
            "# TYPE istio_tcp_connections_opened counter",
            "istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"a b\"} 7",
            "istio_tcp_connections_opened_total{reporter=\"destination\"} 1",
            "# TYPE ztunnel_bound_reached counter",
            "ztunnel_bound_reached_total{listener=\"socks5\",bound=\"idle_timeout\"} 3",
        ])
    }

    @Test func aPeerCannotInjectLinesCommentsFamiliesOrLowerASum() {
        let peer = Array(("# EOF\n# TYPE evil counter\nevil_total 5\n"
                          + "istio_tcp_connections_opened_total{a=\"1\"} 5 x{} 9\n"
                          + "istio_tcp_connections_opened_total{a=\"1\"\n"
                          + "istio_tcp_connections_opened_total{a=1} 2\n"
                          + "istio_tcp_connections_opened_total{a=\"\\q\"} 2\n"
                          + "istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"a b\"} -1\n"
                          + "istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"a b\"} 18446744073709551615\n").utf8)
        let merged = MetricsMerge.merge(own: Self.own, peers: [peer, [0xff, 0xfe, 0x0a]])
        #expect(!merged.contains { $0.contains("evil") || $0 == "# EOF" || $0.contains("x{}") || $0.contains("a=") })
        // The sum saturates: a peer cannot wrap a counter below what we counted.
        #expect(merged.contains("istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"a b\"} 18446744073709551615"))
        #expect(merged.count == Self.own.count)
    }

    @Test func samplesAreParsedStrictly() {
        #expect(MetricsMerge.parseSample("a_total{x=\"1\",y=\"two \\\"q\\\"\"} 12")?.value == 12)
        for bad in ["a_total", "a_total 1.5", "1a 1", "a{} 1 ", "a{x=\"1\",} 1", "a{:x=\"1\"} 1", "a_total  1", "a{x=\"1\"}1"] {
            #expect(MetricsMerge.parseSample(Substring(bad)) == nil, "\(bad)")
        }
    }
}
