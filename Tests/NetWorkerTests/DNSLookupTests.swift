import Testing
@testable import NetWorker

/// The NetWorker's own lookups (SOCKS5 names outside the mesh): the query it sends and the
/// addresses it takes from a nameserver's answer (RFC 1035 §4.1), answers built by hand here.
@Suite struct DNSLookupTests {
    private func name(_ labels: [String]) -> [UInt8] { labels.flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) } + [0] }

    /// Header (id, QR|RD|RA, rcode), the question for `qname`/`qtype`, then `records`.
    private func answer(id: UInt16 = 0x1234, rcode: UInt8 = 0, qname: [String] = ["www", "example"], qtype: UInt16 = 1,
                        records: [[UInt8]]) -> [UInt8] {
        [UInt8(id >> 8), UInt8(id & 0xff), 0x81, 0x80 | rcode, 0, 1, 0, UInt8(records.count), 0, 0, 0, 0]
            + name(qname) + [UInt8(qtype >> 8), UInt8(qtype & 0xff), 0, 1] + records.flatMap { $0 }
    }

    private func record(_ owner: [UInt8], type: UInt16, _ data: [UInt8], klass: UInt16 = 1) -> [UInt8] {
        owner + [UInt8(type >> 8), UInt8(type & 0xff), UInt8(klass >> 8), UInt8(klass & 0xff), 0, 0, 0, 30,
                 UInt8(data.count >> 8), UInt8(data.count & 0xff)] + data
    }

    @Test func theQueryIsOneRecursiveQuestion() throws {
        let query = try #require(DNSLookup.query(id: 0xBEEF, name: "App.example", type: 28))
        #expect(query == [0xBE, 0xEF, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0] + name(["App", "example"]) + [0, 28, 0, 1])
        let parsed = try DNSQuery.parse(query)
        #expect(parsed.name == "app.example" && parsed.type == 28 && parsed.recursionDesired)
    }

    @Test func onlyHostNamesAreAsked() {
        for bad in ["", "a..b", ".a", "a.", String(repeating: "x", count: 64) + ".example", "bad name.example",
                    "a/b", String(repeating: "abcdefg.", count: 32) + "x"] {
            #expect(DNSLookup.query(id: 1, name: bad, type: 1) == nil, "\(bad)")
        }
        #expect(DNSLookup.query(id: 1, name: String(repeating: "x", count: 63) + ".example", type: 1) != nil)
    }

    @Test func addressesFollowTheCNAMEChainAndSkipOtherOwners() throws {
        let question = 12  // the question's name, a compression target
        let answerBytes = answer(records: [
            record([0xC0, UInt8(question)], type: 5, name(["edge", "example"])),  // www.example CNAME edge.example
            record(name(["other", "example"]), type: 1, [192, 0, 2, 9]),          // not asked for
            record(name(["edge", "example"]), type: 1, [192, 0, 2, 1]),
            record(name(["edge", "example"]), type: 28, [0xfd] + Array(repeating: 0, count: 15)),  // another type
            record(name(["edge", "example"]), type: 1, [192, 0, 2, 2, 0]),      // a bad length
            record(name(["edge", "example"]), type: 1, [192, 0, 2, 3], klass: 3),  // another class
            record([0xC0, UInt8(question)], type: 1, [192, 0, 2, 4]),
        ])
        #expect(DNSLookup.addresses(in: answerBytes, id: 0x1234, name: "WWW.example", type: 1)
                == [[192, 0, 2, 1], [192, 0, 2, 4]])
    }

    @Test func nxdomainIsNoAddressAndAnythingElseAmissIsNoAnswer() {
        let good = answer(records: [record([0xC0, 12], type: 1, [192, 0, 2, 1])])
        #expect(DNSLookup.addresses(in: good, id: 0x1234, name: "www.example", type: 1) == [[192, 0, 2, 1]])
        #expect(DNSLookup.addresses(in: answer(rcode: 3, records: []), id: 0x1234, name: "www.example", type: 1) == [])
        #expect(DNSLookup.addresses(in: answer(rcode: 2, records: []), id: 0x1234, name: "www.example", type: 1) == nil)
        #expect(DNSLookup.addresses(in: good, id: 0x1235, name: "www.example", type: 1) == nil)  // another id
        #expect(DNSLookup.addresses(in: good, id: 0x1234, name: "ftp.example", type: 1) == nil)  // another question
        #expect(DNSLookup.addresses(in: good, id: 0x1234, name: "www.example", type: 28) == nil)
        #expect(DNSLookup.addresses(in: Array(good.dropLast(2)), id: 0x1234, name: "www.example", type: 1) == nil)
        var query = good
        query[2] &= 0x7f  // QR clear: a query, not an answer
        #expect(DNSLookup.addresses(in: query, id: 0x1234, name: "www.example", type: 1) == nil)
    }
}
