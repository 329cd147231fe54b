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
    /// on `network`. Nil when it names no namespace. Values are the peer's words and only label
    /// metrics and logs (the source's identity is its certificate's, never this): the first 16
    /// items are read, and a value is kept only when it is 1 to 253 bytes of what Kubernetes
    /// names, labels and regions are made of (ASCII letters, digits, `-`, `.`, `_`), so none
    /// can carry a space, a quote or a control character into a log line or a label.
    public init?(baggage: String, network: String) {
        self.init(uid: "", namespace: "")
        self.network = network
        var locality = Locality()
        for item in baggage.split(separator: ",", omittingEmptySubsequences: true).prefix(16) {
            guard let equals = item.firstIndex(of: "=") else { continue }
            let key = Self.trimmed(item[..<equals]), raw = Self.trimmed(item[item.index(after: equals)...])
            guard Self.isName(raw) else { continue }
            let value = String(raw)
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

    /// 1 to 253 bytes of ASCII letters, digits, `-`, `.` and `_`.
    static func isName(_ text: Substring) -> Bool {
        let bytes = text.utf8
        return !bytes.isEmpty && bytes.count <= 253 && bytes.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte | 0x20 >= 0x61 && byte | 0x20 <= 0x7a) || byte == 0x2d || byte == 0x2e || byte == 0x5f
        }
    }

    private static func trimmed(_ text: Substring) -> Substring {
        var text = text
        while text.first == " " { text.removeFirst() }
        while text.last == " " { text.removeLast() }
        return text
    }
}
