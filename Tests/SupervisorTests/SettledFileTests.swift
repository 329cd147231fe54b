import Glibc
import Shared
import Testing
@testable import Supervisor

/// A watched file's new bytes count once seen the same twice in a row (`SettledFile`).
@Suite struct SettledFileTests {
    struct Missing: Error {}

    @Test func newBytesCountOnceSeenTwiceAndAFailureIsSaidOnce() throws {
        var file = SettledFile(path: "/x", limit: 100, settled: [1])
        var contents: [UInt8]? = [1]
        func look() -> SettledFile.Look { file.look { _, _ in guard let contents else { throw Missing() }; return contents } }
        #expect(look() == .unchanged)
        contents = [2]
        #expect(look() == .settling)
        contents = [3]  // still being written
        #expect(look() == .settling)
        #expect(look() == .changed([3]) && file.settled == [3])
        #expect(look() == .unchanged)
        contents = nil
        #expect(look() == .unreadable("Missing()", firstTime: true, missing: false))
        #expect(look() == .unreadable("Missing()", firstTime: false, missing: false))
        contents = [3]
        #expect(look() == .unchanged)  // back as it was: nothing to send
        contents = [4]
        #expect(look() == .settling)
        contents = nil
        #expect(look() == .unreadable("Missing()", firstTime: true, missing: false))
        contents = [4]
        #expect(look() == .settling)  // a failure in between starts the settling again
        // At start: read and settled at once.
        var fresh = SettledFile(path: "/y", limit: 100, settled: [])
        #expect(try fresh.readNow { _, _ in [7] } == [7] && fresh.settled == [7])
        #expect(fresh.look { _, _ in [7] } == .unchanged)
        #expect(SettledFile.isMissing(SyscallError(function: "open", errno: ENOENT)) && !SettledFile.isMissing(Missing()))
    }
}
