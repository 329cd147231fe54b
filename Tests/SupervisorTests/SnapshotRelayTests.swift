import Testing
@testable import Supervisor

/// The Supervisor's relay of mesh snapshots (`SnapshotRelay`): its own numbering, one snapshot
/// in flight per NetWorker, the latest after an answer, and answers out of turn refused.
struct SnapshotRelayTests {
    /// Generations are the Supervisor's: consecutive from 1 whatever the xDS worker sends.
    @Test func theSupervisorNumbersTheSnapshots() {
        var relay = SnapshotRelay<String>()
        #expect((1...5).map { relay.publish("snapshot \($0)") } == [1, 2, 3, 4, 5])
        #expect(relay.latest?.generation == 5 && relay.latest?.held == "snapshot 5")
    }

    /// A burst of 100 snapshots while a NetWorker works on the first: it gets the first, then
    /// only the latest once it answers, then nothing more until another comes.
    @Test func oneInFlightPerNetWorkerAndTheLatestAfterTheAnswer() throws {
        var relay = SnapshotRelay<Int>()
        #expect(relay.take(for: 0) == nil)  // nothing published yet
        _ = relay.publish(1)
        #expect(relay.take(for: 0)?.generation == 1)
        var sent = 1
        for value in 2...100 {
            _ = relay.publish(value)
            if relay.take(for: 0) != nil { sent += 1 }
        }
        #expect(sent == 1 && relay.inFlight(to: 0) == 1)
        try relay.answered(1, by: 0)
        let next = relay.take(for: 0)
        #expect(next?.generation == 100 && next?.held == 100)
        try relay.answered(100, by: 0)
        #expect(relay.take(for: 0) == nil)  // answered the latest: nothing to send again
        #expect(relay.take(for: 1)?.generation == 100)  // another NetWorker is on its own
    }

    /// An answer for a generation not in flight (none, an older one, a newer one) is refused
    /// and changes nothing.
    @Test func answersOutOfTurnAreRefused() throws {
        var relay = SnapshotRelay<Int>()
        #expect(throws: SnapshotRelay<Int>.OutOfTurn.self) { try relay.answered(1, by: 0) }
        _ = relay.publish(1)
        _ = relay.take(for: 0)
        _ = relay.publish(2)
        for wrong in [UInt64(0), 2, 3] {
            #expect(throws: SnapshotRelay<Int>.OutOfTurn.self) { try relay.answered(wrong, by: 0) }
        }
        #expect(relay.inFlight(to: 0) == 1)
        try relay.answered(1, by: 0)
        #expect(throws: SnapshotRelay<Int>.OutOfTurn.self) { try relay.answered(1, by: 0) }  // twice
    }

    /// A replaced NetWorker's successor starts with nothing in flight and gets the latest.
    @Test func aReplacedNetWorkerGetsTheLatestAgain() throws {
        var relay = SnapshotRelay<Int>()
        _ = relay.publish(1)
        _ = relay.take(for: 0)
        try relay.answered(1, by: 0)
        _ = relay.publish(2)
        _ = relay.take(for: 0)
        relay.forget(0)
        #expect(relay.inFlight(to: 0) == nil)
        #expect(relay.take(for: 0)?.generation == 2)
    }
}
