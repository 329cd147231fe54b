import Mesh
import Shared

/// The DNS proxy's counters (ISTIO_COMPAT §15.1): queries answered here, queries forwarded,
/// forwards that failed, and how long each forward took (a histogram), by query type, protocol
/// and the source's canonical service and revision. One registry per NetWorker, summed across
/// NetWorkers like the TCP families (the histogram's sum in exact nanoseconds).
final class DNSMetrics: @unchecked Sendable {
    struct Labels: Hashable {
        var queryType: String
        var udp: Bool
        var canonicalService: String
        var canonicalRevision: String

        var rendered: String {
            "{request_query_type=\"\(queryType)\",request_protocol=\"\(udp ? "udp" : "tcp")\","
                + "source_canonical_service=\"\(TrafficMetrics.Labels.escape(canonicalService))\","
                + "source_canonical_revision=\"\(TrafficMetrics.Labels.escape(canonicalRevision))\"}"
        }
    }

    private struct Counters {
        var answered: UInt64 = 0
        var forwarded: UInt64 = 0
        var failed: UInt64 = 0
        /// Forwards per duration bucket (not cumulative), then their count and total time.
        var durations = [UInt64](repeating: 0, count: DNSMetrics.bucketBounds.count)
        var durationCount: UInt64 = 0
        var durationNanos: UInt64 = 0
    }

    /// Upstream's buckets for `istio_dns_upstream_request_duration_seconds`, as written, and in
    /// nanoseconds.
    static let bucketBounds: [(text: String, nanos: UInt64)] = [
        ("0.0005", 500_000), ("0.001", 1_000_000), ("0.01", 10_000_000), ("0.1", 100_000_000),
        ("1", 1_000_000_000), ("5", 5_000_000_000),
    ]

    /// Distinct label sets kept at most (query types are 16 bits a pod chooses).
    static let maxLabelSets = 1_000
    private let counters = LabeledCounters<Labels, Counters>(maxLabelSets: DNSMetrics.maxLabelSets, empty: Counters()) { $0.rendered }
    /// In in-pod mode (where the DNS proxy runs) the families are listed even before any query,
    /// so a scrape landing here sums what other NetWorkers counted.
    private let enabled: Bool

    init(enabled: Bool) { self.enabled = enabled }

    /// Upstream's names for the common types, lower-case; others by number.
    static func typeName(_ type: UInt16) -> String {
        switch type {
        case 1: return "a"
        case 2: return "ns"
        case 5: return "cname"
        case 6: return "soa"
        case 12: return "ptr"
        case 15: return "mx"
        case 16: return "txt"
        case 28: return "aaaa"
        case 33: return "srv"
        case 65: return "https"
        case 255: return "any"
        default: return "type\(type)"
        }
    }

    func answered(_ labels: Labels) { counters.update(labels) { $0.answered += 1 } }

    /// A forward done (or failed) after `nanoseconds`.
    func forwarded(_ labels: Labels, failed: Bool, nanoseconds: UInt64) {
        counters.update(labels) {
            $0.forwarded += 1
            if failed { $0.failed += 1 }
            if let bucket = Self.bucketBounds.firstIndex(where: { nanoseconds <= $0.nanos }) { $0.durations[bucket] += 1 }
            $0.durationCount += 1
            $0.durationNanos &+= nanoseconds
        }
    }

    func metricLines() -> [String] {
        guard enabled else { return [] }
        let name = "istio_dns_upstream_request_duration_seconds"
        var lines = counters.lines([
            ("istio_dns_requests", "Total number of DNS requests.", { $0.answered }),
            ("istio_dns_upstream_requests", "Total number of DNS requests forwarded to upstream.", { $0.forwarded }),
            ("istio_dns_upstream_failures", "Total number of DNS failures forwarding upstream.", { $0.failed }),
        ])
        lines += ["# HELP \(name) Total time in seconds taken to forward DNS requests upstream.", "# TYPE \(name) histogram"]
        for (rendered, counters) in counters.snapshot() {
            // `{labels}` with `le` added last.
            let open = String(rendered.dropLast())
            var cumulative: UInt64 = 0
            for (index, bound) in Self.bucketBounds.enumerated() {
                cumulative += counters.durations[index]
                lines.append("\(name)_bucket\(open),le=\"\(bound.text)\"} \(cumulative)")
            }
            lines.append("\(name)_bucket\(open),le=\"+Inf\"} \(counters.durationCount)")
            lines.append("\(name)_sum\(rendered) \(MetricsMerge.seconds(nanoseconds: counters.durationNanos))")
            lines.append("\(name)_count\(rendered) \(counters.durationCount)")
        }
        return lines
    }
}

/// Workloads known by hostname only, resolved when a connection goes to them (ISTIO_COMPAT §9
/// step 6), counted as upstream's `istio_on_demand_dns_total`: by source workload and hostname.
/// The family is always listed, so a scrape landing on any NetWorker sums all of them.
final class HostnameResolver: @unchecked Sendable {
    /// The rendered label set: the source labels of the TCP families (§15.2, the same values),
    /// then the hostname.
    static func labels(source: Workload?, hostname: String) -> String {
        let traffic = TrafficMetrics.Labels(reporter: "", source: source, sourcePrincipal: source?.identity, destination: nil, service: nil,
                                            destinationPrincipal: nil, responseFlags: "", isMutualTLS: false)
        let sources = TrafficMetrics.Labels.names.indices.filter { TrafficMetrics.Labels.names[$0].hasPrefix("source_") }.prefix(8)
        let pairs = sources.map { (TrafficMetrics.Labels.names[$0], traffic.values[$0]) } + [("hostname", hostname)]
        return "{" + pairs.map { "\($0.0)=\"\(TrafficMetrics.Labels.escape($0.1))\"" }.joined(separator: ",") + "}"
    }

    private let counters = LabeledCounters<String, UInt64>(maxLabelSets: 1_000, empty: 0) { $0 }

    func counted(_ pending: OutboundRouting.PendingName) {
        counters.update(Self.labels(source: pending.target.source, hostname: pending.hostname)) { $0 += 1 }
    }

    func metricLines() -> [String] {
        counters.lines([("istio_on_demand_dns", "Number of DNS lookups made on demand for workloads known by hostname.", { $0 })])
    }
}
