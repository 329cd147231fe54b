import Testing
@testable import IPC
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// Round trips and refusals of every message type (STYLE.md §8: round-trip, truncation,
/// oversize, trailing bytes, unknown type, wrong fd count).
@Suite struct MessageCodecTests {
    static let setup = WorkerSetup(
        role: .netWorker, index: 3, settings: [("LOCAL_XDS_PATH", "/x.yaml"), ("RUST_LOG", "debug")],
        uid: 65534, gid: 1337, isDumpable: false,
        seccomp: SeccompPolicy(isAuditMode: true, rules: [
            .allow("read"), .errno("openat", 13),
            .allow("socket", [SeccompPolicy.Condition(index: 0, op: .equal, value: .literal(2)),
                              SeccompPolicy.Condition(index: 2, op: .equal, value: .literal(6))]),
            .allow("tgkill", [SeccompPolicy.Condition(index: 0, op: .equal, value: .ownPid)]),
            .allow("clone", [SeccompPolicy.Condition(index: 0, op: .maskedEqual, value: .literal(0x7e03_0000), valueTwo: 0x1_0000)]),
        ]),
        landlock: Landlock.Policy(denyFilesystem: true, allowedTCPConnectPorts: [15012], allowedTCPBindPorts: [0],
                                  scopeSignals: true, scopeAbstractUnixSockets: false))

    static let table = [
        ProcessEntry(role: .certWorker, index: 0, pid: 41, state: .running, restarts: 0, lastExitCause: ""),
        ProcessEntry(role: .netWorker, index: 1, pid: 42, state: .backoff, restarts: 7, lastExitCause: "killed by signal SIGSYS"),
    ]

    /// Encodes, passes through the frame layer as a packet would, and decodes.
    func roundTrip(_ frame: IPCFrame) throws -> IPCFrame {
        try IPCFrame.decode(packet: try frame.encodedBytes(), fds: frame.fds)
    }

    @Test func supervisorMessagesRoundTrip() throws {
        guard case .setup(let setup) = try SupervisorMessage.decode(try roundTrip(SupervisorMessage.setup(Self.setup).frame(requestId: 9))) else {
            Issue.record("not setup"); return
        }
        #expect(setup == Self.setup)
        guard case .processTable(let table) = try SupervisorMessage.decode(try roundTrip(SupervisorMessage.processTable(Self.table).frame())) else {
            Issue.record("not a process table"); return
        }
        #expect(table == Self.table)
        guard case .drain(let deadline) = try SupervisorMessage.decode(try roundTrip(SupervisorMessage.drain(deadlineMilliseconds: 12_345).frame())) else {
            Issue.record("not drain"); return
        }
        #expect(deadline == 12_345)
        guard case .configured = try SupervisorMessage.decode(try roundTrip(SupervisorMessage.configured.frame())) else {
            Issue.record("not configured"); return
        }
        let (a, _) = try Syscall.socketpair(type: 1)
        let fd = OwnedFD(takingOwnershipOf: a)
        guard case .listener(let name, let received) = try SupervisorMessage.decode(try roundTrip(SupervisorMessage.listener(name: "admin", fd: fd).frame())) else {
            Issue.record("not listener"); return
        }
        #expect(name == "admin")
        #expect(received.rawValue == fd.rawValue)
    }

    @Test func workerMessagesRoundTrip() throws {
        for message in [WorkerMessage.hello(protocolVersion: 1, role: .xdsWorker, pid: 77), .ready, .shutdownRequest,
                        .meshApplied(generation: 1 << 40, accepted: true), .meshApplied(generation: 2, accepted: false),
                        .xdsStats(Self.stats), .logFilter("info,ztunnel::proxy=debug"), .demand("/10.0.0.1"),
                        .demandAnswered(["/10.0.0.1", "shop/echo.shop.svc.cluster.local"])] {
            let frame = try roundTrip(message.frame(requestId: 5))
            #expect(frame.requestId == 5)
            #expect(try WorkerMessage.decode(frame) == message)
        }
    }

    /// Every fault kind crosses both ways; the wall probes are named `cert-<wall>` and
    /// `xds-<wall>`, each name picks the kind its worker runs, and other names pick none.
    @Test func faultKindsRoundTripAndWallProbesAreNamedForTheirWorker() throws {
        for kind in FaultKind.allCases {
            let message = WorkerMessage.faultRequest(kind, port: 15012)
            #expect(try WorkerMessage.decode(try roundTrip(message.frame())) == message)
            guard let wall = kind.wall else { continue }
            #expect(kind.probeName == (kind.forXDSWorker ? "xds-" : "cert-") + wall.rawValue)
            #expect(FaultKind(probeName: kind.probeName) == kind)
        }
        #expect(FaultKind.allCases.filter { $0.wall != nil }.count == 2 * FaultKind.Wall.allCases.count)
        #expect(FaultKind(probeName: "xds-unshare") == .xdsUnshare && FaultKind.xdsUnshare.forXDSWorker)
        #expect(FaultKind(probeName: "cert-ptrace") == .certPtrace && !FaultKind.certPtrace.forXDSWorker)
        // The CertWorker's own channel misuse runs in the CertWorker and is no wall probe.
        for kind in [FaultKind.certAuditReservedKey, .certAuditUnlistedEvent, .certShutdownRequest, .certAuditFlood] {
            #expect(!kind.forXDSWorker && kind.wall == nil)
        }
        #expect(FaultKind.xdsSnapshotStorm.forXDSWorker && FaultKind.xdsSnapshotStorm.wall == nil)
        for name in ["unshare", "cert-", "net-unshare", "xds-open-file", "cert-unshare2"] { #expect(FaultKind(probeName: name) == nil) }
    }

    /// The log filter, on-demand keys and answers (issue #8): round trips, and what a
    /// compromised sender could put there is refused at decode.
    @Test func logFiltersAndDemandKeysAreCheckedBothWays() throws {
        guard case .logFilter(let filter) = try SupervisorMessage.decode(try roundTrip(SupervisorMessage.logFilter("warn,access=info").frame())),
              case .demand(let key) = try SupervisorMessage.decode(try roundTrip(SupervisorMessage.demand("ns/a.ns.svc").frame())),
              case .demandAnswered(let generation, let keys) = try SupervisorMessage.decode(
                try roundTrip(SupervisorMessage.demandAnswered(generation: 9, keys: ["/1.2.3.4"]).frame())) else {
            Issue.record("not the messages sent"); return
        }
        #expect(filter == "warn,access=info" && key == "ns/a.ns.svc" && generation == 9 && keys == ["/1.2.3.4"])
        for bad in ["loud", "info\nforged line", "x=" + String(repeating: "a", count: 10), String(repeating: "info,", count: 300)] {
            #expect(throws: IPCError.self) { try WorkerMessage.decode(WorkerMessage.logFilter(bad).frame()) }
            #expect(throws: IPCError.self) { try SupervisorMessage.decode(SupervisorMessage.logFilter(bad).frame()) }
        }
        for bad in ["", "a b", "ns/\u{7f}", String(repeating: "k", count: DemandKey.maxBytes + 1)] {
            #expect(throws: IPCError.self) { try WorkerMessage.decode(WorkerMessage.demand(bad).frame()) }
            #expect(throws: IPCError.self) { try WorkerMessage.decode(WorkerMessage.demandAnswered(["ok", bad]).frame()) }
        }
        let tooMany = Array(repeating: "k", count: DemandKey.maxPerMessage + 1)
        #expect(throws: IPCError.self) { try WorkerMessage.decode(WorkerMessage.demandAnswered(tooMany).frame()) }
    }

    /// In-pod messages (issue #9): round trips with their fds, and names or uids a compromised
    /// sender could use to forge log lines or JSON are refused.
    @Test func podMessagesRoundTripAndRefuseBadNames() throws {
        let info = PodInfo(name: "client-1", namespace: "default", serviceAccount: "client")
        let pending = PendingPod(uid: "u-2", info: info, error: "failure to start proxy : address in use")
        guard case .podAdded(let uid, let decodedInfo) = try SupervisorMessage.decode(try roundTrip(SupervisorMessage.podAdded(uid: "u-1", info: info).frame())),
              case .inPodStatus(let synced, let decodedPending, let started, let stopped) = try SupervisorMessage.decode(
                try roundTrip(SupervisorMessage.inPodStatus(synced: true, pending: [pending], started: 3, stopped: 1).frame())),
              case .podRemoved(let removed) = try SupervisorMessage.decode(try roundTrip(SupervisorMessage.podRemoved(uid: "u-1").frame())) else {
            Issue.record("not the messages sent"); return
        }
        #expect(uid == "u-1" && decodedInfo == info && removed == "u-1")
        #expect(synced && decodedPending == [pending] && started == 3 && stopped == 1)
        let (a, _) = try Syscall.socketpair(type: 1)
        guard case .podSocket(_, let family, _) = try SupervisorMessage.decode(
            try roundTrip(SupervisorMessage.podSocket(uid: "u-1", family: .ipv6, fd: OwnedFD(takingOwnershipOf: a)).frame())) else {
            Issue.record("not a pod socket"); return
        }
        #expect(family == .ipv6)
        #expect(try WorkerMessage.decode(try roundTrip(WorkerMessage.podSocketsWanted(uid: "u-1", family: .ipv4, count: 8).frame()))
                == .podSocketsWanted(uid: "u-1", family: .ipv4, count: 8))
        for bad in ["", "a b", "a\"b", "x\n"] {
            #expect(throws: IPCError.self) { try SupervisorMessage.decode(SupervisorMessage.podRemoved(uid: bad).frame()) }
            #expect(throws: IPCError.self) {
                try SupervisorMessage.decode(SupervisorMessage.podAdded(uid: "u", info: PodInfo(name: bad.isEmpty ? "a b" : bad, namespace: "n", serviceAccount: "s")).frame())
            }
        }
        for count: UInt16 in [0, PodSocketFamily.maxPerRequest + 1] {
            #expect(throws: IPCError.self) { try WorkerMessage.decode(WorkerMessage.podSocketsWanted(uid: "u", family: .ipv4, count: count).frame()) }
        }
    }

    static var stats: XDSStats {
        var stats = XDSStats()
        stats.countTermination("Reconnect")
        stats.countMessage(typeURL: XDSStats.typeURLs[1], bytes: 300)
        stats.countMessage(typeURL: "type.googleapis.com/other", bytes: 7)  // not counted: fixed labels
        return stats
    }

    @Test func xdsStatsAreAFixedSetOfCounters() throws {
        guard case .xdsStats(let relayed) = try SupervisorMessage.decode(try roundTrip(SupervisorMessage.xdsStats(Self.stats).frame())) else {
            Issue.record("not stats"); return
        }
        #expect(relayed == Self.stats && relayed.terminations == [0, 0, 1, 0] && relayed.messageBytes == [0, 300])
        let lines = relayed.adding(relayed).metricLines()
        #expect(lines.contains("istio_xds_connection_terminations_total{reason=\"Reconnect\"} 2"))
        #expect(lines.contains("istio_xds_message_bytes_total{url=\"type.googleapis.com/istio.security.Authorization\"} 600"))
        #expect(!lines.joined().contains("other"))
        var short = SupervisorMessage.xdsStats(Self.stats).frame()
        short.payload.removeLast()
        #expect(throws: IPCError.self) { try SupervisorMessage.decode(short) }
    }

    @Test func aMeshSnapshotCarriesItsMemfdBothWays() throws {
        let fd = OwnedFD(takingOwnershipOf: dup(0))
        let up = try roundTrip(WorkerMessage.meshSnapshot(generation: 1 << 40, fd: fd).frame())
        guard case .meshSnapshot(let generation, let received) = try WorkerMessage.decode(up) else {
            Issue.record("not a snapshot"); return
        }
        #expect(generation == 1 << 40 && received.rawValue >= 0)
        let down = try roundTrip(SupervisorMessage.meshSnapshot(generation: 3, fd: received).frame())
        guard case .meshSnapshot(3, _) = try SupervisorMessage.decode(down) else { Issue.record("not a snapshot"); return }
        // Without its fd it is refused, in both directions.
        var bare = WorkerMessage.meshSnapshot(generation: 1, fd: fd).frame()
        bare.fds = []
        #expect(throws: IPCError.wrongFdCount(type: "meshSnapshot", expected: 1, actual: 0)) { try WorkerMessage.decode(bare) }
        var bareDown = SupervisorMessage.meshSnapshot(generation: 1, fd: fd).frame()
        bareDown.fds = []
        #expect(throws: IPCError.wrongFdCount(type: "meshSnapshot", expected: 1, actual: 0)) { try SupervisorMessage.decode(bareDown) }
    }

    /// CRL_PATH's bytes go to a NetWorker as a memfd with a generation; without it, refused.
    @Test func revocationsCarryTheirMemfd() throws {
        let fd = OwnedFD(takingOwnershipOf: dup(0))
        let frame = try roundTrip(SupervisorMessage.revocations(generation: 1 << 33, fd: fd).frame())
        guard case .revocations(let generation, let received) = try SupervisorMessage.decode(frame) else {
            Issue.record("not revocations"); return
        }
        #expect(generation == 1 << 33 && received.rawValue >= 0)
        var bare = SupervisorMessage.revocations(generation: 1, fd: fd).frame()
        bare.fds = []
        #expect(throws: IPCError.wrongFdCount(type: "revocations", expected: 1, actual: 0)) { try SupervisorMessage.decode(bare) }
        var short = SupervisorMessage.revocations(generation: 1, fd: fd).frame()
        short.payload.removeLast()
        #expect(throws: IPCError.self) { try SupervisorMessage.decode(short) }
        let answer = WorkerMessage.revocationsApplied(generation: 1 << 40, accepted: false)
        #expect(try WorkerMessage.decode(try roundTrip(answer.frame())) == answer)
    }

    @Test func frameHeaderIsBigEndianWithFdCount() throws {
        let bytes = try WorkerMessage.hello(protocolVersion: 1, role: .netWorker, pid: 0x0102_0304).frame(requestId: 0xAABB_CCDD).encodedBytes()
        #expect(Array(bytes[0..<11]) == [0, 0, 0, 7, 0x02, 0x01, 0xAA, 0xBB, 0xCC, 0xDD, 0])
        #expect(Array(bytes[11...]) == [0, 1, 2, 1, 2, 3, 4])
    }

    @Test func truncatedPacketsAreRefused() throws {
        let bytes = try SupervisorMessage.setup(Self.setup).frame().encodedBytes()
        for length in [0, 1, 10] {
            #expect(throws: IPCError.self) { try IPCFrame.decode(packet: Array(bytes[0..<length]), fds: []) }
        }
        // A header whose length claims more than the packet holds.
        #expect(throws: IPCError.lengthMismatch(declared: bytes.count - 11, actual: bytes.count - 12)) {
            try IPCFrame.decode(packet: Array(bytes.dropLast()), fds: [])
        }
    }

    @Test func truncatedPayloadIsRefusedByTheMessageDecoder() throws {
        var frame = SupervisorMessage.setup(Self.setup).frame()
        for cut in [1, 5, frame.payload.count / 2, frame.payload.count - 1] {
            frame.payload = Array(SupervisorMessage.setup(Self.setup).frame().payload.prefix(cut))
            #expect(throws: IPCError.self) { try SupervisorMessage.decode(frame) }
        }
    }

    @Test func trailingBytesAreRefused() throws {
        var frame = WorkerMessage.ready.frame()
        frame.payload = [0]
        #expect(throws: IPCError.trailingBytes(type: "ready", count: 1)) { try WorkerMessage.decode(frame) }
        var drain = SupervisorMessage.drain(deadlineMilliseconds: 1).frame()
        drain.payload += [1, 2]
        #expect(throws: IPCError.trailingBytes(type: "drain", count: 2)) { try SupervisorMessage.decode(drain) }
    }

    @Test func oversizeIsRefusedBothWays() throws {
        let big = IPCFrame(type: 0x0202, requestId: 0, payload: [UInt8](repeating: 0, count: IPCFrame.maxPayload + 1))
        #expect(throws: IPCError.self) { try big.encodedBytes() }
        #expect(throws: IPCError.oversize(length: IPCFrame.maxFrame + 1, max: IPCFrame.maxFrame)) {
            try IPCFrame.decode(packet: [UInt8](repeating: 0, count: IPCFrame.maxFrame + 1), fds: [])
        }
        // A length field far past the limit inside a string is refused before allocation.
        var frame = SupervisorMessage.listener(name: "x", fd: OwnedFD(takingOwnershipOf: dup(0))).frame()
        frame.payload = [0xff, 0xff, 0xff, 0xff]
        #expect(throws: IPCError.self) { try SupervisorMessage.decode(frame) }
    }

    @Test func unknownTypesAreRefused() throws {
        for type: UInt16 in [0, 0x0118, 0x020f, 0xffff] {
            let frame = IPCFrame(type: type, requestId: 0, payload: [])
            #expect(throws: IPCError.unknownType(type)) { try SupervisorMessage.decode(frame) }
            #expect(throws: IPCError.unknownType(type)) { try WorkerMessage.decode(frame) }
        }
        // A worker message sent to a worker is an unknown type there, and the other way round.
        #expect(throws: IPCError.unknownType(0x0202)) { try SupervisorMessage.decode(WorkerMessage.ready.frame()) }
        #expect(throws: IPCError.unknownType(0x0103)) { try WorkerMessage.decode(SupervisorMessage.configured.frame()) }
    }

    @Test func wrongFdCountsAreRefused() throws {
        // An fd on a message type that carries none.
        var ready = WorkerMessage.ready.frame()
        ready.fds = [OwnedFD(takingOwnershipOf: dup(0))]
        #expect(throws: IPCError.wrongFdCount(type: "ready", expected: 0, actual: 1)) { try WorkerMessage.decode(ready) }
        // A listener without its fd.
        var listener = SupervisorMessage.listener(name: "admin", fd: OwnedFD(takingOwnershipOf: dup(0))).frame()
        listener.fds = []
        #expect(throws: IPCError.wrongFdCount(type: "listener", expected: 1, actual: 0)) { try SupervisorMessage.decode(listener) }
        // The header's fd count disagrees with what arrived.
        let bytes = try WorkerMessage.ready.frame().encodedBytes()
        #expect(throws: IPCError.fdCountMismatch(declared: 0, received: 1)) {
            try IPCFrame.decode(packet: bytes, fds: [OwnedFD(takingOwnershipOf: dup(0))])
        }
    }

    @Test func malformedFieldsAreRefused() throws {
        var hello = WorkerMessage.hello(protocolVersion: 1, role: .netWorker, pid: 1).frame()
        hello.payload[2] = 9  // no such role
        #expect(throws: IPCError.malformed("unknown role 9")) { try WorkerMessage.decode(hello) }
        var setup = SupervisorMessage.setup(Self.setup).frame()
        // The first setting name's bytes: make them invalid UTF-8.
        let nameOffset = 2 + 1 + 2 + 2 + 4
        setup.payload[nameOffset] = 0xff
        #expect(throws: IPCError.self) { try SupervisorMessage.decode(setup) }
    }

    /// Found by the fuzzer: an allow rule with a non-zero errno decoded, so two byte strings meant
    /// the same message. Every message has exactly one encoding.
    @Test func allowRuleWithErrnoIsRefused() throws {
        let setup = WorkerSetup(role: .certWorker, index: 0, settings: [], uid: 1, gid: 1, isDumpable: false,
                                seccomp: SeccompPolicy(isAuditMode: false, rules: [.allow("read")]))
        var frame = SupervisorMessage.setup(setup).frame()
        // The rule's errno field: before the condition count and the landlock flag.
        frame.payload[frame.payload.count - 3] = 1
        #expect(throws: IPCError.malformed("seccomp allow rule with errno 1")) { try SupervisorMessage.decode(frame) }
    }

    /// Issue #6: argument filters travel with the rules, each field range-checked, and the
    /// own-pid operand has one encoding.
    @Test func seccompConditionsAreCheckedOnDecode() throws {
        func setup(_ condition: SeccompPolicy.Condition) -> IPCFrame {
            SupervisorMessage.setup(WorkerSetup(role: .netWorker, index: 0, settings: [], uid: 1, gid: 1, isDumpable: true,
                                                seccomp: SeccompPolicy(isAuditMode: false, rules: [.allow("tgkill", [condition])]))).frame()
        }
        var frame = setup(SeccompPolicy.Condition(index: 0, op: .equal, value: .ownPid))
        // Layout of the tail: ... u8 index, u8 op, u8 source, u64 value, u64 valueTwo, bool landlock.
        let tail = frame.payload.count - 1 - 8 - 8 - 1 - 1 - 1
        frame.payload[tail] = 6
        #expect(throws: IPCError.malformed("seccomp argument index 6")) { try SupervisorMessage.decode(frame) }
        frame = setup(SeccompPolicy.Condition(index: 0, op: .equal, value: .ownPid))
        frame.payload[tail + 1] = 8
        #expect(throws: IPCError.malformed("seccomp operator 8")) { try SupervisorMessage.decode(frame) }
        frame = setup(SeccompPolicy.Condition(index: 0, op: .equal, value: .ownPid))
        frame.payload[tail + 3 + 7] = 1
        #expect(throws: IPCError.malformed("seccomp own-pid operand with value 1")) { try SupervisorMessage.decode(frame) }
    }

    @Test func caTokenIsAHeaderValue() throws {
        guard case .caToken(let token) = try SupervisorMessage.decode(try roundTrip(SupervisorMessage.caToken("abc.def-ghi").frame())) else {
            Issue.record("not a token"); return
        }
        #expect(token == "abc.def-ghi")
        for bad in ["", "a b", "tok\u{0}en", "line\nbreak"] {
            #expect(throws: IPCError.malformed("CA token is not a header value")) {
                try SupervisorMessage.decode(SupervisorMessage.caToken(bad).frame())
            }
        }
        // Issue #6: a token file's trailing newline is trimmed, as users expect.
        #expect(CAToken.normalized(Array("  tok.en\n\n".utf8)) == "tok.en")
        #expect(CAToken.problem(with: CAToken.normalized(Array("a\u{0}b\n".utf8))) == "the token holds byte 0x0")
    }
}
