/// The xDS worker's counters (ISTIO_COMPAT §15: `istio_xds_connection_terminations_total`,
/// `istio_xds_message_total`, `istio_xds_message_bytes_total`), carried worker → Supervisor →
/// NetWorkers, which serve them on /metrics. A fixed shape (the reasons and the two subscribed
/// type URLs), so a compromised worker cannot grow a label set; a response of another type is
/// not counted.
public struct XDSStats: Equatable, Sendable {
    public static let reasons = ["ConnectionError", "Error", "Reconnect", "Complete"]
    public static let typeURLs = ["type.googleapis.com/istio.workload.Address", "type.googleapis.com/istio.security.Authorization"]

    public var terminations = [UInt64](repeating: 0, count: XDSStats.reasons.count)
    public var messages = [UInt64](repeating: 0, count: XDSStats.typeURLs.count)
    public var messageBytes = [UInt64](repeating: 0, count: XDSStats.typeURLs.count)

    public init() {}

    public mutating func countTermination(_ reason: String) {
        if let index = Self.reasons.firstIndex(of: reason) { terminations[index] &+= 1 }
    }

    public mutating func countMessage(typeURL: String, bytes: Int) {
        guard let index = Self.typeURLs.firstIndex(of: typeURL) else { return }
        messages[index] &+= 1
        messageBytes[index] &+= UInt64(bytes)
    }

    /// The sum of two sets (a restarted worker counts from zero; the Supervisor keeps the rest).
    public func adding(_ other: XDSStats) -> XDSStats {
        var sum = self
        for index in terminations.indices { sum.terminations[index] &+= other.terminations[index] }
        for index in messages.indices {
            sum.messages[index] &+= other.messages[index]
            sum.messageBytes[index] &+= other.messageBytes[index]
        }
        return sum
    }

    public func metricLines() -> [String] {
        var lines = ["# HELP istio_xds_connection_terminations Total number of xDS connection terminations.",
                     "# TYPE istio_xds_connection_terminations counter"]
        for (reason, count) in zip(Self.reasons, terminations) {
            lines.append("istio_xds_connection_terminations_total{reason=\"\(reason)\"} \(count)")
        }
        lines += ["# HELP istio_xds_message Total number of xDS messages received.", "# TYPE istio_xds_message counter"]
        for (url, count) in zip(Self.typeURLs, messages) { lines.append("istio_xds_message_total{url=\"\(url)\"} \(count)") }
        lines += ["# HELP istio_xds_message_bytes Total size of xDS resources received, in bytes.",
                  "# TYPE istio_xds_message_bytes counter"]
        for (url, count) in zip(Self.typeURLs, messageBytes) { lines.append("istio_xds_message_bytes_total{url=\"\(url)\"} \(count)") }
        return lines
    }

    func encode(into writer: inout WireWriter) {
        for value in terminations + messages + messageBytes { writer.u64(value) }
    }

    init(from reader: inout WireReader) throws {
        for index in terminations.indices { terminations[index] = try reader.u64("xds stats") }
        for index in messages.indices { messages[index] = try reader.u64("xds stats") }
        for index in messageBytes.indices { messageBytes[index] = try reader.u64("xds stats") }
    }
}
