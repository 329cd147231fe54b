import Shared

/// What a new worker receives first: its identity in the process tree, the resolved configuration
/// and its sandbox. The worker confines itself with `sandbox` before it reads anything else.
public struct WorkerSetup: Equatable, Sendable {
    public var protocolVersion: UInt16
    public var role: WorkerRole
    public var index: UInt16
    /// Resolved settings (name, value), in `Configuration.settings` order.
    public var settings: [(String, String)]
    public var uid: UInt32
    public var gid: UInt32
    public var isDumpable: Bool
    public var seccomp: SeccompPolicy
    public var landlock: Landlock.Policy?

    public init(protocolVersion: UInt16 = IPCProtocol.version, role: WorkerRole, index: UInt16,
                settings: [(String, String)], uid: UInt32, gid: UInt32, isDumpable: Bool, seccomp: SeccompPolicy,
                landlock: Landlock.Policy? = nil) {
        self.landlock = landlock
        self.protocolVersion = protocolVersion
        self.role = role
        self.index = index
        self.settings = settings
        self.uid = uid
        self.gid = gid
        self.isDumpable = isDumpable
        self.seccomp = seccomp
    }

    public static func == (a: WorkerSetup, b: WorkerSetup) -> Bool {
        a.protocolVersion == b.protocolVersion && a.role == b.role && a.index == b.index
            && a.settings.map { "\($0.0)=\($0.1)" } == b.settings.map { "\($0.0)=\($0.1)" }
            && a.uid == b.uid && a.gid == b.gid && a.isDumpable == b.isDumpable && a.seccomp == b.seccomp
            && a.landlock == b.landlock
    }

    public var sandboxProfile: Sandbox.Profile {
        Sandbox.Profile(uid: uid, gid: gid, isDumpable: isDumpable, seccomp: seccomp, landlock: landlock)
    }

    func encode(into writer: inout WireWriter) {
        writer.u16(protocolVersion)
        writer.u8(role.rawValue)
        writer.u16(index)
        writer.u16(UInt16(settings.count))
        for (name, value) in settings { writer.string(name); writer.string(value) }
        writer.u32(uid)
        writer.u32(gid)
        writer.bool(isDumpable)
        writer.bool(seccomp.isAuditMode)
        writer.u16(UInt16(seccomp.rules.count))
        for rule in seccomp.rules {
            switch rule.action {
            case .allow: writer.u8(0); writer.string(rule.name); writer.u16(0)
            case .errno(let code): writer.u8(1); writer.string(rule.name); writer.u16(code)
            }
            writer.u8(UInt8(rule.conditions.count))
            for condition in rule.conditions {
                writer.u8(condition.index)
                writer.u8(condition.op.rawValue)
                switch condition.value {
                case .literal(let value): writer.u8(0); writer.u64(value)
                case .ownPid: writer.u8(1); writer.u64(0)
                }
                writer.u64(condition.valueTwo)
            }
        }
        writer.bool(landlock != nil)
        if let landlock {
            writer.bool(landlock.denyFilesystem)
            for ports in [landlock.allowedTCPConnectPorts, landlock.allowedTCPBindPorts] {
                writer.bool(ports != nil)
                writer.u16(UInt16(ports?.count ?? 0))
                for port in ports ?? [] { writer.u16(port) }
            }
            writer.bool(landlock.scopeSignals)
            writer.bool(landlock.scopeAbstractUnixSockets)
        }
    }

    init(from reader: inout WireReader) throws {
        protocolVersion = try reader.u16("setup version")
        let rawRole = try reader.u8("setup role")
        guard let role = WorkerRole(rawValue: rawRole) else { throw IPCError.malformed("unknown role \(rawRole)") }
        self.role = role
        index = try reader.u16("setup index")
        let settingCount = try reader.count("setup settings", max: 512)
        var settings: [(String, String)] = []
        for _ in 0..<settingCount {
            // Values (an inline PEM bundle in CA_ROOT_CA, say) are bounded by the frame only.
            settings.append((try reader.string("setting name", max: 128), try reader.string("setting value", max: IPCFrame.maxPayload)))
        }
        self.settings = settings
        uid = try reader.u32("setup uid")
        gid = try reader.u32("setup gid")
        isDumpable = try reader.bool("setup dumpable")
        let isAudit = try reader.bool("setup seccomp mode")
        let ruleCount = try reader.count("seccomp rules", max: 1024)
        var rules: [SeccompPolicy.Rule] = []
        for _ in 0..<ruleCount {
            let kind = try reader.u8("seccomp rule kind")
            let name = try reader.string("seccomp syscall", max: 64)
            let code = try reader.u16("seccomp errno")
            let action: SeccompPolicy.Action
            switch kind {
            case 0:
                // One encoding per message: an allow rule carries errno 0, nothing else.
                guard code == 0 else { throw IPCError.malformed("seccomp allow rule with errno \(code)") }
                action = .allow
            case 1: action = .errno(code)
            default: throw IPCError.malformed("seccomp rule kind \(kind)")
            }
            rules.append(SeccompPolicy.Rule(name: name, action: action, conditions: try Self.conditions(from: &reader)))
        }
        seccomp = SeccompPolicy(isAuditMode: isAudit, rules: rules)
        landlock = try Self.landlock(from: &reader)
    }

    private static func landlock(from reader: inout WireReader) throws -> Landlock.Policy? {
        guard try reader.bool("landlock present") else { return nil }
        let denyFilesystem = try reader.bool("landlock filesystem")
        let connectPorts = try ports("connect", from: &reader)
        let bindPorts = try ports("bind", from: &reader)
        return Landlock.Policy(denyFilesystem: denyFilesystem, allowedTCPConnectPorts: connectPorts,
                               allowedTCPBindPorts: bindPorts, scopeSignals: try reader.bool("landlock signals"),
                               scopeAbstractUnixSockets: try reader.bool("landlock abstract unix"))
    }

    /// A Landlock port list (`what`: connect or bind): nil when that right is not restricted.
    /// One encoding: ports only when it is.
    private static func ports(_ what: String, from reader: inout WireReader) throws -> [UInt16]? {
        let restricted = try reader.bool("landlock \(what) restricted")
        let count = try reader.count("landlock \(what) ports", max: 64)
        var ports: [UInt16] = []
        for _ in 0..<count { ports.append(try reader.u16("landlock \(what) port")) }
        guard restricted || ports.isEmpty else { throw IPCError.malformed("landlock \(what) ports without a \(what) restriction") }
        return restricted ? ports : nil
    }

    /// A rule's argument conditions: at most six, each on an argument 0...5, with a known operator
    /// and one encoding only (the own-pid operand carries 0).
    private static func conditions(from reader: inout WireReader) throws -> [SeccompPolicy.Condition] {
        let count = Int(try reader.u8("seccomp condition count"))
        guard count <= 6 else { throw IPCError.malformed("seccomp rule with \(count) conditions") }
        var conditions: [SeccompPolicy.Condition] = []
        for _ in 0..<count {
            let index = try reader.u8("seccomp argument index")
            guard index <= SeccompPolicy.maxArgumentIndex else { throw IPCError.malformed("seccomp argument index \(index)") }
            let rawOp = try reader.u8("seccomp operator")
            guard let op = SeccompPolicy.Operator(rawValue: rawOp) else { throw IPCError.malformed("seccomp operator \(rawOp)") }
            let source = try reader.u8("seccomp operand source")
            let value = try reader.u64("seccomp value")
            let operand: SeccompPolicy.Operand
            switch source {
            case 0: operand = .literal(value)
            case 1:
                guard value == 0 else { throw IPCError.malformed("seccomp own-pid operand with value \(value)") }
                operand = .ownPid
            default: throw IPCError.malformed("seccomp operand source \(source)")
            }
            conditions.append(SeccompPolicy.Condition(index: index, op: op, value: operand, valueTwo: try reader.u64("seccomp value two")))
        }
        return conditions
    }
}

/// One row of the process table as the Supervisor reports it to NetWorkers (readiness and
/// /config_dump).
public struct ProcessEntry: Equatable, Sendable {
    public enum State: UInt8, Sendable, CustomStringConvertible {
        case starting = 1, settingUp, running, backoff, stopped

        public var description: String {
            switch self {
            case .starting: return "Starting"
            case .settingUp: return "SettingUp"
            case .running: return "Running"
            case .backoff: return "Backoff"
            case .stopped: return "Stopped"
            }
        }
    }

    public var role: WorkerRole
    public var index: UInt16
    public var pid: Int32
    public var state: State
    public var restarts: UInt32
    public var lastExitCause: String

    public init(role: WorkerRole, index: UInt16, pid: Int32, state: State, restarts: UInt32, lastExitCause: String) {
        self.role = role
        self.index = index
        self.pid = pid
        self.state = state
        self.restarts = restarts
        self.lastExitCause = lastExitCause
    }

    func encode(into writer: inout WireWriter) {
        writer.u8(role.rawValue); writer.u16(index); writer.i32(pid); writer.u8(state.rawValue)
        writer.u32(restarts); writer.string(lastExitCause)
    }

    init(from reader: inout WireReader) throws {
        let rawRole = try reader.u8("entry role")
        guard let role = WorkerRole(rawValue: rawRole) else { throw IPCError.malformed("unknown role \(rawRole)") }
        self.role = role
        index = try reader.u16("entry index")
        pid = try reader.i32("entry pid")
        let rawState = try reader.u8("entry state")
        guard let state = State(rawValue: rawState) else { throw IPCError.malformed("unknown state \(rawState)") }
        self.state = state
        restarts = try reader.u32("entry restarts")
        lastExitCause = try reader.string("entry exit cause", max: 512)
    }
}
