import Mesh
import Shared

/// Istio's TCP metrics (ISTIO_COMPAT §15.1-15.2) with the traffic labels in upstream's order, and
/// the access-log line of each finished connection (§15.3). One registry per NetWorker, shared
/// by its event loops.
final class TrafficMetrics: @unchecked Sendable {
    /// The traffic labels of §15.2, in the order upstream emits them; missing values are `unknown`.
    struct Labels: Hashable {
        var values: [String]

        static let names = [
            "reporter", "source_workload", "source_canonical_service", "source_canonical_revision", "source_workload_namespace",
            "source_principal", "source_app", "source_version", "source_cluster", "destination_service",
            "destination_service_namespace", "destination_service_name", "destination_workload", "destination_canonical_service",
            "destination_canonical_revision", "destination_workload_namespace", "destination_principal", "destination_app",
            "destination_version", "destination_cluster", "request_protocol", "response_flags", "connection_security_policy",
            "source_region", "source_zone", "destination_region", "destination_zone",
        ]

        init(reporter: String, source: Workload?, sourcePrincipal: String?, destination: Workload?, service: Service?,
             destinationPrincipal: String?, responseFlags: String, isMutualTLS: Bool) {
            func or(_ value: String?) -> String { (value?.isEmpty ?? true) ? "unknown" : (value ?? "unknown") }
            values = [
                reporter, or(source?.workloadName), or(source?.canonicalName), or(source?.canonicalRevision), or(source?.namespace),
                or(sourcePrincipal), or(source?.canonicalName), or(source?.canonicalRevision), or(source?.clusterId),
                or(service?.hostname), or(service?.namespace), or(service?.name), or(destination?.workloadName),
                or(destination?.canonicalName), or(destination?.canonicalRevision), or(destination?.namespace),
                or(destinationPrincipal), or(destination?.canonicalName), or(destination?.canonicalRevision),
                or(destination?.clusterId), "tcp", responseFlags, isMutualTLS ? "mutual_tls" : "unknown",
                or(source?.locality?.region), or(source?.locality?.zone), or(destination?.locality?.region),
                or(destination?.locality?.zone),
            ]
        }

        /// `{reporter="destination",...}` with Prometheus escaping.
        var rendered: String {
            "{" + zip(Self.names, values).map { "\($0)=\"\(Self.escape($1))\"" }.joined(separator: ",") + "}"
        }

        static func escape(_ value: String) -> String {
            var out = ""
            for character in value {
                switch character {
                case "\\": out += "\\\\"
                case "\"": out += "\\\""
                case "\n": out += "\\n"
                default: out.append(character)
                }
            }
            return out
        }
    }

    private struct Counters {
        var opened: UInt64 = 0
        var closed: UInt64 = 0
        var failed: UInt64 = 0
        var received: UInt64 = 0
        var sent: UInt64 = 0
    }

    /// Distinct label sets kept at most; past it new ones are not counted (a bound on what a
    /// stream of distinct peers can make this process hold).
    static let maxLabelSets = 10_000
    private let counters = LabeledCounters<Labels, Counters>(maxLabelSets: TrafficMetrics.maxLabelSets, empty: Counters()) { $0.rendered }

    func opened(_ labels: Labels) { counters.update(labels) { $0.opened += 1 } }

    func closed(_ labels: Labels, received: UInt64, sent: UInt64, failed: Bool) {
        counters.update(labels) {
            $0.closed += 1
            $0.received += received
            $0.sent += sent
            if failed { $0.failed += 1 }
        }
    }

    /// The families of §15.1 this NetWorker reports.
    func metricLines() -> [String] {
        counters.lines([
            ("istio_tcp_connections_opened", "The number of TCP connections opened.", { $0.opened }),
            ("istio_tcp_connections_closed", "The number of TCP connections closed.", { $0.closed }),
            ("istio_tcp_connections_failed", "The number of TCP connections that failed.", { $0.failed }),
            ("istio_tcp_received_bytes", "The size of total bytes received during request in case of a TCP connection.", { $0.received }),
            ("istio_tcp_sent_bytes", "The size of total bytes sent during response in case of a TCP connection.", { $0.sent }),
        ])
    }
}

/// One connection (or HBONE stream) from open to close: its labels, byte counts both ways and
/// the fields of its access-log line. Bytes are counted on the connection's event loop; the
/// record is finished once.
final class ConnectionRecord: @unchecked Sendable {
    let metrics: TrafficMetrics
    var labels: TrafficMetrics.Labels
    let fields: [(String, String)]
    let direction: String
    let start = Clock.monotonicMilliseconds()
    /// Client → server, and server → client.
    var received: UInt64 = 0
    var sent: UInt64 = 0
    private var isFinished = false

    init(metrics: TrafficMetrics, labels: TrafficMetrics.Labels, direction: String, fields: [(String, String)]) {
        self.metrics = metrics
        self.labels = labels
        self.direction = direction
        self.fields = fields
        metrics.opened(labels)
    }

    /// Counts the connection closed and writes its `connection complete` line; `error` (and the
    /// response flag) when it failed. Later calls do nothing.
    func finish(error: String? = nil, responseFlags: String? = nil) {
        guard !isFinished else { return }
        isFinished = true
        if let responseFlags { labels.values[21] = responseFlags }
        metrics.closed(labels, received: received, sent: sent, failed: error != nil)
        var line = fields + [("direction", direction)]
        // Upstream logs bytes from the client's view on outbound, the server's on inbound.
        let (bytesSent, bytesReceived) = direction == "inbound" ? (sent, received) : (received, sent)
        line += [("bytes_sent", "\(bytesSent)"), ("bytes_recv", "\(bytesReceived)"),
                 ("duration", "\(Clock.monotonicMilliseconds() - start)ms")]
        if let error { line.append(("error", error)) }
        Log.access(error == nil ? .info : .error, "connection complete", line)
    }
}
