import Shared
import Testing
@testable import Supervisor

/// Whether NetWorkers bind connections to applications to the client's address, and how that one
/// decision reaches the NetWorker's sandbox.
@Suite struct OriginalSourceDecisionTests {
    /// In-pod mode only; unset needs Landlock ABI 4 (it holds the bind to port 0), true does not,
    /// false never.
    @Test(arguments: [
        (true, nil, 4, true), (true, nil, 7, true), (true, nil, 3, false), (true, nil, 0, false),
        (true, true, 3, true), (true, true, 7, true), (true, false, 7, false), (true, false, 3, false),
        (false, nil, 7, false), (false, true, 7, false), (false, false, 7, false),
    ] as [(Bool, Bool?, Int, Bool)])
    func theDecision(inPod: Bool, setting: Bool?, abi: Int, binds: Bool) {
        #expect(OriginalSource.networkerBinds(inPodMode: inPod, setting: setting, landlockABI: abi) == binds)
    }

    /// The NetWorker's Landlock policy allows port 0 exactly when its seccomp policy keeps `bind`;
    /// no other role ever gets a bind port.
    @Test func landlockFollowsTheSeccompPolicy() throws {
        let configuration = try Configuration(environment: ["LOCAL_XDS_PATH": "/dev/null"], arguments: [])
        let withBind = SeccompPolicy(isAuditMode: false, rules: [.allow("bind"), .allow("read")])
        let without = withBind.removing(syscall: "bind")
        #expect(!without.allows(syscall: "bind") && without.allows(syscall: "read"))
        #expect(RoleSpec.netWorker.landlock(configuration, seccomp: withBind).allowedTCPBindPorts == [0])
        #expect(RoleSpec.netWorker.landlock(configuration, seccomp: without).allowedTCPBindPorts == [])
        #expect(RoleSpec.certWorker.landlock(configuration, seccomp: withBind).allowedTCPBindPorts == [])
        #expect(RoleSpec.xdsWorker.landlock(configuration, seccomp: withBind).allowedTCPBindPorts == [])
    }
}
