import FoundationEssentials
import Shared

/// A role's seccomp profile file in the OCI / Kubernetes `Localhost` profile format, the same file
/// a cluster can hand to the container runtime. We read only what we can enforce exactly and
/// refuse the rest: includes/excludes, unknown operators and unknown actions would otherwise be
/// dropped silently and widen the allowlist.
///
/// Argument filters use the OCI `args` list (`index`, `value`, `valueTwo`, `op`; all of a rule's
/// conditions must hold; several rules for one syscall are alternatives). One extension:
/// `"valueFrom": "ownPid"` on a condition makes its value the worker's own pid at install time
/// (signals to itself only); a container runtime ignores the key and keeps `value`.
struct SeccompProfile: Decodable {
    struct Argument: Decodable {
        var index: Int
        var value: UInt64
        var valueTwo: UInt64?
        var op: String
        var valueFrom: String?
    }

    struct SyscallRule: Decodable {
        var names: [String]
        var action: String
        var errnoRet: UInt16?
        var comment: String?
        var args: [Argument]?
        var includes: IgnoredValue?
        var excludes: IgnoredValue?
    }

    /// Any JSON value, decoded only to notice that it is present.
    struct IgnoredValue: Decodable {
        init(from decoder: Decoder) throws {}
    }

    var defaultAction: String
    var architectures: [String]?
    var syscalls: [SyscallRule]

    enum LoadError: Error, CustomStringConvertible {
        case unreadable(String, String)
        case invalid(String, String)
        var description: String {
            switch self {
            case .unreadable(let path, let why): return "seccomp profile \(path): \(why)"
            case .invalid(let path, let why): return "seccomp profile \(path): \(why)"
            }
        }
    }

    /// Reads and checks a profile: kill by default, every rule with a reason, only ALLOW or ERRNO
    /// rules, argument conditions on arguments 0-5 with a known operator.
    static func load(path: String, auditMode: Bool) throws -> SeccompPolicy {
        let bytes: [UInt8]
        do { bytes = try Syscall.readFile(path) } catch { throw LoadError.unreadable(path, "\(error)") }
        let profile: SeccompProfile
        do { profile = try JSONDecoder().decode(SeccompProfile.self, from: Data(bytes)) } catch {
            throw LoadError.invalid(path, "not a seccomp profile: \(error)")
        }
        guard ["SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"].contains(profile.defaultAction) else {
            throw LoadError.invalid(path, "defaultAction must kill, is \(profile.defaultAction)")
        }
        var rules: [SeccompPolicy.Rule] = []
        for (index, rule) in profile.syscalls.enumerated() {
            let label = "syscalls[\(index)] (\(rule.names.joined(separator: ",")))"
            guard rule.includes == nil, rule.excludes == nil else {
                throw LoadError.invalid(path, "\(label): includes/excludes are not supported")
            }
            guard let reason = rule.comment, !reason.trimmingWhitespace().isEmpty else {
                throw LoadError.invalid(path, "\(label): every rule needs a comment giving its reason")
            }
            let conditions: [SeccompPolicy.Condition]
            do { conditions = try (rule.args ?? []).map(condition) } catch let error as LoadError {
                throw LoadError.invalid(path, "\(label): \(error.description)")
            }
            guard conditions.count <= 6, Set(conditions.map(\.index)).count == conditions.count else {
                throw LoadError.invalid(path, "\(label): at most one condition per argument, six in all")
            }
            for name in rule.names {
                switch rule.action {
                case "SCMP_ACT_ALLOW": rules.append(.allow(name, conditions))
                case "SCMP_ACT_ERRNO": rules.append(.errno(name, rule.errnoRet ?? 1, conditions))
                default: throw LoadError.invalid(path, "\(label): action \(rule.action) is not supported")
                }
            }
        }
        return SeccompPolicy(isAuditMode: auditMode, rules: rules)
    }

    private static func condition(_ argument: Argument) throws -> SeccompPolicy.Condition {
        guard (0...Int(SeccompPolicy.maxArgumentIndex)).contains(argument.index) else {
            throw LoadError.invalid("", "argument index \(argument.index) is not 0-5")
        }
        guard let op = SeccompPolicy.Operator.allCases.first(where: { $0.profileName == argument.op }) else {
            throw LoadError.invalid("", "operator \(argument.op) is not supported")
        }
        let operand: SeccompPolicy.Operand
        switch argument.valueFrom {
        case nil: operand = .literal(argument.value)
        case "ownPid": operand = .ownPid
        case let other?: throw LoadError.invalid("", "valueFrom \(other) is not supported (only ownPid)")
        }
        return SeccompPolicy.Condition(index: UInt8(argument.index), op: op, value: operand, valueTwo: argument.valueTwo ?? 0)
    }
}
