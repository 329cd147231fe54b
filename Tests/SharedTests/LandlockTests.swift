import Testing
@testable import Shared

/// Landlock confines the calling thread irreversibly, so nothing here may restrict the test
/// process: these tests cover the pure rights computation and the calls that restrict nothing.
/// The live denials (open, connect, bind, kill) are checked against the running daemon.
/// Expected masks are written from the kernel UAPI as literals, not from CShims's constants, so a
/// wrong constant is caught rather than mirrored.
@Suite struct LandlockTests {
    /// Every part requested.
    private let everything = Landlock.Policy(
        denyFilesystem: true, allowedTCPConnectPorts: [443], allowedTCPBindPorts: [],
        scopeSignals: true, scopeAbstractUnixSockets: true)

    @Test func abiVersionDoesNotFail() {
        #expect(Landlock.abiVersion() >= 0)
    }

    @Test func filesystemRightsGrowWithTheABI() {
        // ABI 1: bits 0..12; ABI 2 adds REFER (13); ABI 3 TRUNCATE (14); ABI 4 no new FS right;
        // ABI 5 IOCTL_DEV (15); ABI 6 and 7 no new FS right.
        let expected: [Int: UInt64] = [1: 0x1FFF, 2: 0x3FFF, 3: 0x7FFF, 4: 0x7FFF, 5: 0xFFFF, 6: 0xFFFF, 7: 0xFFFF]
        for (abi, mask) in expected {
            #expect(Landlock.rights(forABI: abi, policy: everything).fs == mask, "ABI \(abi)")
        }
    }

    @Test func networkRightsNeedABI4() {
        for abi in 1...3 {
            let rights = Landlock.rights(forABI: abi, policy: everything)
            #expect(rights.net == 0)
            #expect(rights.skipped.contains { $0.hasPrefix("TCP connect") })
            #expect(rights.skipped.contains { $0.hasPrefix("TCP bind") })
        }
        for abi in 4...7 {
            let rights = Landlock.rights(forABI: abi, policy: everything)
            #expect(rights.net == 0b11, "BIND_TCP and CONNECT_TCP at ABI \(abi)")
            #expect(!rights.skipped.contains { $0.hasPrefix("TCP") })
        }
    }

    @Test func scopesNeedABI6() {
        for abi in 1...5 {
            let rights = Landlock.rights(forABI: abi, policy: everything)
            #expect(rights.scoped == 0)
            #expect(rights.skipped.contains { $0.hasPrefix("signal scope") })
            #expect(rights.skipped.contains { $0.hasPrefix("abstract unix socket scope") })
        }
        for abi in 6...7 {
            #expect(Landlock.rights(forABI: abi, policy: everything).scoped == 0b11, "ABI \(abi)")
        }
    }

    @Test func skippedListsExactlyWhatTheABILacks() {
        #expect(Landlock.rights(forABI: 6, policy: everything).skipped.isEmpty)
        #expect(Landlock.rights(forABI: 5, policy: everything).skipped.count == 2)  // the two scopes
        #expect(Landlock.rights(forABI: 4, policy: everything).skipped.count == 3)  // + device ioctl
        #expect(Landlock.rights(forABI: 3, policy: everything).skipped.count == 5)  // + TCP connect, bind
        #expect(Landlock.rights(forABI: 2, policy: everything).skipped.count == 6)  // + truncate
        // At ABI 1 reparenting is always denied, so REFER is not a skipped part.
        #expect(Landlock.rights(forABI: 1, policy: everything).skipped.count == 6)
    }

    @Test func aNewerKernelGetsTheNewestKnownRights() {
        let newest = Landlock.rights(forABI: Landlock.newestKnownABI, policy: everything)
        let future = Landlock.rights(forABI: Landlock.newestKnownABI + 5, policy: everything)
        #expect(future.fs == newest.fs && future.net == newest.net && future.scoped == newest.scoped)
        #expect(future.skipped.isEmpty)
    }

    @Test func noABIHandlesNothing() {
        for abi in [0, -1] {
            let rights = Landlock.rights(forABI: abi, policy: everything)
            #expect(rights.fs == 0 && rights.net == 0 && rights.scoped == 0)
        }
    }

    @Test func eachPolicyPartMapsToItsRight() {
        let none = Landlock.Policy(
            denyFilesystem: false, allowedTCPConnectPorts: nil, allowedTCPBindPorts: nil,
            scopeSignals: false, scopeAbstractUnixSockets: false)
        let empty = Landlock.rights(forABI: 7, policy: none)
        #expect(empty.fs == 0 && empty.net == 0 && empty.scoped == 0 && empty.skipped.isEmpty)

        var policy = none
        policy.allowedTCPConnectPorts = []  // no connect at all: the right is handled, no port rule
        #expect(Landlock.rights(forABI: 7, policy: policy).net == 0b10)
        policy = none
        policy.allowedTCPBindPorts = [0]  // an ephemeral port only: the right is handled, port 0 ruled in
        #expect(Landlock.rights(forABI: 7, policy: policy).net == 0b01)
        policy = none
        policy.scopeSignals = true
        #expect(Landlock.rights(forABI: 7, policy: policy).scoped == 0b10)
        policy = none
        policy.scopeAbstractUnixSockets = true
        #expect(Landlock.rights(forABI: 7, policy: policy).scoped == 0b01)
        policy = none
        policy.denyFilesystem = true
        let fsOnly = Landlock.rights(forABI: 7, policy: policy)
        #expect(fsOnly.fs == 0xFFFF && fsOnly.net == 0 && fsOnly.scoped == 0)
    }

    /// An empty policy returns before any ruleset exists, so this restricts nothing.
    @Test func anEmptyPolicyIsReportedNotEnforced() throws {
        let none = Landlock.Policy(
            denyFilesystem: false, allowedTCPConnectPorts: nil, allowedTCPBindPorts: nil,
            scopeSignals: false, scopeAbstractUnixSockets: false)
        let outcome = try Landlock.restrictSelf(none)
        guard case .unsupported = outcome else {
            Issue.record("an empty policy was reported as \(outcome)")
            return
        }
    }

    @Test func errorsNameTheStepAndErrno() {
        let error = Landlock.LandlockError(step: .addConnectPortRule(15012), errno: 22)
        #expect("\(error)".contains("15012"))
        #expect("\(error)".contains("errno 22"))
        #expect(!"\(error)".contains("\n"))
    }
}
