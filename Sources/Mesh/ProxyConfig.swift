// Istio's ProxyConfig as real ztunnel reads it (ISTIO_COMPAT §18): the `PROXY_CONFIG` environment
// variable (YAML or JSON) merged over the `defaultConfig` of the mesh file
// (`./etc/istio/config/mesh`). Of the many ProxyConfig fields ztunnel uses five; the others
// (tracing, drainDuration, ...) belong to Envoy sidecars and are ignored, as upstream ignores them.
// The Supervisor reads both before it resolves its configuration: they set defaults for settings
// that the environment and flags leave unset.

/// The fields of a ProxyConfig that ztunnel reads. Every field is optional: unset leaves the
/// setting it feeds to the environment or its default.
public struct ProxyConfig: Equatable, Sendable {
    /// istiod's xDS address (XDS_ADDRESS when that is unset). "" turns xDS off, as upstream.
    public var discoveryAddress: String?
    /// The admin port (15000).
    public var proxyAdminPort: Int?
    /// The stats port (15020).
    public var statsPort: Int?
    /// Data-plane threads (ZTUNNEL_WORKER_THREADS when that is unset); 0 = one per CPU.
    public var concurrency: Int?
    /// Node metadata for istiod, keys with any `ISTIO_META_` prefix stripped, in document order
    /// (unique keys). `DNS_CAPTURE` here switches the pods' DNS proxy, as upstream.
    public var proxyMetadata: [(key: String, value: String)] = []

    public init() {}

    public static func == (lhs: ProxyConfig, rhs: ProxyConfig) -> Bool {
        lhs.discoveryAddress == rhs.discoveryAddress && lhs.proxyAdminPort == rhs.proxyAdminPort
            && lhs.statsPort == rhs.statsPort && lhs.concurrency == rhs.concurrency
            && lhs.proxyMetadata.elementsEqual(rhs.proxyMetadata) { $0.key == $1.key && $0.value == $1.value }
    }

    /// Why a document was refused, prefixed with where it came from:
    /// `PROXY_CONFIG: proxyAdminPort: expected a port 1-65535, got "0" (line 1)`.
    public struct ParseError: Error, CustomStringConvertible, Sendable {
        public let description: String
        /// The line the YAML reader refused, when it was the reader (not a field's check).
        var readerLine: Int? = nil
    }

    static let metadataPrefix = "ISTIO_META_"
    /// Upstream's types: ports and concurrency are u16.
    static let portRange = 1...65535
    static let concurrencyRange = 0...65535

    /// `PROXY_CONFIG`: a ProxyConfig document. Empty (or only comments) is no ProxyConfig.
    public static func parse(_ text: String, origin: String = "PROXY_CONFIG") throws -> ProxyConfig? {
        guard let root = try document(text, origin: origin) else { return nil }
        return try ProxyConfig(root, path: "", origin: origin)
    }

    /// The mesh file: a MeshConfig document whose `defaultConfig` is a ProxyConfig. Its other
    /// keys (trustDomain, defaultProviders, ...) are not ztunnel's and are ignored. The reader is
    /// a strict YAML subset; when it refuses the file at a line outside the top-level
    /// `defaultConfig:` block (a PEM block scalar in caCertificates, an anchor in
    /// extensionProviders), that block is read alone, and `skipped` says why (for the caller to
    /// log). A refusal inside the block, a file with two such blocks or several documents, is an
    /// error.
    public static func parseMeshConfig(_ text: String, origin: String) throws -> (config: ProxyConfig?, skipped: String?) {
        let root: YAMLNode?
        var skipped: String?
        do {
            root = try document(text, origin: origin)
        } catch let error as ParseError {
            guard let line = error.readerLine, let section = defaultConfigSection(text), !section.lines.contains(line) else {
                throw error
            }
            skipped = error.description
            root = try document(section.text, origin: origin)
        }
        guard let root, let node = root["defaultConfig"], !node.isNull else { return (nil, skipped) }
        return (try ProxyConfig(node, path: "defaultConfig.", origin: origin), skipped)
    }

    /// The top-level `defaultConfig:` entry alone: its key line and every following line that is
    /// indented, blank or a comment, up to the next top-level line; every other line blanked, so
    /// line numbers stay the file's. `lines` is its 1-based range. Nil when there is no such
    /// entry, or two, or a document marker past the first line (several documents).
    static func defaultConfigSection(_ text: String) -> (text: String, lines: ClosedRange<Int>)? {
        var body = Substring(text)
        if body.hasPrefix("\u{FEFF}") { body = body.dropFirst() }
        // "\r\n" is one Character in Swift, a newline like "\n".
        let lines = body.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline)
        var start: Int?
        var end = lines.count
        var sawContent = false
        for (index, line) in lines.enumerated() {
            let trimmed = line.drop { $0 == " " || $0 == "\t" }
            guard let first = line.first, first != " ", first != "\t", !trimmed.hasPrefix("#") else { continue }
            if line.hasPrefix("---") || line.hasPrefix("...") {
                if sawContent { return nil }
                continue
            }
            sawContent = true
            if start != nil && end == lines.count { end = index }
            if line.hasPrefix("defaultConfig:") || line.hasPrefix("\"defaultConfig\":") || line.hasPrefix("'defaultConfig':") {
                if start != nil { return nil }
                start = index
            }
        }
        guard let start else { return nil }
        let kept = lines.enumerated().map { index, line in (start..<end).contains(index) ? line : "" }
        return (kept.joined(separator: "\n") + "\n", (start + 1)...end)
    }

    private static func document(_ text: String, origin: String) throws -> YAMLNode? {
        let root: YAMLNode?
        do { root = try YAMLReader.parse(text) } catch {
            throw ParseError(description: "\(origin): \(error)", readerLine: (error as? YAMLError)?.line)
        }
        guard let root, !root.isNull else { return nil }
        guard root.tag == nil, root.mappingEntries != nil else {
            throw ParseError(description: "\(origin): the top level must be a mapping, got \(root.kindName) (line \(root.line))")
        }
        return root
    }

    private init(_ node: YAMLNode, path: String, origin: String) throws {
        func failure(_ field: String, _ reason: String, _ line: Int) -> ParseError {
            ParseError(description: "\(origin): \(path)\(field): \(reason) (line \(line))")
        }
        guard node.tag == nil, let entries = node.mappingEntries else {
            throw ParseError(description: "\(origin): \(path.isEmpty ? "the top level" : String(path.dropLast())) "
                             + "must be a mapping, got \(node.kindName) (line \(node.line))")
        }
        func scalar(_ entry: YAMLNode.Entry) throws -> String? {
            if entry.value.isNull { return nil }
            guard entry.value.tag == nil, let text = entry.value.scalarText else {
                throw failure(entry.key, "expected a scalar, got \(entry.value.kindName)", entry.line)
            }
            return text
        }
        func number(_ entry: YAMLNode.Entry, _ range: ClosedRange<Int>, _ what: String) throws -> Int? {
            guard let text = try scalar(entry) else { return nil }
            guard let value = Int(text), range.contains(value) else {
                throw failure(entry.key, "expected \(what) \(range.lowerBound)-\(range.upperBound), got \(YAMLError.quote(text))", entry.line)
            }
            return value
        }
        for entry in entries {
            switch entry.key {
            case "discoveryAddress": discoveryAddress = try scalar(entry)
            case "proxyAdminPort": proxyAdminPort = try number(entry, Self.portRange, "a port")
            case "statsPort": statsPort = try number(entry, Self.portRange, "a port")
            case "concurrency": concurrency = try number(entry, Self.concurrencyRange, "a thread count")
            case "proxyMetadata":
                if entry.value.isNull { continue }
                guard entry.value.tag == nil, let items = entry.value.mappingEntries else {
                    throw failure(entry.key, "expected a mapping of names to values, got \(entry.value.kindName)", entry.line)
                }
                for item in items {
                    // Upstream reads the values as strings: any scalar's text; null is "".
                    let value: String
                    if item.value.isNull {
                        value = ""
                    } else if item.value.tag == nil, let text = item.value.scalarText {
                        value = text
                    } else {
                        throw failure("proxyMetadata.\(item.key)", "expected a scalar, got \(item.value.kindName)", item.line)
                    }
                    let key = item.key.hasPrefix(Self.metadataPrefix) ? String(item.key.dropFirst(Self.metadataPrefix.count)) : item.key
                    guard !key.isEmpty else {
                        throw failure("proxyMetadata.\(item.key)", "a name is needed after \(Self.metadataPrefix)", item.line)
                    }
                    // ISTIO_META_FOO and FOO name the same metadata: the later one wins.
                    if let index = proxyMetadata.firstIndex(where: { $0.key == key }) {
                        proxyMetadata[index].value = value
                    } else {
                        proxyMetadata.append((key, value))
                    }
                }
            default:
                continue  // An Envoy sidecar's field: not ztunnel's.
            }
        }
    }
}
