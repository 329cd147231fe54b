import Testing
@testable import Supervisor

@Suite struct RestartPolicyTests {
    func policy(limit: Int = 5) -> RestartPolicy {
        RestartPolicy(limit: limit, windowMilliseconds: 60_000, initialBackoffMilliseconds: 100, maxBackoffMilliseconds: 1_000)
    }

    @Test func firstExitRestartsAtOnceThenBacksOff() {
        var restart = policy(limit: 10)
        let delays = (0..<7).map { restart.workerExited(slot: "a", at: Int64($0) * 10, wasReady: false) }
        #expect(delays == [0, 100, 200, 400, 800, 1_000, 1_000].map { .restart(afterMilliseconds: $0) })
    }

    @Test func workersThatNeverBecameReadyEndInACrashLoop() {
        var restart = policy(limit: 5)
        for time in [0, 1, 2, 3] as [Int64] { _ = restart.workerExited(slot: "a", at: time, wasReady: false) }
        #expect(restart.workerExited(slot: "b", at: 4, wasReady: false) == .giveUp(exits: 5, windowMilliseconds: 60_000))
    }

    /// Issue #6: a crash the network can cause (a serving worker dying) never ends the node's
    /// proxy, however often it happens; it is replaced with a capped backoff.
    @Test func servingWorkersAreReplacedForever() {
        var restart = policy(limit: 5)
        var delays: [RestartPolicy.Decision] = []
        for time in 0..<100 { delays.append(restart.workerExited(slot: "net[0]", at: Int64(time), wasReady: true)) }
        #expect(delays.allSatisfy { if case .restart = $0 { return true } else { return false } })
        #expect(delays.prefix(3) == [.restart(afterMilliseconds: 0), .restart(afterMilliseconds: 100), .restart(afterMilliseconds: 200)])
        #expect(delays.last == .restart(afterMilliseconds: 1_000))
        // Start-up failures are still counted apart and still give up.
        for time in 100..<104 { _ = restart.workerExited(slot: "cert[0]", at: Int64(time), wasReady: false) }
        #expect(restart.workerExited(slot: "cert[0]", at: 104, wasReady: false) == .giveUp(exits: 5, windowMilliseconds: 60_000))
    }

    @Test func backoffIsPerSlotAndResetsAfterAQuietWindow() {
        var restart = policy()
        _ = restart.workerExited(slot: "net[0]", at: 0, wasReady: true)
        #expect(restart.workerExited(slot: "net[0]", at: 1, wasReady: true) == .restart(afterMilliseconds: 100))
        #expect(restart.workerExited(slot: "net[1]", at: 2, wasReady: true) == .restart(afterMilliseconds: 0))
        #expect(restart.workerExited(slot: "net[0]", at: 60_002, wasReady: true) == .restart(afterMilliseconds: 0))
    }

    @Test func exitsOutsideTheWindowAreForgotten() {
        var restart = policy(limit: 3)
        _ = restart.workerExited(slot: "a", at: 0, wasReady: false)
        _ = restart.workerExited(slot: "a", at: 1, wasReady: false)
        #expect(restart.workerExited(slot: "a", at: 60_001, wasReady: false) == .restart(afterMilliseconds: 0))
        #expect(restart.workerExited(slot: "a", at: 120_002, wasReady: false) == .restart(afterMilliseconds: 0))
    }
}

/// Which exits count as start-up failures (towards giving up) and which as crashes of a worker
/// that may have read outside bytes (replaced forever).
@Suite struct StartupFailureTests {
    static func exited(_ code: Int32) -> Int32 { code << 8 }
    static let killedBySIGSEGV: Int32 = 11

    @Test func beforeTheHelloOrAnOwnConfigExitIsAStartupFailure() {
        #expect(Supervisor.isStartupFailure(state: .starting, waitStatus: Self.killedBySIGSEGV, killedForSetupTimeout: false))
        #expect(Supervisor.isStartupFailure(state: .settingUp, waitStatus: Self.exited(78), killedForSetupTimeout: false))
        #expect(Supervisor.isStartupFailure(state: .settingUp, waitStatus: 9, killedForSetupTimeout: true))
    }

    /// Review finding: a worker is handed listeners and signer peers before it reports ready, so
    /// a crash in SettingUp may be a packet of death: it must not count towards giving up.
    @Test func aCrashAfterTheHelloIsNotAStartupFailure() {
        #expect(!Supervisor.isStartupFailure(state: .settingUp, waitStatus: Self.killedBySIGSEGV, killedForSetupTimeout: false))
        #expect(!Supervisor.isStartupFailure(state: .settingUp, waitStatus: Self.exited(1), killedForSetupTimeout: false))
        #expect(!Supervisor.isStartupFailure(state: .running, waitStatus: 9, killedForSetupTimeout: false))
        #expect(!Supervisor.isStartupFailure(state: .running, waitStatus: Self.exited(78), killedForSetupTimeout: false))
    }
}
