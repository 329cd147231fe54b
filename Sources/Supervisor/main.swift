internal import CShims
import IPC
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// `ztunnel`: the Supervisor. Reads the configuration, opens the listeners, limits its own
/// capabilities, starts the workers and supervises them until drained.
enum Main {
    static let version = "ztunnel-swift 0.1.0 (Istio ztunnel compatible; IPC protocol \(IPCProtocol.version))"

    /// Capabilities the Supervisor keeps (DESIGN.md): setns/SO_MARK/IP_TRANSPARENT for the data
    /// plane, and what starting confined workers needs (they drop their uid and bounding set
    /// themselves; CAP_KILL signals them once they run under another uid). Not
    /// CAP_NET_BIND_SERVICE: every node-level listener is bound before this limit applies, and a
    /// pod's ports are all above 1024 (threat model review, issue #10).
    static let keptCapabilities: [Int32] = [
        5,  // CAP_KILL: signal workers running as another uid
        6,  // CAP_SETGID: workers switch gid
        7,  // CAP_SETUID: workers switch uid
        8,  // CAP_SETPCAP: workers drop their bounding set
        12, // CAP_NET_ADMIN: SO_MARK, IP_TRANSPARENT (in-pod mode)
        13, // CAP_NET_RAW: transparent sockets (in-pod mode)
        21, // CAP_SYS_ADMIN: setns into pod network namespaces (in-pod mode)
    ]

    static func fail(_ message: String) -> Never {
        FileHandleStderr.write("ztunnel: \(message)\n")
        exit(1)
    }

    /// The environment, PROXY_CONFIG and the mesh file (defaults for what the environment leaves
    /// unset), then the flags; exits with the reason when any of them is refused.
    static func loadConfiguration(arguments: [String]) -> Configuration {
        var environment: [String: String] = [:]
        for (key, value) in ProcessEnvironment.current() { environment[key] = value }
        do {
            let fallbacks = try ProxyConfigLoader.fallbacks(environment: environment, arguments: arguments)
            return try Configuration(environment: environment, arguments: arguments, fallbacks: fallbacks)
        } catch {
            fail("\(error)")
        }
    }

    static func run() -> Int32 {
        var arguments = Array(CommandLine.arguments.dropFirst())
        switch arguments.first {
        case "version", "--version":
            print(version)
            return 0
        case "help", "--help", "-h":
            print(Configuration.helpText(), terminator: "")
            return 0
        case "certs":
            arguments.removeFirst()
            return CertsCommand.run(configuration: loadConfiguration(arguments: arguments))
        case "proxy":
            // The upstream chart runs `ztunnel proxy ztunnel`.
            arguments.removeFirst()
            if let mode = arguments.first, !mode.hasPrefix("--") {
                guard mode == "ztunnel" else { fail("unknown proxy mode \"\(mode)\"; only \"ztunnel\" exists") }
                arguments.removeFirst()
            }
        default:
            break
        }
        let configuration = loadConfiguration(arguments: arguments)
        Log.configure(level: configuration.string("RUST_LOG"), format: configuration.string("LOG_FORMAT"), component: "supervisor")
        // Upstream settings this daemon cannot honour: refused, not silently ignored, since each
        // asks for a security property it would not get.
        if configuration.bool("TLS12_ENABLED") {
            fail("invalid TLS12_ENABLED=true: HBONE here is TLS 1.3 only; the CertWorker signs TLS 1.3 CertificateVerify inputs and "
                 + "nothing else (a TLS 1.2 signature input would widen what a NetWorker can have signed)")
        }
        if configuration.bool("FAKE_CA") {
            Log.warn("FAKE_CA=true: certificates come from the built-in CA (a self-signed root), not from istiod; for tests only")
        }
        // The kernel takes TCP_KEEPIDLE and TCP_KEEPINTVL up to 32,767 s; past it, setting them
        // fails and every proxied connection with it.
        for name in ["KEEPALIVE_TIME", "KEEPALIVE_INTERVAL"] where configuration.milliseconds(name) > 32_767_000 {
            fail("invalid \(name) \"\(configuration.string(name))\": at most 32767s (the kernel's bound for TCP keepalive)")
        }
        if configuration.string("PROXY_MODE") == "dedicated" {
            fail("invalid PROXY_MODE=dedicated: only shared mode (the node's pods, from istio-cni or the local config) exists here")
        }
        if !configuration.string("PROXY_WORKLOAD_INFO").isEmpty {
            Log.info("PROXY_WORKLOAD_INFO is set but PROXY_MODE is shared: it is ignored, as upstream ignores it in shared mode")
        }
        if !configuration.bool("ENABLE_PROXY") {
            fail("invalid ENABLE_PROXY=false: a DNS-only ztunnel is not supported here")
        }
        if configuration.string("COMPLIANCE_POLICY") == "pqc" {
            fail("invalid COMPLIANCE_POLICY=pqc: it needs ML-KEM hybrid key exchange, which this build's TLS library (OpenSSL 3.0) "
                 + "does not have; refusing to start rather than negotiate classical key exchange")
        }
        let usesXDS = !configuration.string("XDS_ADDRESS").isEmpty
        guard configuration.isLocalMode || usesXDS else {
            fail("invalid LOCAL_XDS_PATH: unset, and so is XDS_ADDRESS; set one or both")
        }
        // As upstream (ISTIO_COMPAT §13): the DNS proxy answers from the whole mesh, which an
        // on-demand model does not hold.
        if configuration.dnsProxyEnabled && configuration.bool("XDS_ON_DEMAND") {
            fail("invalid XDS_ON_DEMAND: it cannot be combined with the pods' DNS proxy, which in-pod mode runs unless "
                 + "ISTIO_META_DNS_CAPTURE is \"false\"; set ISTIO_META_DNS_CAPTURE=false to use XDS_ON_DEMAND")
        }
        if usesXDS && CAAddress.parse(configuration.string("XDS_ADDRESS")) == nil {
            fail("invalid XDS_ADDRESS \"\(configuration.string("XDS_ADDRESS"))\": expected [https://]host:port")
        }
        // One uid per role is the point (issue #6): with equal uids a NetWorker could signal or
        // trace the key holder as "the same user".
        let uids = [("ZTUNNEL_CERT_WORKER_UID", true), ("ZTUNNEL_NET_WORKER_UID", true), ("ZTUNNEL_XDS_WORKER_UID", usesXDS)]
            .filter(\.1).map { ($0.0, configuration.int($0.0)) }
        for (index, (name, uid)) in uids.enumerated() where geteuid() == 0 {
            if let other = uids[..<index].first(where: { $0.1 == uid }) {
                fail("invalid \(name): it must differ from \(other.0) (\(uid))")
            }
        }
        let localPath = configuration.string("LOCAL_XDS_PATH")
        var localConfig: [UInt8] = []
        if configuration.isLocalMode {
            do { localConfig = try Syscall.readFile(localPath, limit: 60 * 1024) } catch {
                fail("invalid LOCAL_XDS_PATH (\(localPath)): \(error)")
            }
        }

        raiseFileLimit()
        let binDirectory = executableDirectory()
        // Original source needs bind(2) in the NetWorker, which its profile allows for that
        // alone; the NetWorker binds exactly when its policy keeps the rule, and Landlock (ABI 4)
        // then holds the bind to port 0 (`OriginalSource`).
        let setting = Setting.parseBool(configuration.string("ENABLE_ORIG_SRC"))
        let abi = Landlock.abiVersion()
        let binds = OriginalSource.networkerBinds(inPodMode: configuration.isInPodMode, setting: setting, landlockABI: abi)
        if configuration.isInPodMode && setting == nil && !binds {
            Log.info("original source is off: this kernel has no Landlock ABI 4 (Linux 6.7) to keep a NetWorker's bind to "
                     + "port 0; applications see their pod's address (ENABLE_ORIG_SRC=true turns it on anyway)")
        }
        if binds && abi < 4 {
            Log.warn("ENABLE_ORIG_SRC=true without Landlock ABI 4: a NetWorker may bind any port, not only port 0")
        }
        let policies: [WorkerRole: SeccompPolicy]
        do { policies = try loadSeccompPolicies(configuration, binDirectory: binDirectory, networkerBinds: binds) } catch { fail("\(error)") }

        let audit: AuditSink
        do { audit = try AuditSink(destination: configuration.string("ZTUNNEL_AUDIT_LOG")) } catch {
            fail("invalid ZTUNNEL_AUDIT_LOG (\(configuration.string("ZTUNNEL_AUDIT_LOG"))): \(error)")
        }
        let broker = FdBroker()
        do { try broker.open(configuration, copies: configuration.int("ZTUNNEL_NET_WORKERS")) } catch { fail("\(error)") }

        if geteuid() == 0 {
            do { try Sandbox.limitCapabilities(to: keptCapabilities) } catch { fail("cannot limit capabilities: \(error)") }
        }
        let signalFd: OwnedFD
        do { signalFd = try Signals.block() } catch { fail("cannot set up signals: \(error)") }

        audit.record("supervisor_start", [("pid", .int(Int64(getpid()))), ("version", .string(version)),
                                          ("net_workers", .int(Int64(configuration.int("ZTUNNEL_NET_WORKERS")))),
                                          ("seccomp_mode", .string(configuration.string("ZTUNNEL_SECCOMP_MODE"))),
                                          ("capabilities", .string(Sandbox.currentCapabilities()))])
        if configuration.bool("ZTUNNEL_DEBUG_FAULT_INJECTION") {
            audit.record("fault_injection_enabled", [("security", .bool(true))])
            Log.warn("fault injection is enabled (ZTUNNEL_DEBUG_FAULT_INJECTION); never run this in production")
        }
        Log.info("starting \(version)", broker.listeners.map { ($0.name, "\($0.address)") })
        let supervisor = Supervisor(configuration: configuration, audit: audit, broker: broker,
                                    binDirectory: binDirectory, policies: policies, signalFd: signalFd,
                                    localConfig: localConfig)
        return supervisor.run()
    }

    /// Raises the soft limit on open files to the hard limit, as upstream ztunnel does: every
    /// proxied connection is one or two fds, and the workers inherit the limit.
    static func raiseFileLimit() {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
        limit.rlim_cur = limit.rlim_max
        if setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) != 0 {
            Log.warn("cannot raise the open-file limit: \(String(cString: strerror(errno)))")
        }
    }

    /// The directory of the running binary: the workers' binaries are found beside it.
    static func executableDirectory() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink("/proc/self/exe", &buffer, Int(PATH_MAX))
        guard length > 0 else { fail("cannot read /proc/self/exe: \(String(cString: strerror(errno)))") }
        let path = String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return String(path[..<slash])
    }

    /// The per-role profiles, from ZTUNNEL_SECCOMP_DIR or the first security/seccomp found walking
    /// up from the binary (a build tree), or ../share/ztunnel/seccomp (an install).
    static func loadSeccompPolicies(_ configuration: Configuration, binDirectory: String,
                                    networkerBinds: Bool) throws -> [WorkerRole: SeccompPolicy] {
        var directory = configuration.string("ZTUNNEL_SECCOMP_DIR")
        if directory.isEmpty {
            var candidates = [binDirectory + "/../share/ztunnel/seccomp"]
            var base = binDirectory
            for _ in 0..<5 {
                candidates.append(base + "/security/seccomp")
                base += "/.."
            }
            guard let found = candidates.first(where: { access($0 + "/net-worker.json", R_OK) == 0 }) else {
                fail("invalid ZTUNNEL_SECCOMP_DIR: unset, and no security/seccomp directory found beside \(binDirectory)")
            }
            directory = found
        }
        let audit = configuration.string("ZTUNNEL_SECCOMP_MODE") == "audit"
        var policies: [WorkerRole: SeccompPolicy] = [:]
        for (spec, _) in RoleSpec.table(netWorkers: 1, xds: true) {
            let profile = try SeccompProfile.load(path: directory + "/" + spec.seccompProfile, auditMode: audit)
            policies[spec.role] = spec.seccomp(configuration, profile: profile, networkerBinds: networkerBinds)
        }
        return policies
    }
}

/// Signals the Supervisor handles, read from a signalfd in its poll loop.
enum Signals {
    static func block() throws -> OwnedFD {
        signal(SIGPIPE, SIG_IGN)
        var mask = sigset_t()
        sigemptyset(&mask)
        sigaddset(&mask, SIGTERM)
        sigaddset(&mask, SIGINT)
        _ = try Syscall.retrying("sigprocmask") { sigprocmask(SIG_BLOCK, &mask, nil) }
        let fd = try Syscall.retrying("signalfd") { signalfd(-1, &mask, Int32(SFD_CLOEXEC | SFD_NONBLOCK)) }
        return OwnedFD(takingOwnershipOf: fd)
    }
}

exit(Main.run())
