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

    /// The search list the pods' DNS proxy strips (§13): the last search or domain line wins.
    @Test func searchDomainsAreTheLastSearchLine() {
        let text = "domain old.example\nsearch Istio-System.svc.cluster.local. svc.cluster.local\tcluster.local\n"
            + "nameserver 10.96.0.10\n"
        #expect(ResolvConf.searchDomains(text) == ["istio-system.svc.cluster.local", "svc.cluster.local", "cluster.local"])
        #expect(ResolvConf.searchDomains(text + "domain corp.example\n") == ["corp.example"])
        #expect(ResolvConf.searchDomains("search a..b bad/name " + String(repeating: "x", count: 64) + " ok.example\n")
                == ["ok.example"])
        #expect(ResolvConf.searchDomains("search a b c d e f g h\n") == ["a", "b", "c", "d", "e", "f"])
        #expect(ResolvConf.searchDomains("nameserver 1.1.1.1\n").isEmpty)
    }
}
