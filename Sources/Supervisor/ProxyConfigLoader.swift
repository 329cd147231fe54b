import Mesh
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// PROXY_CONFIG and the mesh file, read as upstream reads them (ISTIO_COMPAT §18) before the
/// configuration is resolved: each field they set becomes the value of a setting the environment
/// leaves unset (`Configuration.Fallback`), so the environment and flags still win and every
/// value goes through the same checks as if it had been set directly.
enum ProxyConfigLoader {
    /// Relative to the working directory (`/` in the pod), as upstream opens it.
    static let meshConfigPath = "./etc/istio/config/mesh"
    /// The mesh ConfigMap is small; the YAML reader's own bound is 1 MiB.
    static let meshConfigLimit = 1 << 20

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// The settings PROXY_CONFIG (from `environment`) and the mesh file's defaultConfig give
    /// values to, PROXY_CONFIG's fields over the file's. A missing mesh file is none; an
    /// unreadable one, or either document refused, is an error naming it.
    static func fallbacks(environment: [String: String], arguments: [String] = [],
                          meshPath: String = meshConfigPath) throws -> [String: Configuration.Fallback] {
        var result: [String: Configuration.Fallback] = [:]
        if let mesh = try meshConfig(at: meshPath) {
            result.merge(fallbacks(from: mesh, source: "defaultConfig of \(meshPath)")) { $1 }
        }
        if let text = flagValue("--proxy-config", in: arguments) ?? environment["PROXY_CONFIG"], !text.isEmpty {
            let parsed: ProxyConfig?
            do { parsed = try ProxyConfig.parse(text) } catch { throw Failure(description: "invalid \(error)") }
            if let parsed { result.merge(fallbacks(from: parsed, source: "PROXY_CONFIG")) { $1 } }
        }
        return result
    }

    /// The value of `flag` as `Configuration` reads flags (the last wins), or nil; flags that do
    /// not parse are left for `Configuration` to refuse.
    static func flagValue(_ flag: String, in arguments: [String]) -> String? {
        (try? Configuration.flags(in: arguments))?.last { $0.setting.flag == flag }?.value
    }

    static func meshConfig(at path: String) throws -> ProxyConfig? {
        let bytes: [UInt8]
        do { bytes = try Syscall.readFile(path, limit: meshConfigLimit, regularOnly: true) } catch let error as SyscallError {
            if error.errno == ENOENT { return nil }
            throw Failure(description: "cannot read the mesh config \(path): \(error)")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw Failure(description: "invalid mesh config \(path): not UTF-8")
        }
        do {
            let (config, skipped) = try ProxyConfig.parseMeshConfig(text, origin: path)
            if let skipped {
                Log.info("the mesh config holds YAML this reader does not take outside defaultConfig; read defaultConfig alone",
                         [("path", path), ("reason", skipped)])
            }
            return config
        } catch {
            throw Failure(description: "invalid mesh config \(error)")
        }
    }

    /// Metadata keys that name a setting upstream reads from the environment alone: the cluster id
    /// goes to the CA and istiod, and a mesh-wide value must not change it.
    static let environmentOnly: Set<String> = ["CLUSTER_ID"]

    /// One ProxyConfig as setting values: discoveryAddress is XDS_ADDRESS (not CA_ADDRESS, as
    /// upstream), the ports move the admin listener (loopback) and the stats listener (wildcard),
    /// concurrency sizes the threads, and each metadata key K is ISTIO_META_K.
    static func fallbacks(from config: ProxyConfig, source: String) -> [String: Configuration.Fallback] {
        var result: [String: Configuration.Fallback] = [:]
        func set(_ name: String, _ value: String, _ field: String) {
            result[name] = Configuration.Fallback(value, source: "\(source) \(field)")
        }
        if let address = config.discoveryAddress { set("XDS_ADDRESS", address, "discoveryAddress") }
        if let port = config.proxyAdminPort { set("ZTUNNEL_ADMIN_ADDR", "127.0.0.1:\(port)", "proxyAdminPort") }
        if let port = config.statsPort { set("ZTUNNEL_STATS_ADDR", "wildcard:\(port)", "statsPort") }
        if let threads = config.concurrency { set("ZTUNNEL_WORKER_THREADS", "\(threads)", "concurrency") }
        for (key, value) in config.proxyMetadata where !environmentOnly.contains(key) {
            set("ISTIO_META_\(key)", value, "proxyMetadata.\(key)")
        }
        for key in config.proxyMetadata.map(\.key) where environmentOnly.contains(key) {
            Log.info("proxyMetadata.\(key) is not applied: ztunnel's cluster id comes from the environment (ISTIO_META_CLUSTER_ID), as upstream",
                     [("source", source)])
        }
        return result
    }
}
