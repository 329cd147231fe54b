import Testing
@testable import Supervisor

@Suite struct RestartPolicyTests {
    func policy(limit: Int = 5) -> RestartPolicy {
        RestartPolicy(limit: limit, windowMilliseconds: 60_000, initialBackoffMilliseconds: 100, maxBackoffMilliseconds: 1_000)
    }

    @Test func firstExitRestartsAtOnceThenBacksOff() {
        var restart = policy(limit: 10)
        #expect(restart.workerExited(at: 0) == .restart(afterMilliseconds: 0))
        #expect(restart.workerExited(at: 10) == .restart(afterMilliseconds: 100))
        #expect(restart.workerExited(at: 20) == .restart(afterMilliseconds: 200))
        #expect(restart.workerExited(at: 30) == .restart(afterMilliseconds: 400))
        #expect(restart.workerExited(at: 40) == .restart(afterMilliseconds: 800))
        #expect(restart.workerExited(at: 50) == .restart(afterMilliseconds: 1_000))
        #expect(restart.workerExited(at: 60) == .restart(afterMilliseconds: 1_000))
    }

    @Test func crashLoopGivesUp() {
        var restart = policy(limit: 5)
        for time in [0, 1, 2, 3] as [Int64] { _ = restart.workerExited(at: time) }
        #expect(restart.workerExited(at: 4) == .giveUp(exits: 5, windowMilliseconds: 60_000))
    }

    @Test func exitsOutsideTheWindowAreForgotten() {
        var restart = policy(limit: 3)
        _ = restart.workerExited(at: 0)
        _ = restart.workerExited(at: 1)
        #expect(restart.workerExited(at: 60_001) == .restart(afterMilliseconds: 0))
        #expect(restart.workerExited(at: 120_002) == .restart(afterMilliseconds: 0))
    }
}
