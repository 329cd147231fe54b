internal import CSeccomp
internal import CShims
#if canImport(Glibc)
import Glibc
#endif

/// A role's seccomp allowlist as the worker installs it: the syscalls allowed (whole, or only
/// with arguments that pass the rule's conditions), the ones answered with an errno (libc probes
/// that must fail softly), and what happens to everything else. The Supervisor builds it from
/// the role's profile file (`SeccompProfile`); the worker installs it with `install()` as the last
/// step of `Sandbox.enter`.
public struct SeccompPolicy: Sendable, Equatable {
    public enum Action: Sendable, Equatable {
        case allow
        case errno(UInt16)
    }

    /// The comparisons of libseccomp (`enum scmp_compare`), with the OCI profile names.
    public enum Operator: UInt8, Sendable, CaseIterable {
        case notEqual = 1, lessThan, lessOrEqual, equal, greaterOrEqual, greaterThan, maskedEqual

        public var profileName: String {
            switch self {
            case .notEqual: return "SCMP_CMP_NE"
            case .lessThan: return "SCMP_CMP_LT"
            case .lessOrEqual: return "SCMP_CMP_LE"
            case .equal: return "SCMP_CMP_EQ"
            case .greaterOrEqual: return "SCMP_CMP_GE"
            case .greaterThan: return "SCMP_CMP_GT"
            case .maskedEqual: return "SCMP_CMP_MASKED_EQ"
            }
        }
    }

    /// Where a condition's value comes from: a number in the profile, or this process's pid, which
    /// only the worker knows when it installs the filter (signals to itself only).
    public enum Operand: Sendable, Equatable {
        case literal(UInt64)
        case ownPid
    }

    /// One argument check: `args[index] <op> value` (for maskedEqual: `args[index] & value == valueTwo`).
    public struct Condition: Sendable, Equatable {
        public var index: UInt8
        public var op: Operator
        public var value: Operand
        public var valueTwo: UInt64

        public init(index: UInt8, op: Operator, value: Operand, valueTwo: UInt64 = 0) {
            self.index = index
            self.op = op
            self.value = value
            self.valueTwo = valueTwo
        }
    }

    /// A syscall, what to do, and (when not empty) the conditions that must all hold. Several rules
    /// for one syscall are alternatives.
    public struct Rule: Sendable, Equatable {
        public var name: String
        public var action: Action
        public var conditions: [Condition]

        public init(name: String, action: Action, conditions: [Condition] = []) {
            self.name = name
            self.action = action
            self.conditions = conditions
        }

        public static func allow(_ name: String, _ conditions: [Condition] = []) -> Rule {
            Rule(name: name, action: .allow, conditions: conditions)
        }

        public static func errno(_ name: String, _ code: UInt16, _ conditions: [Condition] = []) -> Rule {
            Rule(name: name, action: .errno(code), conditions: conditions)
        }
    }

    /// seccomp has six syscall arguments.
    public static let maxArgumentIndex: UInt8 = 5

    /// Whether a rule allows `syscall` (with or without conditions).
    public func allows(syscall: String) -> Bool {
        rules.contains { $0.name == syscall && $0.action == .allow }
    }

    /// This policy without any rule for `syscall`: a profile's mode-dependent allowance that the
    /// configuration in force does not need (the NetWorker's `bind`, original source only).
    public func removing(syscall: String) -> SeccompPolicy {
        SeccompPolicy(isAuditMode: isAuditMode, rules: rules.filter { $0.name != syscall })
    }

    /// This policy without its UDP: the `socket` rules that admit SOCK_DGRAM (a masked check of
    /// the type argument) and `sendmmsg`, which only glibc's resolver uses (the A and AAAA
    /// queries together). For a worker that resolves no name, so that a datagram socket, the
    /// one way out that Landlock does not see, is a kill.
    public func removingDatagramSockets() -> SeccompPolicy {
        let datagram: UInt64 = 2  // SOCK_DGRAM (naming it here breaks lookups of SOCK_CLOEXEC elsewhere in a release build)
        return SeccompPolicy(isAuditMode: isAuditMode, rules: rules.filter { rule in
            if rule.name == "sendmmsg" { return false }
            guard rule.name == "socket", rule.action == .allow else { return true }
            return !rule.conditions.contains { $0.index == 1 && $0.op == .maskedEqual && $0.valueTwo == datagram }
        })
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
        let pid = UInt64(getpid())
        for rule in rules {
            let action: UInt32
            switch rule.action {
            case .allow: action = UInt32(SCMP_ACT_ALLOW)
            case .errno(let code): action = CShims_SCMP_ACT_ERRNO(code)
            }
            let number = seccomp_syscall_resolve_name(rule.name)
            if number == __NR_SCMP_ERROR {
                skipped.append(rule.name)
                continue
            }
            var indexes = rule.conditions.map { UInt32($0.index) }
            var ops = rule.conditions.map { UInt32($0.op.rawValue) }
            var values = rule.conditions.map { condition -> UInt64 in
                switch condition.value {
                case .literal(let value): return value
                case .ownPid: return pid
                }
            }
            var valuesTwo = rule.conditions.map(\.valueTwo)
            let rc = CShims_seccomp_rule_add_conditions(context, action, number, UInt32(rule.conditions.count),
                                                        &indexes, &ops, &values, &valuesTwo)
            if rc != 0 { throw InstallError.libseccomp("seccomp_rule_add(\(rule.name))", rc) }
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

    /// The number of distinct syscalls the policy lets through in some form (allowed whole or
    /// under conditions), for the logs and notes.
    public var allowedSyscallCount: Int {
        Set(rules.filter { $0.action == .allow }.map(\.name)).count
    }
}
