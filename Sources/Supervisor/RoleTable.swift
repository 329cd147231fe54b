import IPC
import Shared

/// Everything the Supervisor knows about a role, in one table (relayd's `procs[]`): the binary it
/// runs, how many, the listeners it is handed, its sandbox, the settings it receives and the
/// messages it may send.
struct RoleSpec {
    let role: WorkerRole
    let executable: String
    let seccompProfile: String
    /// Key holders are not dumpable and leave no core file.
    let isDumpable: Bool
    /// Whether the fd broker hands this role the listening sockets.
    let receivesListeners: Bool
    /// Whether this role gets the process table (readiness, /config_dump).
    let receivesProcessTable: Bool
    /// Messages this role may send once it is running; anything else is a violation.
    let permittedWhileRunning: Set<WorkerMessage.Code>
    /// The settings (names) this role is sent in its setup message: only those it reads. A
    /// setting no role lists stays in the Supervisor; `AUTH_TOKEN` is one (the Supervisor reads
    /// the token and hands its value to the CertWorker alone).
    let settings: [String]
    /// Prefixed settings (Configuration.passthroughPrefixes) this role is sent, each given one.
    var settingPrefixes: [String] = []
    /// The settings naming this role's uid and gid.
    let uidSetting: String
    let gidSetting: String

    /// Settings every worker reads: logging and the fault-injection switch.
    static let common = ["RUST_LOG", "LOG_FORMAT", "ZTUNNEL_DEBUG_FAULT_INJECTION"]

    static let certWorker = RoleSpec(
        role: .certWorker, executable: "ztunnel-cert-worker", seccompProfile: "cert-worker.json",
        isDumpable: false, receivesListeners: false, receivesProcessTable: false, permittedWhileRunning: [.audit],
        settings: common + ["TRUST_DOMAIN", "SECRET_TTL", "CA_ADDRESS", "CA_ROOT_CA", "ALT_CA_HOSTNAME", "ISTIO_META_CLUSTER_ID", "POD_NAMESPACE",
                            "SERVICE_ACCOUNT", "ZTUNNEL_CA_DIR", "ZTUNNEL_STATIC_IDENTITY_DIR"],
        settingPrefixes: ["CA_HEADER_"],
        uidSetting: "ZTUNNEL_CERT_WORKER_UID", gidSetting: "ZTUNNEL_CERT_WORKER_GID")

    static let netWorker = RoleSpec(
        role: .netWorker, executable: "ztunnel-net-worker", seccompProfile: "net-worker.json",
        isDumpable: true, receivesListeners: true, receivesProcessTable: true, permittedWhileRunning: [.shutdownRequest, .faultRequest, .logFilter, .demand, .podSocketsWanted, .revocationsApplied],
        settings: common + ["LOCAL_XDS_PATH", "CRL_PATH", "INPOD_UDS", "ZTUNNEL_POD_SOCKET_POOL", "NODE_NAME", "NETWORK", "CLUSTER_DOMAIN", "IPV6_ENABLED", "UNSTABLE_ENABLE_SOCKS5", "ZTUNNEL_WORKER_THREADS",
                            "ZTUNNEL_CPU_LIMIT", "ZTUNNEL_RESOURCE_CPU_LIMIT", "ZTUNNEL_RESOURCE_CPU_REQUEST", "ZTUNNEL_NET_WORKERS",
                            "AUTHZ_POLICY_INFO_LOGGING", "ENABLE_RESPONSE_BAGGAGE",
                            "ZTUNNEL_OUTBOUND_ADDR", "ZTUNNEL_INBOUND_PLAINTEXT_ADDR", "ZTUNNEL_INBOUND_ADDR", "ZTUNNEL_SOCKS5_ADDR",
                            "ZTUNNEL_ADMIN_ADDR", "ZTUNNEL_STATS_ADDR", "ZTUNNEL_READINESS_ADDR", "POOL_MAX_STREAMS_PER_CONNECTION",
                            "POOL_UNUSED_RELEASE_TIMEOUT", "ZTUNNEL_HBONE_PORT", "XDS_ADDRESS", "XDS_ON_DEMAND",
                            "ISTIO_META_ISTIO_VERSION", "LOCALHOST_APP_TUNNEL", "PREFERED_SERVICE_NAMESPACE",
                            "ZTUNNEL_DNS_SEARCH_DOMAINS", "ENABLE_ORIG_SRC"] + Bounds.settingNames,
        uidSetting: "ZTUNNEL_NET_WORKER_UID", gidSetting: "ZTUNNEL_NET_WORKER_GID")

    /// The xDS worker (issue #8): holds the one delta ADS stream to istiod, validates every
    /// resource and publishes the mesh model to the NetWorkers through the Supervisor. It parses
    /// remote input, so it is confined like a NetWorker and holds no key; it gets the bearer token.
    static let xdsWorker = RoleSpec(
        role: .xdsWorker, executable: "ztunnel-xds-worker", seccompProfile: "xds-worker.json",
        isDumpable: false, receivesListeners: false, receivesProcessTable: false, permittedWhileRunning: [.meshSnapshot, .xdsStats, .demandAnswered],
        settings: common + ["XDS_ADDRESS", "XDS_ROOT_CA", "ALT_XDS_HOSTNAME", "ISTIO_META_CLUSTER_ID", "POD_NAME", "POD_NAMESPACE",
                            "INSTANCE_IP", "NODE_NAME", "ISTIO_META_ISTIO_VERSION", "XDS_ON_DEMAND"],
        settingPrefixes: ["ISTIO_METAJSON_", "ISTIO_META_", "XDS_HEADER_"],
        uidSetting: "ZTUNNEL_XDS_WORKER_UID", gidSetting: "ZTUNNEL_XDS_WORKER_GID")

    /// The role's Landlock policy (the second wall, issue #6). Every worker loses every path once
    /// set up, may bind no TCP port and may signal nothing outside its own process. The
    /// CertWorker may connect over TCP only to the CA's port (none with the built-in CA); the
    /// NetWorker's connects are its job (upstreams anywhere), so they stay open. In in-pod mode
    /// with original source (ENABLE_ORIG_SRC not false) a NetWorker binds its connections to an
    /// application to the client's address, so it may bind port 0 (an ephemeral port), never a
    /// chosen one.
    func landlock(_ configuration: Configuration, seccomp: SeccompPolicy?) -> Landlock.Policy {
        var connectPorts: [UInt16]?
        if role == .certWorker {
            connectPorts = CAAddress.port(of: configuration.string("CA_ADDRESS")).map { [$0] } ?? []
        } else if role == .xdsWorker {
            connectPorts = CAAddress.port(of: configuration.string("XDS_ADDRESS")).map { [$0] } ?? []
        }
        let bindPorts: [UInt16] = role == .netWorker && seccomp?.allows(syscall: "bind") == true ? [0] : []
        return Landlock.Policy(denyFilesystem: true, allowedTCPConnectPorts: connectPorts, allowedTCPBindPorts: bindPorts,
                               scopeSignals: true, scopeAbstractUnixSockets: true)
    }

    /// Whether the role's worker looks a name up (glibc's resolver: DNS over UDP): the CertWorker
    /// when CA_ADDRESS's host is a name, the xDS worker when XDS_ADDRESS's is. Not with the
    /// built-in CA or an IP literal, and never a NetWorker (whose DNS proxy is given its sockets).
    func looksUpNames(_ configuration: Configuration) -> Bool {
        switch role {
        case .certWorker: return CAAddress.needsLookup(configuration.string("CA_ADDRESS"))
        case .xdsWorker: return CAAddress.needsLookup(configuration.string("XDS_ADDRESS"))
        default: return false
        }
    }

    /// The role's seccomp policy for this configuration, from its profile, without what the
    /// configuration does not need: a CertWorker or xDS worker that looks no name up loses UDP
    /// (`SeccompPolicy.removingDatagramSockets`), which Landlock does not filter, so that it
    /// cannot send a datagram anywhere; a NetWorker that does not bind for original source
    /// (`networkerBinds`, `OriginalSource`) loses `bind`, which its profile has for that alone.
    func seccomp(_ configuration: Configuration, profile: SeccompPolicy, networkerBinds: Bool) -> SeccompPolicy {
        switch role {
        case .certWorker, .xdsWorker: return looksUpNames(configuration) ? profile : profile.removingDatagramSockets()
        case .netWorker: return networkerBinds ? profile : profile.removing(syscall: "bind")
        default: return profile
        }
    }

    /// The roles and how many of each: an xDS worker only when XDS_ADDRESS is set.
    static func table(netWorkers: Int, xds: Bool) -> [(RoleSpec, Int)] {
        [(certWorker, 1)] + (xds ? [(xdsWorker, 1)] : []) + [(netWorker, netWorkers)]
    }
}
