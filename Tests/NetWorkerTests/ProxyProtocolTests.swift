import Mesh
import Testing
@testable import NetWorker

/// The PROXY protocol v2 header of §5.7, checked byte by byte against haproxy's specification
/// (proxy-protocol.txt, section 2.2).
@Suite struct ProxyProtocolTests {
    private let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    private func ip(_ text: String) throws -> IPAddress { try #require(IPAddress(text)) }

    @Test func ipv4WithTheSourceIdentity() throws {
        let identity = "spiffe://cluster.local/ns/a/sa/b"  // 32 bytes
        let header = ProxyProtocolV2.header(source: try ip("10.0.0.1"), sourcePort: 40_000, destination: try ip("10.0.0.2"),
                                            destinationPort: 8080, identity: identity)
        let expected: [UInt8] = signature + [0x21, 0x11, 0x00, 12 + 3 + 32]
            + [10, 0, 0, 1] + [10, 0, 0, 2] + [0x9C, 0x40] + [0x1F, 0x90]
            + [0xD0, 0x00, 32] + Array(identity.utf8)
        #expect(header == expected)
    }

    @Test func noIdentityNoTLV() throws {
        for identity in [nil, ""] as [String?] {
            let header = ProxyProtocolV2.header(source: try ip("127.0.0.1"), sourcePort: 1, destination: try ip("127.0.0.2"),
                                                destinationPort: 2, identity: identity)
            #expect(header == signature + [0x21, 0x11, 0x00, 12, 127, 0, 0, 1, 127, 0, 0, 2, 0, 1, 0, 2])
        }
    }

    @Test func ipv6AndMixedFamiliesAreWrittenAsIPv6() throws {
        let header = ProxyProtocolV2.header(source: try ip("10.1.2.3"), sourcePort: 443, destination: try ip("fd00::5"),
                                            destinationPort: 80, identity: nil)
        let source: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 10, 1, 2, 3]
        let destination: [UInt8] = [0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]
        #expect(header == signature + [0x21, 0x21, 0x00, 36] + source + destination + [0x01, 0xBB, 0x00, 0x50])
    }

    @Test func anIdentityTooLongForTheLengthFieldIsLeftOut() throws {
        let header = ProxyProtocolV2.header(source: try ip("10.0.0.1"), sourcePort: 1, destination: try ip("10.0.0.2"),
                                            destinationPort: 2, identity: String(repeating: "x", count: 70_000))
        #expect(header.count == 16 + 12)
    }
}
