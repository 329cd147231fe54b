import Testing
@testable import NetWorker

/// The bound on sources described by a peer's baggage: members stay admitted, newcomers only
/// while there is room.
@Suite struct BoundedSetTests {
    @Test func newcomersStopAtTheLimit() {
        let set = BoundedSet(limit: 2)
        #expect(set.admit("a") && set.admit("b"))
        #expect(!set.admit("c"))
        #expect(set.admit("a") && set.admit("b"))
    }
}
