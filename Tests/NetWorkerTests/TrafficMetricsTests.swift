@testable import Mesh
import Testing
@testable import NetWorker

/// Istio's TCP metrics: the traffic labels in upstream's order with `unknown` for missing values,
/// Prometheus escaping, and the counters a finished connection adds.
@Suite struct TrafficMetricsTests {
    @Test func labelsAreInUpstreamOrderWithUnknownForMissing() {
        var destination = Workload(uid: "u", namespace: "shop")
        destination.workloadName = "cart"
        destination.canonicalName = "cart"
        destination.canonicalRevision = "v2"
        destination.clusterId = "c1"
        let labels = TrafficMetrics.Labels(reporter: "destination", source: nil, sourcePrincipal: "spiffe://td/ns/a/sa/b",
                                           destination: destination, service: nil, destinationPrincipal: nil,
                                           responseFlags: "-", isMutualTLS: true)
        #expect(labels.values.count == TrafficMetrics.Labels.names.count)
        #expect(labels.rendered.hasPrefix("{reporter=\"destination\",source_workload=\"unknown\","))
        #expect(labels.rendered.contains("source_principal=\"spiffe://td/ns/a/sa/b\""))
        #expect(labels.rendered.contains("destination_workload=\"cart\",destination_canonical_service=\"cart\","
                                         + "destination_canonical_revision=\"v2\",destination_workload_namespace=\"shop\""))
        #expect(labels.rendered.contains("request_protocol=\"tcp\",response_flags=\"-\",connection_security_policy=\"mutual_tls\""))
        #expect(labels.rendered.hasSuffix("destination_region=\"unknown\",destination_zone=\"unknown\"}"))
    }

    @Test func valuesAreEscaped() {
        #expect(TrafficMetrics.Labels.escape("a\"b\\c\nd") == "a\\\"b\\\\c\\nd")
    }

    @Test func aFinishedConnectionIsCountedOnce() {
        let metrics = TrafficMetrics()
        let labels = TrafficMetrics.Labels(reporter: "source", source: nil, sourcePrincipal: nil, destination: nil, service: nil,
                                           destinationPrincipal: nil, responseFlags: "-", isMutualTLS: false)
        let record = ConnectionRecord(metrics: metrics, labels: labels, direction: "outbound", fields: [])
        record.received = 10
        record.sent = 20
        record.finish(error: "connect failed", responseFlags: "CONNECT")
        record.finish()
        let lines = metrics.metricLines()
        #expect(lines.contains { $0.hasPrefix("istio_tcp_connections_opened_total{") && $0.hasSuffix(" 1") })
        #expect(lines.contains { $0.hasPrefix("istio_tcp_connections_closed_total{") && $0.contains("response_flags=\"CONNECT\"") && $0.hasSuffix(" 1") })
        #expect(lines.contains { $0.hasPrefix("istio_tcp_connections_failed_total{") && $0.hasSuffix(" 1") })
        #expect(lines.contains { $0.hasPrefix("istio_tcp_received_bytes_total{") && $0.hasSuffix(" 10") })
        #expect(lines.contains { $0.hasPrefix("istio_tcp_sent_bytes_total{") && $0.hasSuffix(" 20") })
    }
}
