internal import CSeccomp
internal import CShims
#if canImport(Glibc)
import Glibc
#endif

/// A role's seccomp allowlist as the worker installs it: the syscalls allowed, the ones answered
/// with an errno (libc probes that must fail softly), and what happens to everything else.
/// The Supervisor builds it from the role's profile file (`SeccompProfile`); the worker installs it
/// with `install()` as the last step of `Sandbox.enter`.
public struct SeccompPolicy: Sendable, Equatable {
    public enum Rule: Sendable, Equatable {
        case allow(String)
        case errno(String, UInt16)
    }

    /// In audit mode a syscall outside the list is logged by the kernel instead of killing.
    public var isAuditMode: Bool
    public var rules: [Rule]

    public init(isAuditMode: Bool, rules: [Rule]) {
        self.isAuditMode = isAuditMode
        self.rules = rules
    }

    public enum InstallError: Error, CustomStringConvertible {
        case libseccomp(String, Int32)
        public var description: String {
            switch self {
            case .libseccomp(let call, let code): return "\(call) failed: \(String(cString: strerror(-code)))"
            }
        }
    }

    /// Installs the filter on every thread of the process (TSYNC). Names this architecture does
    /// not have are skipped (the profile is shared across architectures); they are returned so the
    /// caller can log them.
    @discardableResult
    public func install() throws -> [String] {
        let defaultAction = isAuditMode ? UInt32(SCMP_ACT_LOG) : UInt32(SCMP_ACT_KILL_PROCESS)
        guard let context = seccomp_init(defaultAction) else {
            throw InstallError.libseccomp("seccomp_init", -ENOMEM)
        }
        defer { seccomp_release(context) }
        var skipped: [String] = []
        for rule in rules {
            let (name, action): (String, UInt32) = {
                switch rule {
                case .allow(let name): return (name, UInt32(SCMP_ACT_ALLOW))
                case .errno(let name, let code): return (name, CShims_SCMP_ACT_ERRNO(code))
                }
            }()
            let number = seccomp_syscall_resolve_name(name)
            if number == __NR_SCMP_ERROR {
                skipped.append(name)
                continue
            }
            let rc = CShims_seccomp_rule_add0(context, action, number)
            if rc != 0 { throw InstallError.libseccomp("seccomp_rule_add(\(name))", rc) }
        }
        var rc = seccomp_attr_set(context, SCMP_FLTATR_CTL_TSYNC, 1)
        if rc != 0 { throw InstallError.libseccomp("seccomp_attr_set(TSYNC)", rc) }
        if isAuditMode {
            rc = seccomp_attr_set(context, SCMP_FLTATR_CTL_LOG, 1)
            if rc != 0 { throw InstallError.libseccomp("seccomp_attr_set(LOG)", rc) }
        }
        rc = seccomp_load(context)
        if rc != 0 { throw InstallError.libseccomp("seccomp_load", rc) }
        return skipped
    }
}
