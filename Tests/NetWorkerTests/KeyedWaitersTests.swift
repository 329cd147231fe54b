import NIOCore
import NIOEmbedded
import Testing
@testable import NetWorker

/// The bounded waits of on-demand lookups, certificates and pod sockets (KeyedWaiters,
/// OnDemandLookups), on an embedded loop whose clock the test moves.
@Suite struct KeyedWaitersTests {
    final class Flag: @unchecked Sendable { var value = false }

    @Test func aReleaseWakesEveryWaiterOfItsKeyOnce() throws {
        let loop = EmbeddedEventLoop()
        let waiters = KeyedWaiters(capacity: 8, timeout: .seconds(5))
        let first = try #require(waiters.wait(for: "k", on: loop))
        let second = try #require(waiters.wait(for: "k", on: loop))
        let other = try #require(waiters.wait(for: "o", on: loop))
        #expect(first.isFirst && !second.isFirst && other.isFirst)
        let done = Flag()
        second.future.whenSuccess { done.value = true }
        waiters.release("k")
        loop.run()
        #expect(done.value && waiters.waitingCount == 1)
        // The timer of a released waiter fires into nothing: no second completion, no count drift.
        loop.advanceTime(by: .seconds(6))
        #expect(waiters.waitingCount == 0)
        waiters.release("k")
        _ = other
    }

    @Test func aWaitEndsAtItsTimeoutAndTheNextAsksAgain() throws {
        let loop = EmbeddedEventLoop()
        let waiters = KeyedWaiters(capacity: 8, timeout: .seconds(1))
        let wait = try #require(waiters.wait(for: "k", on: loop))
        let done = Flag()
        wait.future.whenSuccess { done.value = true }
        loop.advanceTime(by: .milliseconds(999))
        #expect(!done.value)
        loop.advanceTime(by: .milliseconds(1))
        #expect(done.value && waiters.waitingCount == 0)
        #expect(try #require(waiters.wait(for: "k", on: loop)).isFirst, "after a timeout the key is asked for again")
        loop.advanceTime(by: .seconds(1))  // every promise completed before the loop goes
    }

    @Test func fullMeansNoWait() throws {
        let loop = EmbeddedEventLoop()
        let waiters = KeyedWaiters(capacity: 2, timeout: .seconds(1))
        _ = try #require(waiters.wait(for: "a", on: loop))
        _ = try #require(waiters.wait(for: "b", on: loop))
        #expect(waiters.wait(for: "c", on: loop) == nil)
        loop.advanceTime(by: .seconds(1))
        #expect(waiters.wait(for: "c", on: loop) != nil)
        loop.advanceTime(by: .seconds(1))
    }

    /// An answer counts once the snapshot that holds it is in force here; a client with too many
    /// waits is refused at once instead of deciding without the mesh.
    @Test func onDemandWaitsForTheAnsweringSnapshot() throws {
        let loop = EmbeddedEventLoop()
        final class Asked: @unchecked Sendable { var keys: [String] = [] }
        let asked = Asked()
        let lookups = OnDemandLookups(isEnabled: true) { asked.keys.append($0); return true }
        var result: Bool?
        lookups.fetch(["/10.0.0.1"], client: "10.0.0.9", on: loop) { _ in true }.whenSuccess { result = $0 }
        #expect(asked.keys == ["/10.0.0.1"])
        lookups.answered(["/10.0.0.1"], generation: 7)
        loop.run()
        #expect(result == nil, "answered in generation 7, not yet in force")
        lookups.applied(generation: 6)
        loop.run()
        #expect(result == nil)
        lookups.applied(generation: 7)
        loop.run()
        #expect(result == true)

        var refused: Bool?
        let many = (0...OnDemandLookups.perClient).map { "/10.1.0.\($0)" }
        lookups.fetch(many, client: "10.0.0.9", on: loop) { _ in true }.whenSuccess { refused = $0 }
        loop.run()
        #expect(refused == false)
        loop.advanceTime(by: OnDemandLookups.timeout)
    }

    /// A lookup the channel could not take is asked again every 100 ms while someone waits for
    /// it, and no more once it is answered.
    @Test func aLookupThatCouldNotBeSentIsAskedAgain() throws {
        let loop = EmbeddedEventLoop()
        final class Asked: @unchecked Sendable { var count = 0; var accept = false }
        let asked = Asked()
        let lookups = OnDemandLookups(isEnabled: true) { _ in
            asked.count += 1
            return asked.accept
        }
        var result: Bool?
        lookups.fetch(["/10.0.0.1"], client: "10.0.0.9", on: loop) { _ in true }.whenSuccess { result = $0 }
        #expect(asked.count == 1)
        loop.advanceTime(by: OnDemandLookups.askRetryDelay)
        #expect(asked.count == 2)
        asked.accept = true
        loop.advanceTime(by: OnDemandLookups.askRetryDelay)
        #expect(asked.count == 3)
        loop.advanceTime(by: OnDemandLookups.askRetryDelay * 5)
        #expect(asked.count == 3, "sent: not asked again")
        lookups.answered(["/10.0.0.1"], generation: 1)
        lookups.applied(generation: 1)
        loop.run()
        #expect(result == true)
    }
}
