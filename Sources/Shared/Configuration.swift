/// The daemon's configuration: every setting, with the values in force after environment and
/// flags are read. The Supervisor resolves it once and sends the resolved values to each worker in
/// its setup message; workers never read the environment (theirs is scrubbed).
public struct Configuration: Sendable {
    /// Every setting the daemon reads, in the order `ztunnel --help` lists them.
    public static let settings: [Setting] = [
        Setting("LOCAL_XDS_PATH", .path, default: "",
                "local mode: workloads, services and policies from this file instead of xDS (ISTIO_COMPAT §19)"),
        Setting("INPOD_UDS", .path, default: "",
                "istio-cni's ZDS socket: in-pod mode, listeners in each enrolled pod's network namespace (in Kubernetes, unset = \(Configuration.inPodSocket))"),
        Setting("INPOD_PORT_REUSE", .bool, default: "true", "SO_REUSEPORT on the per-pod listeners (a new ztunnel can bind while the old drains)"),
        Setting("ENABLE_ORIG_SRC", .bool, default: "",
                "in-pod mode: connections to an application leave from the client's address (IP_TRANSPARENT; istio-cni routes the replies back) and the pod listeners are transparent; unset = where the kernel allows, true = a pod whose listeners cannot be made transparent is refused, false = neither"),
        Setting("ZTUNNEL_POD_SOCKET_POOL", .integer(0...64), default: "8",
                "in-pod mode: unconnected sockets each NetWorker keeps ready per pod and family; 0 = one asked for per connection (benchmarks)"),
        Setting("ZTUNNEL_MAX_PODS", .integer(1...1024), default: "1024",
                "in-pod mode: pods enrolled at most; istio-cni's Add for one more is answered with an error"),
        Setting("PACKET_MARK", .integer(1...0x7fff_ffff), default: "1337",
                "SO_MARK on every socket made for a pod, so istio-cni's rules do not capture it again"),
        Setting("TERMINATION_GRACE_PERIOD_SECONDS", .integer(0...86_400), default: "",
                "pod grace period; the drain deadline is s-5 when s>10, else s-1 (minimum 1 s)"),
        Setting("CONNECTION_TERMINATION_DEADLINE", .duration, default: "",
                "drain deadline for live connections; wins over TERMINATION_GRACE_PERIOD_SECONDS (default 5s)"),
        Setting("UNSTABLE_ENABLE_SOCKS5", .choice(["auto", "true", "false"]), default: "auto",
                "SOCKS5 listener; auto = on in local mode"),
        Setting("IPV6_ENABLED", .bool, default: "true",
                "wildcard listeners bind [::] (dual stack) instead of 0.0.0.0"),
        Setting("RUST_LOG", .logDirectives, default: "info",
                "log filter as real ztunnel reads it: a level, or level and target=level items (info,access=debug,ztunnel::xds=trace)"),
        Setting("LOG_FORMAT", .choice(["plain", "json"]), default: "plain", "debug log format"),
        Setting("ZTUNNEL_WORKER_THREADS", .threads, default: "",
                "data-plane threads in all, split among the NetWorkers: a number (0 = one per CPU) or N% of the CPUs; unset = the CPU limit if one is given, else max(CPUs/4, CPU request, 2), as upstream"),
        Setting("ZTUNNEL_CPU_LIMIT", .cpus, default: "", "the CPUs the pod may use (the upstream chart sets it from limits.cpu; 500m counts as 1): caps the CPU count the threads are sized from"),
        Setting("ZTUNNEL_RESOURCE_CPU_LIMIT", .cpus, default: "", "the pod's explicit CPU limit in whole CPUs: that many threads when ZTUNNEL_WORKER_THREADS is unset"),
        Setting("ZTUNNEL_RESOURCE_CPU_REQUEST", .cpus, default: "", "the pod's CPU request in whole CPUs: at least this many threads"),
        Setting("NETWORK", .string, default: "", "this node's network: workloads are found by (network, address)"),
        Setting("CLUSTER_DOMAIN", .string, default: "cluster.local",
                "the cluster's DNS domain: the pods' DNS proxy expands short service names under it"),
        Setting("NODE_NAME", .string, default: "",
                "this node; certificates are prefetched for local-config workloads on it (all HBONE workloads when unset)"),
        Setting("TRUST_DOMAIN", .string, default: "cluster.local", "trust domain of the built-in CA's self-signed root"),
        Setting("SECRET_TTL", .duration, default: "24h", "requested certificate lifetime"),
        Setting("CA_ADDRESS", .string, default: "",
                "Istio CA (istiod) as [https://]host:port; empty = the built-in CA (in Kubernetes, unset = \(Configuration.istiodAddress))"),
        Setting("CA_ROOT_CA", .string, default: "./var/run/secrets/istio/root-cert.pem",
                "trust anchor for the CA connection: a file, inline PEM, or SYSTEM"),
        Setting("AUTH_TOKEN", .string, default: Configuration.defaultTokenPath,
                "bearer token file for the CA (read by the Supervisor, re-read every 10 s), or a literal token",
                isSecret: true),
        Setting("ALT_CA_HOSTNAME", .string, default: "", "the name the CA's certificate is verified against instead of CA_ADDRESS's host"),
        Setting("ISTIO_META_CLUSTER_ID", .string, default: "Kubernetes", "cluster id sent to the CA and istiod"),
        Setting("XDS_ADDRESS", .string, default: "",
                "istiod's delta ADS endpoint as [https://]host:port; empty = no xDS (in Kubernetes, unset = \(Configuration.istiodAddress))"),
        Setting("XDS_ON_DEMAND", .bool, default: "false",
                "fetch Address resources on demand (ISTIO_COMPAT §6.3): none at start, each looked up when a connection needs it"),
        Setting("XDS_ROOT_CA", .string, default: "./var/run/secrets/istio/root-cert.pem",
                "trust anchor for the xDS connection: a file, inline PEM, or SYSTEM"),
        Setting("ALT_XDS_HOSTNAME", .string, default: "", "the name istiod's certificate is verified against instead of XDS_ADDRESS's host"),
        Setting("POD_NAME", .string, default: "", "ztunnel's pod (the xDS node id and metadata)"),
        Setting("ISTIO_META_ISTIO_VERSION", .string, default: "",
                "the Istio version: istio_build's tag and the xDS node's ISTIO_VERSION (istiod warns without it)"),
        Setting("INSTANCE_IP", .string, default: "", "ztunnel's pod IP (the xDS node id and metadata)"),
        Setting("POD_NAMESPACE", .string, default: "", "ztunnel's namespace (its own identity is not impersonated)"),
        Setting("SERVICE_ACCOUNT", .string, default: "", "ztunnel's service account"),
        Setting("ZTUNNEL_CA_DIR", .path, default: "",
                "plugged-in CA for the built-in CA (Istio cacerts layout); empty = a self-signed root made at start"),
        Setting("ZTUNNEL_STATIC_IDENTITY_DIR", .path, default: "",
                "static identities: one subdirectory each with cert-chain.pem, key.pem, root-cert.pem (read by the CertWorker only)"),
        Setting("CRL_PATH", .path, default: "",
                "certificate revocation lists (PEM or DER) every mTLS peer's chain is checked against, at the handshake and again on live connections when the file changes; empty = none"),
        Setting("TLS12_ENABLED", .bool, default: "false",
                "TLS 1.2 on HBONE, as upstream allows; refused here: the CertWorker signs TLS 1.3 CertificateVerify inputs only"),
        Setting("COMPLIANCE_POLICY", .choice(["pqc"]), default: "",
                "pqc = ML-KEM hybrid key exchange only; refused here: this build's OpenSSL 3.0 has no ML-KEM"),
        Setting("ENABLE_RESPONSE_BAGGAGE", .bool, default: "true",
                "HBONE: the destination's baggage on each CONNECT's 200, and a request's baggage read (a source behind a network gateway)"),
        Setting("PROXY_MODE", .choice(["shared", "dedicated"]), default: "shared",
                "shared = one ztunnel for the node's pods; dedicated (one workload, sidecar-like) is refused here"),
        Setting("ENABLE_PROXY", .bool, default: "true", "false = DNS only, as upstream allows; refused here"),
        Setting("PROXY_WORKLOAD_INFO", .string, default: "",
                "dedicated mode's workload as namespace/name/service-account; shared mode ignores it, as upstream"),
        Setting("PROXY_CONFIG", .string, default: "",
                "YAML or JSON ProxyConfig (discoveryAddress, proxyAdminPort, statsPort, concurrency, proxyMetadata) merged over defaultConfig of ./etc/istio/config/mesh: defaults for XDS_ADDRESS, the admin and stats ports, ZTUNNEL_WORKER_THREADS and ISTIO_META_*"),
        Setting("FAKE_CA", .bool, default: "false", "true = the built-in CA (self-signed root) even when CA_ADDRESS is set or defaulted"),
        Setting("AUTHZ_POLICY_INFO_LOGGING", .bool, default: "false", "log each authorization decision at info (else at debug)"),
        Setting("ZTUNNEL_NET_WORKERS", .integer(1...64), default: "1", "number of NetWorker processes"),
        Setting("ZTUNNEL_CERT_WORKER_UID", .integer(1...0x7fff_fffe), default: "65532",
                "uid the CertWorker runs as when the daemon starts as root (must differ from the NetWorker's)"),
        Setting("ZTUNNEL_CERT_WORKER_GID", .integer(1...0x7fff_fffe), default: "65532",
                "gid the CertWorker runs as when the daemon starts as root"),
        Setting("ZTUNNEL_NET_WORKER_UID", .integer(1...0x7fff_fffe), default: "65533",
                "uid the NetWorkers run as when the daemon starts as root (must differ from the CertWorker's)"),
        Setting("ZTUNNEL_NET_WORKER_GID", .integer(1...0x7fff_fffe), default: "65533",
                "gid the NetWorkers run as when the daemon starts as root"),
        Setting("ZTUNNEL_XDS_WORKER_UID", .integer(1...0x7fff_fffe), default: "65534",
                "uid the xDS worker runs as when the daemon starts as root (must differ from the other roles')"),
        Setting("ZTUNNEL_XDS_WORKER_GID", .integer(1...0x7fff_fffe), default: "65534",
                "gid the xDS worker runs as when the daemon starts as root"),
        Setting("ZTUNNEL_SECCOMP_DIR", .path, default: "",
                "directory of the per-role seccomp profiles; empty = security/seccomp found beside the binaries"),
        Setting("ZTUNNEL_SECCOMP_MODE", .choice(["enforce", "audit"]), default: "enforce",
                "enforce kills a worker on a syscall outside its allowlist; audit only logs it (kernel log)"),
        Setting("ZTUNNEL_AUDIT_LOG", .path, default: "stderr",
                "audit sink: a file path (appended) or stderr"),
        Setting("ZTUNNEL_CRASH_LOOP_LIMIT", .integer(1...1000), default: "5",
                "worker exits within the crash-loop window that make the Supervisor give up"),
        Setting("ZTUNNEL_CRASH_LOOP_WINDOW", .duration, default: "60s", "the crash-loop window"),
        Setting("ZTUNNEL_RESTART_BACKOFF", .duration, default: "100ms",
                "delay before the second restart within the window; doubles after each further exit"),
        Setting("ZTUNNEL_RESTART_BACKOFF_MAX", .duration, default: "10s", "upper bound of the restart delay"),
        Setting("ZTUNNEL_WORKER_SETUP_TIMEOUT", .duration, default: "10s",
                "deadline for a new worker's setup handshake"),
        Setting("ZTUNNEL_DEBUG_FAULT_INJECTION", .bool, default: "false",
                "enables POST /debug/fault on the admin port (tests only; never in production)"),
        Setting("ZTUNNEL_HANDSHAKE_TIMEOUT", .duration, default: "10s",
                "deadline from accept to the end of a TLS or SOCKS5 handshake, or to a captured connection's upstream being connected"),
        Setting("ZTUNNEL_IDLE_TIMEOUT", .duration, default: "1h",
                "a relayed connection with no bytes either way for this long is closed"),
        Setting("ZTUNNEL_HBONE_KEEPALIVE", .duration, default: "10s",
                "HTTP/2 PING interval on HBONE connections; no answer for twice this long closes the connection"),
        Setting("HTTP2_STREAM_WINDOW_SIZE", .integer(65_535...2_147_483_647), default: "4194304",
                "HBONE: each stream's HTTP/2 receive window, in bytes"),
        Setting("HTTP2_CONNECTION_WINDOW_SIZE", .integer(65_535...2_147_483_647), default: "16777216",
                "HBONE: each connection's HTTP/2 receive window, in bytes"),
        Setting("HTTP2_FRAME_SIZE", .integer(16_384...16_777_215), default: "1048576",
                "HBONE: the largest HTTP/2 frame a peer may send (SETTINGS_MAX_FRAME_SIZE), in bytes"),
        Setting("KEEPALIVE_ENABLED", .bool, default: "true", "TCP keepalive on every proxied socket"),
        Setting("KEEPALIVE_TIME", .duration, default: "180s", "TCP keepalive: idle time before the first probe (whole seconds)"),
        Setting("KEEPALIVE_INTERVAL", .duration, default: "180s", "TCP keepalive: time between probes (whole seconds)"),
        Setting("KEEPALIVE_RETRIES", .integer(1...127), default: "9", "TCP keepalive: unanswered probes before the connection is dropped"),
        Setting("USER_TIMEOUT_ENABLED", .bool, default: "false",
                "TCP_USER_TIMEOUT on every proxied socket: KEEPALIVE_TIME + KEEPALIVE_RETRIES x KEEPALIVE_INTERVAL"),
        Setting("ZTUNNEL_MAX_CONNECTIONS", .integer(1...1_000_000), default: "16384",
                "connections each proxy listener of each NetWorker serves at once; more are closed at accept"),
        Setting("PREFERED_SERVICE_NAMESPACE", .string, default: "",
                "(sic, upstream's spelling) the namespace the pods' DNS proxy prefers for a hostname several services have, after the client's own and a canonical service"),
        Setting("ZTUNNEL_DNS_SEARCH_DOMAINS", .string, default: "",
                "search domains (space-separated) the pods' DNS proxy strips from a name before looking it up again; default: the search line of ztunnel's /etc/resolv.conf"),
        Setting("LOCALHOST_APP_TUNNEL", .bool, default: "true",
                "deliver PROXY-tunnelled streams (a workload's application tunnel) over loopback, not to the pod IP"),
        Setting("POOL_MAX_STREAMS_PER_CONNECTION", .integer(1...10_000), default: "100",
                "CONNECT streams one pooled HBONE connection carries at once before another is opened"),
        Setting("POOL_UNUSED_RELEASE_TIMEOUT", .duration, default: "5m",
                "a pooled HBONE connection with no stream for this long is closed"),
        Setting("ZTUNNEL_HBONE_PORT", .integer(1...65535), default: "15008",
                "port outbound tunnels dial on an HBONE workload (upstream: always 15008; change only to run several daemons on one host)"),
        Setting("ZTUNNEL_OUTBOUND_ADDR", .socketAddress, default: "wildcard:15001", "outbound capture listener"),
        Setting("ZTUNNEL_INBOUND_PLAINTEXT_ADDR", .socketAddress, default: "wildcard:15006",
                "inbound plaintext capture listener"),
        Setting("ZTUNNEL_INBOUND_ADDR", .socketAddress, default: "wildcard:15008", "inbound HBONE listener"),
        Setting("ZTUNNEL_SOCKS5_ADDR", .socketAddress, default: "127.0.0.1:15080", "SOCKS5 listener"),
        Setting("ZTUNNEL_ADMIN_ADDR", .socketAddress, default: "127.0.0.1:15000", "admin API listener"),
        Setting("ZTUNNEL_STATS_ADDR", .socketAddress, default: "wildcard:15020", "Prometheus stats listener"),
        Setting("ZTUNNEL_READINESS_ADDR", .socketAddress, default: "wildcard:15021", "readiness listener"),
    ]

    /// Where the chart mounts the projected service-account token (relative to the working
    /// directory, `/` in the pod, as upstream).
    public static let defaultTokenPath = "./var/run/secrets/tokens/istio-token"

    /// istiod as upstream's defaults name it. In a pod (KUBERNETES_SERVICE_HOST set) an unset
    /// CA_ADDRESS or XDS_ADDRESS means this, as upstream, so the chart's env block works
    /// unchanged; elsewhere unset means the built-in CA and no xDS (set "" to say so in a pod).
    public static let istiodAddress = "https://istiod.istio-system.svc:15012"
    /// Where the chart mounts istio-cni's socket (ISTIO_COMPAT §8).
    public static let inPodSocket = "/var/run/ztunnel/ztunnel.sock"

    /// Settings named by prefix, as upstream reads them (ISTIO_COMPAT §18): every
    /// `ISTIO_META_<K>` becomes node metadata `K`, `ISTIO_METAJSON_<K>` JSON-valued metadata, and
    /// `XDS_HEADER_<K>` a header on the xDS stream, `CA_HEADER_<K>` one on each CA call. Declared
    /// settings with these prefixes (ISTIO_META_CLUSTER_ID, ISTIO_META_ISTIO_VERSION) are not
    /// repeated here.
    public static let passthroughPrefixes = ["ISTIO_METAJSON_", "ISTIO_META_", "XDS_HEADER_", "CA_HEADER_"]
    public static let maxPassthrough = 64

    /// Resolved values by setting name.
    public private(set) var values: [String: String]
    /// The prefixed settings this process was given (full name → value), checked.
    public private(set) var passthroughValues: [String: String] = [:]
    /// The settings this process was given. A worker receives only the ones its role declares
    /// (the Supervisor's role table), so a secret never reaches a process that does not use it;
    /// reading any other setting is a programming error.
    public private(set) var available: Set<String>

    public enum ParseError: Error, CustomStringConvertible {
        case invalid(setting: String, source: String, reason: String)
        case unknownFlag(String)
        case missingValue(String)

        public var description: String {
            switch self {
            case .invalid(let setting, let source, let reason): return "invalid \(setting) (\(source)): \(reason)"
            case .unknownFlag(let flag): return "unknown flag \(flag); see ztunnel --help"
            case .missingValue(let flag): return "flag \(flag) needs a value"
            }
        }
    }

    /// A value for a setting that the environment leaves unset, and where it came from
    /// (PROXY_CONFIG and the mesh file's defaultConfig, read by the Supervisor).
    public struct Fallback: Sendable, Equatable {
        public var value: String
        public var source: String
        public init(_ value: String, source: String) {
            self.value = value
            self.source = source
        }
    }

    /// Reads the settings from `environment`, then from `--flag value` / `--flag=value` pairs in
    /// `arguments`, which win. `fallbacks` apply to settings (declared or prefixed) the
    /// environment does not set. Every value is checked; the first bad one is the error.
    public init(environment given: [String: String], arguments: [String], fallbacks: [String: Fallback] = [:]) throws {
        var environment = given
        var values: [String: String] = [:]
        var sources: [String: String] = [:]
        for (name, fallback) in fallbacks where given[name] == nil {
            environment[name] = fallback.value
        }
        func source(_ name: String) -> String { given[name] == nil ? fallbacks[name]?.source ?? "environment" : "environment" }
        for setting in Self.settings {
            values[setting.name] = setting.defaultValue
            if let fromEnv = environment[setting.name] {
                values[setting.name] = fromEnv
                sources[setting.name] = source(setting.name)
            }
        }
        for (name, value) in environment where Self.passthroughPrefix(of: name) != nil && !Self.isDeclared(name) {
            values[name] = value
            sources[name] = source(name)
        }
        if !(environment["KUBERNETES_SERVICE_HOST"] ?? "").isEmpty {
            for name in ["CA_ADDRESS", "XDS_ADDRESS"] where environment[name] == nil {
                values[name] = Self.istiodAddress
                sources[name] = "default in Kubernetes"
            }
            if environment["INPOD_UDS"] == nil {
                values["INPOD_UDS"] = Self.inPodSocket
                sources["INPOD_UDS"] = "default in Kubernetes"
            }
        }
        for (setting, value) in try Self.flags(in: arguments) {
            values[setting.name] = value
            sources[setting.name] = "flag \(setting.flag)"
        }
        // FAKE_CA: the built-in CA, whatever CA_ADDRESS says or defaults to.
        if Setting.parseBool(values["FAKE_CA"] ?? "") == true {
            values["CA_ADDRESS"] = ""
            sources["CA_ADDRESS"] = "FAKE_CA"
        }
        try self.init(resolved: values, sources: sources)
    }

    /// Rebuilds a configuration from resolved values (a worker's setup message). Checks them again:
    /// a worker trusts the Supervisor, but a bad value is still an error, not a crash.
    public init(resolved: [String: String], sources: [String: String] = [:], onlyGiven: Bool = false) throws {
        var values = resolved
        let wildcard = Setting.parseBool(values["IPV6_ENABLED"] ?? "true") == false ? "0.0.0.0" : "[::]"
        let settings = onlyGiven ? Self.settings.filter { resolved[$0.name] != nil } : Self.settings
        for setting in settings {
            var value = values[setting.name] ?? setting.defaultValue
            // A number, switch or duration set to "" is unset: its default, never a silent 0
            // (an empty HTTP2_STREAM_WINDOW_SIZE would stall every tunnel). Paths, addresses and
            // strings keep "" (off: a listener not opened, the built-in CA).
            if value.isEmpty, setting.kind.emptyMeansDefault { value = setting.defaultValue }
            if case .socketAddress = setting.kind, value.hasPrefix("wildcard:") {
                value = wildcard + value.dropFirst("wildcard".count)
            }
            values[setting.name] = value
            if value.isEmpty { continue }  // "" means unset for optional settings
            if let reason = setting.problem(with: value) {
                throw ParseError.invalid(setting: setting.name, source: sources[setting.name] ?? "value", reason: reason)
            }
        }
        var passthrough: [String: String] = [:]
        for (name, value) in values where Self.passthroughPrefix(of: name) != nil && !Self.isDeclared(name) {
            if let reason = Self.passthroughProblem(name: name, value: value) {
                throw ParseError.invalid(setting: name, source: sources[name] ?? "value", reason: reason)
            }
            passthrough[name] = value
        }
        guard passthrough.count <= Self.maxPassthrough else {
            throw ParseError.invalid(setting: "ISTIO_META_*/XDS_HEADER_*/CA_HEADER_*", source: "environment",
                                     reason: "\(passthrough.count) settings, at most \(Self.maxPassthrough)")
        }
        self.values = values
        passthroughValues = passthrough
        available = Set(settings.map(\.name))
    }

    static func isDeclared(_ name: String) -> Bool { settings.contains { $0.name == name } }

    /// `--flag value` / `--flag=value` pairs in order, each with its setting (a later one for
    /// the same setting wins when applied). An unknown flag or one without a value is the error.
    public static func flags(in arguments: [String]) throws -> [(setting: Setting, value: String)] {
        var result: [(setting: Setting, value: String)] = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            var flag = argument
            var inline: String?
            if let equals = argument.firstIndex(of: "=") {
                flag = String(argument[..<equals])
                inline = String(argument[argument.index(after: equals)...])
            }
            guard let setting = settings.first(where: { $0.flag == flag }) else { throw ParseError.unknownFlag(argument) }
            if let inline {
                result.append((setting, inline))
            } else {
                guard index + 1 < arguments.count else { throw ParseError.missingValue(flag) }
                index += 1
                result.append((setting, arguments[index]))
            }
            index += 1
        }
        return result
    }

    /// The prefix `name` starts with (the longest: ISTIO_METAJSON_ before ISTIO_META_).
    public static func passthroughPrefix(of name: String) -> String? {
        passthroughPrefixes.first { name.hasPrefix($0) && name.count > $0.count }
    }

    /// A key of letters, digits and `_` (at most 64), and a value of at most 4 KiB with no
    /// control character: it becomes a header or metadata sent to istiod.
    static func passthroughProblem(name: String, value: String) -> String? {
        let key = name.dropFirst(passthroughPrefix(of: name)?.count ?? 0)
        guard key.count <= 64, key.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }) else {
            return "the name after the prefix must be letters, digits and _ (at most 64)"
        }
        guard value.utf8.count <= 4096, !value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) else {
            return "at most 4 KiB and no control character"
        }
        return nil
    }

    /// `XDS_HEADER_<K>` / `CA_HEADER_<K>` as gRPC metadata: (k lowercased, value).
    public func headers(_ prefix: String) -> [(String, String)] {
        passthrough(prefix).map { ($0.key.lowercased(), $0.value) }
    }

    /// The given settings with `prefix`, as (the part after it, value), sorted.
    public func passthrough(_ prefix: String) -> [(key: String, value: String)] {
        passthroughValues.filter { Self.passthroughPrefix(of: $0.key) == prefix }
            .map { (String($0.key.dropFirst(prefix.count)), $0.value) }.sorted { $0.key < $1.key }
    }

    public func string(_ name: String) -> String {
        precondition(available.contains(name), "setting \(name) is undeclared, or not given to this role (RoleSpec.settings)")
        return values[name] ?? ""
    }

    /// The settings of this process that may be shown (/config_dump): never a secret.
    public var displayable: [(name: String, value: String)] {
        Self.settings.filter { !$0.isSecret && available.contains($0.name) }.map { ($0.name, values[$0.name] ?? "") }
    }

    public func int(_ name: String) -> Int { Int(string(name)) ?? 0 }
    public func bool(_ name: String) -> Bool { Setting.parseBool(string(name)) ?? false }
    /// Milliseconds; 0 when unset.
    public func milliseconds(_ name: String) -> Int64 { Duration.parse(string(name)) ?? 0 }
    public func address(_ name: String) -> SocketAddress? { SocketAddress.parse(string(name)) }

    public var isLocalMode: Bool { !string("LOCAL_XDS_PATH").isEmpty }
    /// In-pod mode (issue #9): pods come from istio-cni; no node-level data-plane listeners.
    public var isInPodMode: Bool { available.contains("INPOD_UDS") && !string("INPOD_UDS").isEmpty }

    /// The pods' DNS proxy on 15053 (ISTIO_COMPAT §13): in in-pod mode, unless proxy metadata
    /// DNS_CAPTURE (ISTIO_META_DNS_CAPTURE) is set to anything but "true".
    public var dnsProxyEnabled: Bool {
        isInPodMode && (passthroughValues["ISTIO_META_DNS_CAPTURE"] ?? "true").lowercased() == "true"
    }

    public var isSocks5Enabled: Bool {
        switch string("UNSTABLE_ENABLE_SOCKS5") {
        case "true": return true
        case "false": return false
        default: return isLocalMode
        }
    }

    /// The drain deadline (ISTIO_COMPAT §18): CONNECTION_TERMINATION_DEADLINE, else derived from
    /// TERMINATION_GRACE_PERIOD_SECONDS (s>10 → s−5, else s−1, at least 1 s), else 5 s.
    public var drainDeadlineMilliseconds: Int64 {
        if !string("CONNECTION_TERMINATION_DEADLINE").isEmpty {
            return milliseconds("CONNECTION_TERMINATION_DEADLINE")
        }
        if !string("TERMINATION_GRACE_PERIOD_SECONDS").isEmpty {
            let seconds = Int64(int("TERMINATION_GRACE_PERIOD_SECONDS"))
            return max(1, seconds > 10 ? seconds - 5 : seconds - 1) * 1000
        }
        return 5000
    }

    /// The text of `ztunnel --help`: every setting with its flag, default and meaning.
    public static func helpText() -> String {
        var lines = [
            "usage: ztunnel [proxy ztunnel] [--flag value ...]",
            "       ztunnel version | help",
            "       ztunnel certs   (the running daemon's certificates, from its admin port)",
            "",
            "Every setting is read from its environment variable; a flag wins over the environment.",
            "",
        ]
        for setting in settings {
            let shown = setting.defaultValue.isEmpty ? "(unset)" : setting.defaultValue
            lines.append("  \(setting.name)  \(setting.flag)  default: \(shown)")
            lines.append("      \(setting.help)")
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
