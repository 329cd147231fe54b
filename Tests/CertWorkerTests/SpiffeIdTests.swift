import OpenSSLSupport
import Testing

/// SPIFFE ids are validated to the SPIFFE ID specification and ztunnel's shape (issue #6): they
/// are spliced into OpenSSL configuration strings, audit lines and Prometheus labels.
@Suite struct SpiffeIdTests {
    @Test func acceptsIstioIdentities() throws {
        let id = try #require(SpiffeId("spiffe://cluster.local/ns/shop/sa/cart-v2_x.y"))
        #expect(id.trustDomain == "cluster.local" && id.namespace == "shop" && id.serviceAccount == "cart-v2_x.y")
        #expect(id.description == "spiffe://cluster.local/ns/shop/sa/cart-v2_x.y")
        #expect(SpiffeId("spiffe://td_1.example-x/ns/Upper/sa/B") != nil)  // path segments may hold capitals
    }

    @Test func refusesWhatTheSpecificationRefuses() {
        let refused = [
            "spiffe://Cluster.local/ns/a/sa/b",  // capitals in the trust domain
            "spiffe://cluster.local/ns/a/sa/b\"}",  // a quote (label injection)
            "spiffe://cluster.local/ns/a b/sa/c", "spiffe://cluster.local/ns/a/sa/b\n",
            "spiffe://cluster.local/ns/../sa/b", "spiffe://cluster.local/ns/./sa/b",
            "spiffe://cluster.local/ns/a/sa/b,URI:spiffe://x",  // OpenSSL configuration syntax
            "spiffe://cluster.local/ns/a/sa/", "spiffe:///ns/a/sa/b", "spiffe://cluster.local/ns/a/sa/b/c",
            "spiffe://cluster.local/ns/a/sx/b", "http://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/%41/sa/b",  // percent-encoding is not allowed
            "spiffe://\(String(repeating: "a", count: 256))/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/\(String(repeating: "b", count: 2048))",
        ]
        for text in refused { #expect(SpiffeId(text) == nil, "accepted \(text)") }
    }
}
