import Testing
@testable import NetWorker

/// The HBONE CONNECT `:authority` parser: the three forms of ISTIO_COMPAT §5.3 and nothing else.
@Suite struct ConnectAuthorityTests {
    @Test func theThreeForms() {
        #expect(ConnectAuthority.parse("10.0.0.5:8080") == .address("10.0.0.5", 8080))
        #expect(ConnectAuthority.parse("[fd00::5]:443") == .address("fd00::5", 443))
        #expect(ConnectAuthority.parse("cart.shop.svc.cluster.local:9090") == .hostname("cart.shop.svc.cluster.local", 9090))
    }

    @Test func refusals() {
        for text in ["", "10.0.0.5", "10.0.0.5:", "10.0.0.5:0", "10.0.0.5:65536", "10.0.0.5:+80", "fd00::5:443", "[fd00::5]443",
                     "[fd00::5", "[]:443", "[4443d00]:443", "-cart:80", ".cart:80", "ca rt:80", "cart/x:80", "10.0.0.5:080000",
                     String(repeating: "a", count: 300) + ":80"] {
            #expect(ConnectAuthority.parse(text) == nil, "\(text)")
        }
    }
}
