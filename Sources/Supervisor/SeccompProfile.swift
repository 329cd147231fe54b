import FoundationEssentials
import Shared

/// A role's seccomp profile file in the OCI / Kubernetes `Localhost` profile format, the same file
/// a cluster can hand to the container runtime. We read only what we can enforce exactly and
/// refuse the rest: argument filters, includes/excludes and unknown actions would otherwise be
/// dropped silently and widen the allowlist.
struct SeccompProfile: Decodable {
    struct SyscallRule: Decodable {
        var names: [String]
        var action: String
        var errnoRet: UInt16?
        var comment: String?
        var args: [IgnoredValue]?
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
    /// rules without argument filters, only syscall names libseccomp knows on some architecture.
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
            guard rule.args == nil, rule.includes == nil, rule.excludes == nil else {
                throw LoadError.invalid(path, "\(label): args/includes/excludes are not supported")
            }
            guard let reason = rule.comment, !reason.trimmingWhitespace().isEmpty else {
                throw LoadError.invalid(path, "\(label): every rule needs a comment giving its reason")
            }
            for name in rule.names {
                switch rule.action {
                case "SCMP_ACT_ALLOW": rules.append(.allow(name))
                case "SCMP_ACT_ERRNO": rules.append(.errno(name, rule.errnoRet ?? 1))
                default: throw LoadError.invalid(path, "\(label): action \(rule.action) is not supported")
                }
            }
        }
        return SeccompPolicy(isAuditMode: auditMode, rules: rules)
    }
}
