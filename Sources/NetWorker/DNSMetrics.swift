import Shared

/// The DNS proxy's counters (ISTIO_COMPAT §15.1): queries answered here, queries forwarded, and
/// forwards that failed, by query type, protocol and the source's canonical service and revision.
/// One registry per NetWorker, summed across NetWorkers like the TCP families. Not yet: the
/// forward-duration histogram (the cross-NetWorker merge takes integer counters only).
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
    }

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

    func forwarded(_ labels: Labels, failed: Bool) {
        counters.update(labels) {
            $0.forwarded += 1
            if failed { $0.failed += 1 }
        }
    }

    func metricLines() -> [String] {
        guard enabled else { return [] }
        return counters.lines([
            ("istio_dns_requests", "Total number of DNS requests.", { $0.answered }),
            ("istio_dns_upstream_requests", "Total number of DNS requests forwarded to upstream.", { $0.forwarded }),
            ("istio_dns_upstream_failures", "Total number of DNS failures forwarding upstream.", { $0.failed }),
        ])
    }
}
