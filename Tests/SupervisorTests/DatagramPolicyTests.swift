import Shared
import Testing
@testable import Supervisor

#if canImport(Glibc)
import Glibc
#endif

/// A CertWorker or xDS worker that looks no name up loses UDP from its seccomp policy: the one
/// way out that Landlock does not filter by port.
@Suite struct DatagramPolicyTests {
    static let profiles = String(#filePath).split(separator: "/", omittingEmptySubsequences: false).dropLast(3)
        .joined(separator: "/") + "/security/seccomp/"

    static func socketTypes(_ policy: SeccompPolicy) -> Set<UInt64> {
        Set(policy.rules.filter { $0.name == "socket" && $0.action == .allow }.flatMap { rule in
            rule.conditions.filter { $0.index == 1 && $0.op == .maskedEqual }.map(\.valueTwo)
        })
    }

    @Test(arguments: [
        ("", false), ("istiod.istio-system.svc:15012", true), ("https://istiod.istio-system.svc:15012", true),
        ("127.0.0.1:15012", false), ("https://10.0.0.1:15012", false), ("[::1]:15012", false), ("[fd00::1]:15012", false),
        ("localhost:15012", true), ("not an address", false),
    ] as [(String, Bool)])
    func lookupsFollowTheAddress(address: String, looksUp: Bool) throws {
        let configuration = try Configuration(environment: ["LOCAL_XDS_PATH": "/dev/null", "CA_ADDRESS": address,
                                                            "XDS_ADDRESS": address], arguments: [])
        #expect(RoleSpec.certWorker.looksUpNames(configuration) == looksUp)
        #expect(RoleSpec.xdsWorker.looksUpNames(configuration) == looksUp)
        #expect(!RoleSpec.netWorker.looksUpNames(configuration))
    }

    /// The profiles as shipped: both keep TCP, and lose SOCK_DGRAM and sendmmsg exactly when the
    /// worker looks nothing up; the NetWorker's profile (which never had UDP) is left alone.
    @Test(arguments: [("cert-worker.json", RoleSpec.certWorker, "CA_ADDRESS"), ("xds-worker.json", RoleSpec.xdsWorker, "XDS_ADDRESS")])
    func theShippedProfilesLoseUDPOnlyWithoutLookups(file: String, spec: RoleSpec, setting: String) throws {
        let profile = try SeccompProfile.load(path: Self.profiles + file, auditMode: false)
        let stream = UInt64(SOCK_STREAM.rawValue), datagram = UInt64(SOCK_DGRAM.rawValue)
        #expect(Self.socketTypes(profile) == [stream, datagram])
        #expect(profile.allows(syscall: "sendmmsg"))

        let literal = try Configuration(environment: ["LOCAL_XDS_PATH": "/dev/null", setting: "10.0.0.1:15012"], arguments: [])
        let confined = spec.seccomp(literal, profile: profile, networkerBinds: true)
        #expect(Self.socketTypes(confined) == [stream])
        #expect(!confined.allows(syscall: "sendmmsg"))
        #expect(confined.allows(syscall: "sendto") && confined.allows(syscall: "connect"))
        #expect(confined.rules.count == profile.rules.count - 5)  // 4 datagram socket rules, sendmmsg

        let named = try Configuration(environment: ["LOCAL_XDS_PATH": "/dev/null", setting: "istiod.istio-system.svc:15012"], arguments: [])
        #expect(spec.seccomp(named, profile: profile, networkerBinds: true) == profile)

        let netWorker = try SeccompProfile.load(path: Self.profiles + "net-worker.json", auditMode: false)
        #expect(RoleSpec.netWorker.seccomp(literal, profile: netWorker, networkerBinds: true) == netWorker)
        // The same place takes `bind` from a NetWorker that does not bind for original source.
        #expect(netWorker.allows(syscall: "bind"))
        #expect(RoleSpec.netWorker.seccomp(literal, profile: netWorker, networkerBinds: false) == netWorker.removing(syscall: "bind"))
    }
}
