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
        for bad in ["a_total", "1a 1", "a{} 1 ", "a{x=\"1\",} 1", "a{:x=\"1\"} 1", "a_total  1", "a{x=\"1\"}1",
                    "a 1.", "a .5", "a 1.1234567890", "a 1.5.5", "a -1", "a 1e3", "a 0x10"] {
            #expect(MetricsMerge.parseSample(Substring(bad)) == nil, "\(bad)")
        }
        let decimal = MetricsMerge.parseSample("a_sum 12.0005")
        #expect(decimal?.value == 12 && decimal?.nanos == 500_000)
    }

    /// A histogram (the DNS forward durations): buckets and counts add as integers, the sum in
    /// exact billionths with the carry into seconds.
    @Test func histogramFamiliesAreSummedWithTheirDecimalSum() {
        let own = ["# TYPE h_seconds histogram", "h_seconds_bucket{p=\"udp\",le=\"0.001\"} 1", "h_seconds_bucket{p=\"udp\",le=\"+Inf\"} 2",
                   "h_seconds_sum{p=\"udp\"} 0.600000000", "h_seconds_count{p=\"udp\"} 2"]
        let peer = Array(("h_seconds_bucket{p=\"udp\",le=\"0.001\"} 3\nh_seconds_bucket{p=\"udp\",le=\"+Inf\"} 4\n"
                          + "h_seconds_sum{p=\"udp\"} 0.4000005\nh_seconds_count{p=\"udp\"} 4\nh_seconds_total 9\n").utf8)
        #expect(MetricsMerge.merge(own: own, peers: [peer]) == [
            "# TYPE h_seconds histogram", "h_seconds_bucket{p=\"udp\",le=\"0.001\"} 4", "h_seconds_bucket{p=\"udp\",le=\"+Inf\"} 6",
            "h_seconds_sum{p=\"udp\"} 1.000000500", "h_seconds_count{p=\"udp\"} 6",
        ])
    }

    @Test func theDNSForwardHistogramCountsEachForwardInItsBucket() {
        let metrics = DNSMetrics(enabled: true)
        let labels = DNSMetrics.Labels(queryType: "a", udp: true, canonicalService: "c", canonicalRevision: "v")
        metrics.forwarded(labels, failed: false, nanoseconds: 700_000)
        metrics.forwarded(labels, failed: true, nanoseconds: 6_000_000_000)
        let rendered = "request_query_type=\"a\",request_protocol=\"udp\",source_canonical_service=\"c\",source_canonical_revision=\"v\""
        let name = "istio_dns_upstream_request_duration_seconds"
        let lines = metrics.metricLines()
        #expect(lines.contains("# TYPE \(name) histogram"))
        #expect(lines.filter { $0.hasPrefix(name + "_") } == [
            "\(name)_bucket{\(rendered),le=\"0.0005\"} 0", "\(name)_bucket{\(rendered),le=\"0.001\"} 1",
            "\(name)_bucket{\(rendered),le=\"0.01\"} 1", "\(name)_bucket{\(rendered),le=\"0.1\"} 1",
            "\(name)_bucket{\(rendered),le=\"1\"} 1", "\(name)_bucket{\(rendered),le=\"5\"} 1",
            "\(name)_bucket{\(rendered),le=\"+Inf\"} 2", "\(name)_sum{\(rendered)} 6.000700000", "\(name)_count{\(rendered)} 2",
        ])
        #expect(lines.contains("istio_dns_upstream_failures_total{\(rendered)} 1"))
    }
}
