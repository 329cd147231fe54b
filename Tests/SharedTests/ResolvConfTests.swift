import Testing
@testable import Shared

/// The nameservers the Supervisor connects the DNS proxy's upstream sockets to.
@Suite struct ResolvConfTests {
    @Test func nameserversAreReadAsGlibcReadsThem() {
        let text = "search svc.cluster.local\nnameserver 10.96.0.10\n# nameserver 1.1.1.1\nnameserver\t10.96.0.11\noptions ndots:5\n"
            + "nameserver fd00::a\nnameserver 4.4.4.4\n"
        #expect(ResolvConf.nameservers(text) == ["10.96.0.10", "10.96.0.11", "fd00::a"])
        #expect(ResolvConf.nameservers("").isEmpty)
    }
}
