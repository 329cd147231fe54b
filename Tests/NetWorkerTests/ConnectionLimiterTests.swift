import Testing
@testable import NetWorker

/// `ConnectionLimiter`: per-listener admission against a cap; a released slot can be taken again.
@Suite struct ConnectionLimiterTests {
    @Test func admitsUpToTheCapThenRefuses() {
        let limiter = ConnectionLimiter()
        for taken in 0..<3 {
            #expect(limiter.count("socks5") == taken)
            #expect(limiter.admit("socks5", cap: 3))
        }
        #expect(!limiter.admit("socks5", cap: 3))
        #expect(!limiter.admit("socks5", cap: 3))
        // A refusal takes no slot.
        #expect(limiter.count("socks5") == 3)
    }

    @Test func releaseFreesASlot() {
        let limiter = ConnectionLimiter()
        #expect(limiter.admit("inbound", cap: 2))
        #expect(limiter.admit("inbound", cap: 2))
        #expect(!limiter.admit("inbound", cap: 2))
        limiter.release("inbound")
        #expect(limiter.count("inbound") == 1)
        #expect(limiter.admit("inbound", cap: 2))
        #expect(!limiter.admit("inbound", cap: 2))
        limiter.release("inbound")
        limiter.release("inbound")
        #expect(limiter.count("inbound") == 0)
    }

    @Test func listenersAreIndependent() {
        let limiter = ConnectionLimiter()
        #expect(limiter.admit("outbound", cap: 1))
        #expect(!limiter.admit("outbound", cap: 1))
        #expect(limiter.admit("inbound", cap: 1))
        #expect(limiter.admit("admin", cap: 1))
        #expect(!limiter.admit("inbound", cap: 1))
        limiter.release("outbound")
        #expect(limiter.count("outbound") == 0)
        #expect(limiter.count("inbound") == 1)
        #expect(!limiter.admit("inbound", cap: 1))
        #expect(limiter.admit("outbound", cap: 1))
    }

    @Test func aZeroCapAdmitsNothing() {
        let limiter = ConnectionLimiter()
        #expect(!limiter.admit("stats", cap: 0))
        #expect(limiter.count("stats") == 0)
    }
}
