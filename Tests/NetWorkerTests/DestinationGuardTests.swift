import Testing
@testable import NetWorker

/// `DestinationGuard`: a destination that would loop back into this proxy (loopback on one of
/// its own ports) is refused; everything else is allowed.
@Suite struct DestinationGuardTests {
    private let guardrails = DestinationGuard(proxyPorts: [15001, 15006, 15008, 15080])

    @Test func loopbackOnAProxyPortIsRefused() {
        for host in ["127.0.0.1", "127.0.0.53", "127.255.255.254", "::1", "0:0:0:0:0:0:0:1"] {
            for port: UInt16 in [15001, 15006, 15008, 15080] {
                #expect(guardrails.refusal(host: host, port: port) != nil, "\(host):\(port)")
            }
        }
    }

    /// Review finding: every spelling that reaches this host's loopback is a loop, not only the
    /// textual 127.x and ::1.
    @Test func otherSpellingsOfLoopbackAreRefused() {
        for host in ["0.0.0.0", "::", "0:0:0:0:0:0:0:0", "::ffff:127.0.0.1", "0:0:0:0:0:ffff:7f00:1", "::ffff:0.0.0.0"] {
            #expect(guardrails.refusal(host: host, port: 15008) != nil, "\(host)")
        }
        #expect(guardrails.refusal(host: "::ffff:10.0.0.1", port: 15008) == nil)
        #expect(guardrails.refusal(host: "not an address", port: 15008) == nil)
    }

    @Test func loopbackOnAnotherPortIsAllowed() {
        for host in ["127.0.0.1", "127.1.2.3", "::1", "0:0:0:0:0:0:0:1"] {
            for port: UInt16 in [0, 80, 15000, 15002, 15009, 15081, 65535] {
                #expect(guardrails.refusal(host: host, port: port) == nil, "\(host):\(port)")
            }
        }
    }

    @Test func nonLoopbackOnAProxyPortIsAllowed() {
        for host in ["10.0.0.1", "192.168.1.127", "128.0.0.1", "2001:db8:0:0:0:0:0:1", "0:0:0:0:0:0:0:2", "fe80:0:0:0:0:0:0:1"] {
            for port: UInt16 in [15001, 15006, 15008, 15080] {
                #expect(guardrails.refusal(host: host, port: port) == nil, "\(host):\(port)")
            }
        }
    }

    @Test func noProxyPortsRefuseNothing() {
        let open = DestinationGuard(proxyPorts: [])
        #expect(open.refusal(host: "127.0.0.1", port: 15001) == nil)
        #expect(open.refusal(host: "::1", port: 15008) == nil)
    }
}
