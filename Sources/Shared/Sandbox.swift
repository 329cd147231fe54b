internal import CCap
internal import CShims
#if canImport(Glibc)
import Glibc
#endif

/// The per-role confinement a worker enters before it touches any input but its setup message.
/// One function, one fixed order (openssh `privsep_child_demote`): drop the capability bounding
/// set, switch to the unprivileged uid/gid, clear every capability set, set dumpability, set
/// no_new_privs, restrict with Landlock, install seccomp. Each step's failure stops the worker: a half-confined worker
/// must not serve.
public enum Sandbox {
    public struct Profile: Sendable {
        public var uid: UInt32
        public var gid: UInt32
        /// The CertWorker holds private keys: not dumpable, no core file, not ptrace-attachable by
        /// its own uid.
        public var isDumpable: Bool
        public var seccomp: SeccompPolicy
        /// The second wall (nil: none). Applied after no_new_privs, before seccomp, while the
        /// worker is still single-threaded (Landlock confines the calling thread and what it
        /// creates afterwards).
        public var landlock: Landlock.Policy?

        public init(uid: UInt32, gid: UInt32, isDumpable: Bool, seccomp: SeccompPolicy, landlock: Landlock.Policy? = nil) {
            self.uid = uid
            self.gid = gid
            self.isDumpable = isDumpable
            self.seccomp = seccomp
            self.landlock = landlock
        }
    }

    /// What `enter` achieved, for the worker to log once.
    public struct Report: Sendable {
        /// Syscall names of the profile this architecture lacks.
        public var skippedSyscalls: [String]
        /// nil when no Landlock policy was asked for.
        public var landlock: Landlock.Outcome?
    }

    public enum SandboxError: Error, CustomStringConvertible {
        case step(String, Int32)
        case capabilitiesRemain(String)

        public var description: String {
            switch self {
            case .step(let step, let err): return "sandbox step \(step) failed: \(String(cString: strerror(err)))"
            case .capabilitiesRemain(let text): return "capabilities remain after the drop: \(text)"
            }
        }
    }

    /// Enters the sandbox. A kernel without Landlock is not an error (seccomp still holds): the
    /// report says so and the worker logs it once.
    public static func enter(_ profile: Profile) throws -> Report {
        if geteuid() == 0 {
            try dropBoundingSet()
            try step("setgroups") { setgroups(0, nil) }
            try step("setresgid") { CShims_setresgid(profile.gid) }
            try step("setresuid") { CShims_setresuid(profile.uid) }
        }
        try clearCapabilities()
        try step("PR_SET_DUMPABLE") { CShims_prctl(PR_SET_DUMPABLE, profile.isDumpable ? 1 : 0, 0, 0, 0) }
        if !profile.isDumpable {
            // A key holder leaves no core file behind, whatever the node's core_pattern says.
            var limit = rlimit(rlim_cur: 0, rlim_max: 0)
            try step("setrlimit(RLIMIT_CORE)") { setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &limit) }
        }
        try step("PR_SET_NO_NEW_PRIVS") { CShims_prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }
        let landlock = try profile.landlock.map { try Landlock.restrictSelf($0) }
        return Report(skippedSyscalls: try profile.seccomp.install(), landlock: landlock)
    }

    /// Keeps only `keep` (capability numbers) in the permitted and effective sets and drops the
    /// rest from the bounding set, so no child can regain them. For the Supervisor.
    public static func limitCapabilities(to keep: [Int32]) throws {
        let lastCap = lastCapability()
        for cap in 0...lastCap where !keep.contains(cap) {
            // EINVAL: a capability this kernel does not know; nothing to drop.
            if CShims_prctl(PR_CAPBSET_DROP, UInt(cap), 0, 0, 0) != 0 && errno != EINVAL {
                throw SandboxError.step("PR_CAPBSET_DROP(\(cap))", errno)
            }
        }
        guard let caps = cap_init() else { throw SandboxError.step("cap_init", errno) }
        defer { cap_free(UnsafeMutableRawPointer(caps)) }
        var values = keep.map { cap_value_t($0) }
        let count = Int32(values.count)
        if count > 0 {
            try step("cap_set_flag") { cap_set_flag(caps, CAP_PERMITTED, count, &values, CAP_SET) }
            try step("cap_set_flag") { cap_set_flag(caps, CAP_EFFECTIVE, count, &values, CAP_SET) }
        }
        try step("cap_set_proc") { cap_set_proc(caps) }
    }

    /// The current capability sets as libcap's text ("=" when empty).
    public static func currentCapabilities() -> String {
        guard let caps = cap_get_proc() else { return "?" }
        defer { cap_free(UnsafeMutableRawPointer(caps)) }
        guard let text = cap_to_text(caps, nil) else { return "?" }
        defer { cap_free(text) }
        return String(cString: text)
    }

    private static func dropBoundingSet() throws {
        for cap in 0...lastCapability() {
            if CShims_prctl(PR_CAPBSET_DROP, UInt(cap), 0, 0, 0) != 0 && errno != EINVAL {
                throw SandboxError.step("PR_CAPBSET_DROP(\(cap))", errno)
            }
        }
    }

    private static func clearCapabilities() throws {
        try step("PR_CAP_AMBIENT_CLEAR_ALL") { CShims_prctl(PR_CAP_AMBIENT, UInt(PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0) }
        guard let empty = cap_init() else { throw SandboxError.step("cap_init", errno) }
        defer { cap_free(UnsafeMutableRawPointer(empty)) }
        try step("cap_set_proc") { cap_set_proc(empty) }
        // Verify rather than trust: a kernel or libcap surprise must stop the worker here.
        guard let now = cap_get_proc() else { throw SandboxError.step("cap_get_proc", errno) }
        defer { cap_free(UnsafeMutableRawPointer(now)) }
        if cap_compare(now, empty) != 0 {
            throw SandboxError.capabilitiesRemain(currentCapabilities())
        }
    }

    private static func lastCapability() -> Int32 {
        if let bytes = try? Syscall.readFile("/proc/sys/kernel/cap_last_cap"),
           let value = Int32(String(decoding: bytes, as: UTF8.self).trimmingWhitespace()) {
            return value
        }
        return 40
    }

    private static func step(_ name: String, _ body: () -> Int32) throws {
        if body() != 0 { throw SandboxError.step(name, errno) }
    }
}

extension String {
    /// The string without leading and trailing spaces, tabs and newlines.
    public func trimmingWhitespace() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(self[first...last])
    }
}
