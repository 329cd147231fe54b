import Testing
@testable import Mesh

@Suite struct IPAddressTests {
    @Test func parsesAndPrintsCanonically() {
        let cases = ["10.0.0.1": "10.0.0.1", "::1": "::1", "::": "::", "2001:DB8:0:0:0:0:0:1": "2001:db8::1",
                     "2001:db8:0:0:1:0:0:1": "2001:db8::1:0:0:1", "::ffff:127.0.0.1": "::ffff:7f00:1",
                     "fe80:1:2:3:4:5:6:7": "fe80:1:2:3:4:5:6:7", "0:0:0:0:0:0:0:0": "::"]
        for (text, canonical) in cases { #expect(IPAddress(text)?.description == canonical, "\(text)") }
    }

    @Test func refusesWhatIsNotAnAddress() {
        for text in ["", "1.2.3", "1.2.3.4.5", "256.0.0.1", "01.2.3.4", "1.2.3.4 ", "1::2::3", ":::", "1:2:3:4:5:6:7:8:9",
                     "12345::", "g::1", "fe80::1%eth0", "[::1]", "1.2.3.4/8", "::1.2.3", "1:2:3:4:5:6:7::8:9",
                     "00.1.2.3", "1.2.3.04", "1..2.3", ".1.2.3", "1.2.3.", "1.2.3.256", "1000.1.1.1", "+1.2.3.4",
                     "\u{FF11}.2.3.4", "1.2.3.4\0", "0x1.2.3.4"] {
            #expect(IPAddress(text) == nil, "\(text)")
        }
        for text in ["0.0.0.0", "255.255.255.255", "10.0.100.9", "1.20.0.0"] {
            #expect(IPAddress(text)?.description == text)
        }
        #expect(IPAddress(bytes: [1, 2, 3]) == nil)
        #expect(IPAddress(bytes: [10, 0, 0, 1])?.description == "10.0.0.1")
    }

    /// The IPv4-mapped fast path agrees with the general IPv6 parser on what it takes, and
    /// leaves to it what it does not.
    @Test func theMappedFastPathAgreesWithTheGeneralParser() {
        for text in ["::ffff:127.0.0.1", "::ffff:10.0.0.255", "::ffff:0.0.0.0", "::ffff:1.2.3", "::ffff:01.2.3.4",
                     "::ffff:1.2.3.4.5", "::ffff:256.1.1.1", "::ffff:", "::FFFF:1.2.3.4", "::ffff:1.2.3.4 ", ":ffff:1.2.3.4",
                     "::fffff:1.2.3.4", "::ffff::1.2.3.4"] {
            if let fast = IPAddress.parseIPv4Mapped(text) {
                #expect(IPAddress.parseIPv6(text) == fast, "\(text)")
            }
            #expect(IPAddress(text)?.bytes == IPAddress.parseIPv6(text), "\(text)")
        }
        #expect(IPAddress.parseIPv4Mapped("::ffff:127.0.0.1") == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1])
    }

    @Test func prefixesContain() throws {
        let block = try #require(IPPrefix("192.168.0.0/16"))
        #expect(block.contains(try #require(IPAddress("192.168.44.1"))))
        #expect(!block.contains(try #require(IPAddress("192.169.0.1"))))
        #expect(!block.contains(try #require(IPAddress("::ffff:192.168.0.1"))))  // families do not mix
        #expect(try #require(IPPrefix("10.1.2.3")).length == 32)
        #expect(try #require(IPPrefix("0.0.0.0/0")).contains(try #require(IPAddress("8.8.8.8"))))
        #expect(try #require(IPPrefix("2001:db8::/33")).contains(try #require(IPAddress("2001:db8:7fff::1"))))
        #expect(!(try #require(IPPrefix("2001:db8::/33"))).contains(try #require(IPAddress("2001:db8:8000::1"))))
        for bad in ["10.0.0.0/33", "10.0.0.0/", "10.0.0.0/-1", "::/129", "x/8", "10.0.0.0/8/8"] { #expect(IPPrefix(bad) == nil, "\(bad)") }
    }
}
