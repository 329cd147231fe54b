internal import CShims
#if canImport(Glibc)
import Glibc
#endif

/// Landlock, the second wall behind seccomp: an unprivileged, irreversible confinement of the
/// calling thread (and every thread and process it later creates) to a ruleset.
///
/// What it does: `restrictSelf` handles every filesystem right the kernel's ABI knows and adds no
/// path rule, so no file, directory or device can be opened, created, removed, renamed, linked,
/// truncated or executed by path afterwards; optionally restricts TCP `connect` to a list of ports
/// and TCP `bind` to a list of ports (none, or only an ephemeral one); optionally scopes signals and abstract unix socket connections to
/// the Landlock domain.
///
/// What it does not do: it does not touch file descriptors opened before the call (they keep
/// their access), nor `stat`, `access`, `chdir`, `chmod`, `chown`, `fcntl`, `flock` and the other
/// path operations Landlock cannot restrict; it filters TCP by port only, never by address, and
/// leaves UDP and raw sockets alone; of unix sockets it scopes only abstract ones (connecting to
/// an existing pathname socket stays allowed at these ABIs, creating one is denied); it confines
/// only the calling thread (see `restrictSelf`). Seccomp stays the first wall; where the kernel
/// lacks Landlock the caller logs the `Outcome` and carries on without it.
///
/// Known holes in the TCP rules, measured on Linux 6.18 (ABI 7) and open upstream
/// (landlock-lsm/linux issues 41, 54, 15): `sendto`/`sendmsg` with `MSG_FASTOPEN` connects to any
/// port, a socket made with `IPPROTO_MPTCP` connects and binds outside the rules, and `listen` on
/// an unbound socket binds an ephemeral port without a `bind`. Seccomp must close these (the
/// `socket` protocol and the send flags are plain arguments it can filter).
public enum Landlock {
    /// What a worker gives up. Each part is enforced only where the kernel's ABI supports it;
    /// the parts it cannot enforce are reported in `Outcome.enforced(abi:skipped:)`.
    public struct Policy: Sendable, Equatable {
        /// Handle every filesystem access right and allow none: no path can be opened afterwards.
        public var denyFilesystem: Bool
        /// `nil`: TCP connect is not restricted. Otherwise the only destination ports a TCP
        /// `connect` may reach (any address); `[]` denies every TCP connect. Needs ABI 4.
        public var allowedTCPConnectPorts: [UInt16]?
        /// `nil`: TCP bind is not restricted. Otherwise the only ports a TCP `bind` may name;
        /// `[]` denies every bind, `[0]` allows an ephemeral port only (the kernel picks it from
        /// ip_local_port_range). Needs ABI 4. `listen` on an unbound socket still gets an
        /// ephemeral port (see the type's comment).
        public var allowedTCPBindPorts: [UInt16]?
        /// Deny signals to processes outside this Landlock domain (the parent included). Needs ABI 6.
        public var scopeSignals: Bool
        /// Deny connecting to abstract unix sockets created outside this Landlock domain. Needs ABI 6.
        public var scopeAbstractUnixSockets: Bool

        /// A policy with every part stated: no defaults, so a role's policy reads in full.
        public init(
            denyFilesystem: Bool, allowedTCPConnectPorts: [UInt16]?, allowedTCPBindPorts: [UInt16]?,
            scopeSignals: Bool, scopeAbstractUnixSockets: Bool
        ) {
            self.denyFilesystem = denyFilesystem
            self.allowedTCPConnectPorts = allowedTCPConnectPorts
            self.allowedTCPBindPorts = allowedTCPBindPorts
            self.scopeSignals = scopeSignals
            self.scopeAbstractUnixSockets = scopeAbstractUnixSockets
        }
    }

    /// What `restrictSelf` achieved, for the caller to log once.
    public enum Outcome: Sendable, Equatable {
        /// The thread is now confined. `abi` is the ABI whose rights were handled: the kernel's,
        /// capped at `newestKnownABI`. `skipped` names each requested part this ABI cannot enforce.
        case enforced(abi: Int, skipped: [String])
        /// Nothing was enforced, and why: the kernel has no Landlock (ENOSYS), it is disabled at
        /// boot (EOPNOTSUPP), or nothing in the policy could be enforced at the kernel's ABI.
        case unsupported(String)
    }

    /// A Landlock call that failed where Landlock is available: the step and its errno. The
    /// thread is not confined by Landlock when this is thrown (restriction is the last step).
    public struct LandlockError: Error, CustomStringConvertible, Equatable {
        /// The failed step.
        public enum Step: Sendable, Equatable, CustomStringConvertible {
            /// The ABI version query (`landlock_create_ruleset` with the version flag).
            case abiVersion
            /// `prctl(PR_GET_NO_NEW_PRIVS)`, or no_new_privs is not set (errno EPERM).
            case noNewPrivs
            /// `landlock_create_ruleset` with the handled rights.
            case createRuleset
            /// `landlock_add_rule` for the TCP connect port.
            case addConnectPortRule(UInt16)
            /// `landlock_add_rule` for the TCP bind port.
            case addBindPortRule(UInt16)
            /// `landlock_restrict_self`.
            case restrictSelf

            /// The syscall's name, for the log.

            public var description: String {
                switch self {
                case .abiVersion: return "landlock_create_ruleset(VERSION)"
                case .noNewPrivs: return "no_new_privs check"
                case .createRuleset: return "landlock_create_ruleset"
                case .addConnectPortRule(let port): return "landlock_add_rule(NET_PORT connect \(port))"
                case .addBindPortRule(let port): return "landlock_add_rule(NET_PORT bind \(port))"
                case .restrictSelf: return "landlock_restrict_self"
                }
            }
        }

        /// Which call failed.
        public let step: Step
        /// The errno captured right after it.
        public let errno: Int32

        /// An error for `step`, failed with `errno`.
        public init(step: Step, errno: Int32) {
            self.step = step
            self.errno = errno
        }

        /// One line: the step, the errno's text and number.
        public var description: String {
            "landlock step \(step) failed: \(String(cString: strerror(errno))) (errno \(errno))"
        }
    }

    /// The newest ABI whose rights this file knows. ABI 7 added only audit-log flags, no rights,
    /// so its rights are ABI 6's. A newer kernel is handled with these rights: still deny-by-default
    /// for everything listed, but rights added after ABI 7 stay allowed until this file learns them.
    static let newestKnownABI = 7

    /// The kernel's highest Landlock ABI version; 0 when Landlock is unavailable (not built in,
    /// disabled at boot, or the query failed). Creates no ruleset and restricts nothing.
    public static func abiVersion() -> Int {
        switch queryABI() {
        case .available(let abi): return abi
        case .unavailable, .failed: return 0
        }
    }

    /// Confines the calling thread to `policy`, irreversibly, and reports what was enforced.
    ///
    /// Requires no_new_privs to be set already (the sandbox sets it before seccomp; Landlock runs
    /// just before the seccomp filter is installed, so its syscalls need not be in the allowlist).
    ///
    /// Landlock applies to the calling thread only: threads (and processes) it creates afterwards
    /// inherit the domain, threads that already exist do not. Call it while the process is still
    /// single-threaded, as the workers do during start-up, or accept that the other threads are not
    /// confined. It does not check the thread count itself.
    ///
    /// Returns `.unsupported` (never throws) when the kernel lacks Landlock or nothing requested
    /// can be enforced at its ABI, so the caller can log it and continue with seccomp alone.
    /// Throws `LandlockError` when Landlock is available but a step fails; the thread is then
    /// not confined by Landlock.
    public static func restrictSelf(_ policy: Policy) throws -> Outcome {
        let abi: Int
        switch queryABI() {
        case .available(let value): abi = value
        case .unavailable(let reason): return .unsupported(reason)
        case .failed(let err): throw LandlockError(step: .abiVersion, errno: err)
        }
        let handled = rights(forABI: abi, policy: policy)
        if handled.fs == 0 && handled.net == 0 && handled.scoped == 0 {
            // The kernel rejects an empty ruleset (ENOMSG), and there would be nothing to enforce.
            let detail = handled.skipped.isEmpty ? "the policy requests no restriction" : handled.skipped.joined(separator: ", ")
            return .unsupported("Landlock ABI \(abi): nothing to enforce (\(detail))")
        }

        // Checked here rather than left to restrict_self's EPERM, which could also mean other things.
        let noNewPrivs = CShims_prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
        let prctlErrno = errno
        if noNewPrivs < 0 { throw LandlockError(step: .noNewPrivs, errno: prctlErrno) }
        if noNewPrivs != 1 { throw LandlockError(step: .noNewPrivs, errno: EPERM) }

        let rulesetFD = CShims_landlock_create_ruleset(handled.fs, handled.net, handled.scoped)
        let createErrno = errno
        if rulesetFD < 0 {
            if let reason = unavailableReason(createErrno) { return .unsupported(reason) }
            throw LandlockError(step: .createRuleset, errno: createErrno)
        }
        // The ruleset fd is close-on-exec (the kernel sets it) and is not needed once restricted.
        defer { Syscall.close(rulesetFD) }

        // The ports a handled TCP right keeps, sorted and unique: a duplicate rule would be
        // harmless, but the log and errors stay stable.
        for (access, ports, step) in [(CShims_LANDLOCK_ACCESS_NET_CONNECT_TCP, policy.allowedTCPConnectPorts, LandlockError.Step.addConnectPortRule),
                                      (CShims_LANDLOCK_ACCESS_NET_BIND_TCP, policy.allowedTCPBindPorts, LandlockError.Step.addBindPortRule)]
        where handled.net & access != 0 {
            for port in Set(ports ?? []).sorted() {
                let rc = CShims_landlock_add_rule_net_port(rulesetFD, access, UInt64(port))
                let ruleErrno = errno
                if rc != 0 { throw LandlockError(step: step(port), errno: ruleErrno) }
            }
        }
        // No filesystem rule: every handled filesystem right is denied on every path.

        // Flags 0: at ABI >= 7 this domain's denials go to the audit log (when audit is on), as we want.
        let rc = CShims_landlock_restrict_self(rulesetFD, 0)
        let restrictErrno = errno
        if rc != 0 { throw LandlockError(step: .restrictSelf, errno: restrictErrno) }
        return .enforced(abi: min(abi, newestKnownABI), skipped: handled.skipped)
    }

    /// The rights a ruleset for `policy` handles at Landlock ABI `abi`, and the requested parts
    /// that ABI cannot enforce. Pure: `restrictSelf` uses it, and tests check it for every ABI.
    /// An ABI above `newestKnownABI` is treated as `newestKnownABI`; an ABI below 1 handles nothing.
    static func rights(forABI abi: Int, policy: Policy) -> (fs: UInt64, net: UInt64, scoped: UInt64, skipped: [String]) {
        guard abi >= 1 else { return (0, 0, 0, ["Landlock unavailable"]) }
        let abi = min(abi, newestKnownABI)
        var fs: UInt64 = 0
        var net: UInt64 = 0
        var scoped: UInt64 = 0
        var skipped: [String] = []

        if policy.denyFilesystem {
            fs = CShims_LANDLOCK_ACCESS_FS_EXECUTE | CShims_LANDLOCK_ACCESS_FS_WRITE_FILE
                | CShims_LANDLOCK_ACCESS_FS_READ_FILE | CShims_LANDLOCK_ACCESS_FS_READ_DIR
                | CShims_LANDLOCK_ACCESS_FS_REMOVE_DIR | CShims_LANDLOCK_ACCESS_FS_REMOVE_FILE
                | CShims_LANDLOCK_ACCESS_FS_MAKE_CHAR | CShims_LANDLOCK_ACCESS_FS_MAKE_DIR
                | CShims_LANDLOCK_ACCESS_FS_MAKE_REG | CShims_LANDLOCK_ACCESS_FS_MAKE_SOCK
                | CShims_LANDLOCK_ACCESS_FS_MAKE_FIFO | CShims_LANDLOCK_ACCESS_FS_MAKE_BLOCK
                | CShims_LANDLOCK_ACCESS_FS_MAKE_SYM
            // At ABI 1 reparenting is always denied, so REFER is not reported as skipped there.
            if abi >= 2 { fs |= CShims_LANDLOCK_ACCESS_FS_REFER }
            if abi >= 3 {
                fs |= CShims_LANDLOCK_ACCESS_FS_TRUNCATE
            } else {
                skipped.append("filesystem truncate (needs ABI 3)")
            }
            if abi >= 5 {
                fs |= CShims_LANDLOCK_ACCESS_FS_IOCTL_DEV
            } else {
                skipped.append("device ioctl (needs ABI 5)")
            }
        }

        if policy.allowedTCPConnectPorts != nil {
            if abi >= 4 {
                net |= CShims_LANDLOCK_ACCESS_NET_CONNECT_TCP
            } else {
                skipped.append("TCP connect ports (needs ABI 4)")
            }
        }
        if policy.allowedTCPBindPorts != nil {
            if abi >= 4 {
                net |= CShims_LANDLOCK_ACCESS_NET_BIND_TCP
            } else {
                skipped.append("TCP bind (needs ABI 4)")
            }
        }

        if policy.scopeSignals {
            if abi >= 6 {
                scoped |= CShims_LANDLOCK_SCOPE_SIGNAL
            } else {
                skipped.append("signal scope (needs ABI 6)")
            }
        }
        if policy.scopeAbstractUnixSockets {
            if abi >= 6 {
                scoped |= CShims_LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET
            } else {
                skipped.append("abstract unix socket scope (needs ABI 6)")
            }
        }
        return (fs, net, scoped, skipped)
    }

    private enum ABIQuery {
        case available(Int)
        /// The kernel has no usable Landlock; the reason, for the log.
        case unavailable(String)
        /// Any other errno: not expected from the version query.
        case failed(Int32)
    }

    private static func queryABI() -> ABIQuery {
        let version = CShims_landlock_abi_version()
        let err = errno
        if version >= 1 { return .available(Int(version)) }
        if version == 0 { return .unavailable("Landlock ABI version query returned 0") }
        if let reason = unavailableReason(err) { return .unavailable(reason) }
        // A container runtime's own seccomp profile may answer the Landlock syscalls with EPERM
        // or EACCES: Landlock is then out of reach, which is not a reason to refuse to start
        // (issue #6 review: every worker would exit before ready and the node crash-loop).
        if err == EPERM || err == EACCES {
            return .unavailable("the Landlock syscalls are refused here (\(err == EPERM ? "EPERM" : "EACCES"), likely the container runtime's seccomp profile)")
        }
        return .failed(err)
    }

    /// The errnos that mean "no Landlock here" rather than a failure.
    private static func unavailableReason(_ err: Int32) -> String? {
        switch err {
        case ENOSYS: return "Landlock is not built into this kernel (ENOSYS)"
        case EOPNOTSUPP: return "Landlock is disabled on this kernel (EOPNOTSUPP; see the lsm= boot parameter)"
        default: return nil
        }
    }
}
