/// The W3C-baggage-style `baggage` header of HBONE (ISTIO_COMPAT §5.3, §5.6, §10): a workload's
/// metadata written on CONNECTs and 200s, and read back for a client on another network.
extension Workload {
    /// Empty items left out, comma-joined without spaces.
    public var baggage: String {
        let items: [(String, String)] = [
            ("k8s.cluster.name", clusterId), ("k8s.namespace.name", namespace),
            ("k8s.\(workloadType.rawValue).name", workloadName), ("service.name", canonicalName),
            ("service.version", canonicalRevision), ("cloud.region", locality?.region ?? ""),
            ("cloud.availability_zone", locality?.zone ?? ""),
        ]
        return items.filter { !$0.1.isEmpty }.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
    }

    /// The source a `baggage` header describes (the items `baggage` writes; others are ignored),
    /// on `network`. Nil when it names no namespace. Values are the peer's words: the first 16
    /// items are read, at most 253 bytes of each value are kept, and they only label metrics
    /// and logs (the source's identity is its certificate's, never this).
    public init?(baggage: String, network: String) {
        self.init(uid: "", namespace: "")
        self.network = network
        var locality = Locality()
        for item in baggage.split(separator: ",", omittingEmptySubsequences: true).prefix(16) {
            guard let equals = item.firstIndex(of: "=") else { continue }
            let key = Self.trimmed(item[..<equals]), value = String(Self.trimmed(Self.trimmed(item[item.index(after: equals)...]).prefix(253)))
            switch key {
            case "k8s.cluster.name": clusterId = value
            case "k8s.namespace.name": namespace = value
            case "service.name": canonicalName = value
            case "service.version": canonicalRevision = value
            case "cloud.region": locality.region = value
            case "cloud.availability_zone": locality.zone = value
            default:
                if key.hasPrefix("k8s."), key.hasSuffix(".name"), key.count > 9,
                   let kind = Kind(rawValue: String(key.dropFirst(4).dropLast(5))) {
                    workloadType = kind
                    workloadName = value
                    name = value
                }
            }
        }
        guard !namespace.isEmpty else { return nil }
        if locality != Locality() { self.locality = locality }
    }

    private static func trimmed(_ text: Substring) -> Substring {
        var text = text
        while text.first == " " { text.removeFirst() }
        while text.last == " " { text.removeLast() }
        return text
    }
}
