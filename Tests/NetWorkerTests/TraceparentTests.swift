import Testing
@testable import NetWorker

/// The `traceparent` each outbound CONNECT carries (ISTIO_COMPAT §5.3): W3C version 00, a
/// 32-hex-digit trace id, a 16-hex-digit span id, flags 00; fresh for every connection.
@Suite struct TraceparentTests {
    @Test func isAW3CTraceparentAndFreshEachTime() {
        let hex = Set("0123456789abcdef")
        var seen = Set<String>()
        for _ in 0..<64 {
            let value = HBONETunnel.traceparent()
            let fields = value.split(separator: "-", omittingEmptySubsequences: false)
            #expect(fields.map(\.count) == [2, 32, 16, 2], "\(value)")
            #expect(fields.first == "00" && fields.last == "00", "\(value)")
            #expect(fields[1].allSatisfy(hex.contains) && fields[2].allSatisfy(hex.contains), "\(value)")
            seen.insert(String(fields[1]))
            seen.insert(String(fields[2]))
        }
        #expect(seen.count == 128)  // no trace id or span id repeated
    }
}
