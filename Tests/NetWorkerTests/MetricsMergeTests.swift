import Testing
@testable import NetWorker

/// Summing the NetWorkers' counters for one scrape: the same series adds up, comments appear
/// once, and a peer's lines that are not samples of our shape are dropped.
@Suite struct MetricsMergeTests {
    @Test func theSameSeriesIsSummedAndCommentsKeptOnce() {
        let own = ["# TYPE istio_tcp_connections_opened counter",
                   "istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"a b\"} 3"]
        let peer = Array(("# TYPE istio_tcp_connections_opened counter\n"
                          + "istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"a b\"} 4\n"
                          + "istio_tcp_connections_opened_total{reporter=\"destination\"} 1\n").utf8)
        #expect(MetricsMerge.merge(own: own, peers: [peer]) == [
            "# TYPE istio_tcp_connections_opened counter",
            "istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"a b\"} 7",
            "istio_tcp_connections_opened_total{reporter=\"destination\"} 1",
        ])
    }

    @Test func aPeersMalformedLinesAreDropped() {
        let peer = Array(("ok_total 1\nno-value\nbad name 2\nneg_total -1\n{x} 3\nspace_total  \nx_total{a=\"1\" 4\n"
                          + "big_total 18446744073709551615\n").utf8)
        let merged = MetricsMerge.merge(own: ["big_total 1"], peers: [peer])
        #expect(merged == ["big_total 0", "ok_total 1"])  // a counter sum wraps rather than trapping
        #expect(MetricsMerge.merge(own: [], peers: [[0xff, 0xfe, 0x0a]]).isEmpty)
    }
}
