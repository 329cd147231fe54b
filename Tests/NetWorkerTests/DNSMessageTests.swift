import Testing
@testable import NetWorker

/// The DNS proxy's codec (RFC 1035) and its candidate names (ISTIO_COMPAT §13).
@Suite struct DNSMessageTests {
    /// A query as a stub resolver sends it: id, RD, one question, optionally an OPT record.
    private static func query(_ name: String, type: UInt16 = 1, id: UInt16 = 0x1234, opt: UInt16? = nil,
                              qdcount: UInt16 = 1, flags: UInt16 = 0x0100) -> [UInt8] {
        var bytes = DNSResponse.be16(id) + DNSResponse.be16(flags) + DNSResponse.be16(qdcount) + DNSResponse.be16(0)
            + DNSResponse.be16(0) + DNSResponse.be16(opt == nil ? 0 : 1)
        bytes += DNSResponse.encode(name) + DNSResponse.be16(type) + DNSResponse.be16(1)
        if let opt { bytes += [0] + DNSResponse.be16(41) + DNSResponse.be16(opt) + [0, 0, 0, 0] + DNSResponse.be16(0) }
        return bytes
    }

    @Test func parsesTheQuestionLowerCasedWithItsLimits() throws {
        let parsed = try DNSQuery.parse(Self.query("Echo.SHOP.svc.cluster.local", type: 28))
        #expect(parsed.id == 0x1234 && parsed.recursionDesired && parsed.type == 28 && parsed.qclass == 1)
        #expect(parsed.name == "echo.shop.svc.cluster.local")
        #expect(parsed.udpLimit == 512)
        #expect(try DNSQuery.parse(Self.query("a.b", opt: 1232)).udpLimit == 1232)
        #expect(try DNSQuery.parse(Self.query("a.b", opt: 100)).udpLimit == 512)
        #expect(try DNSQuery.parse(Self.query("a.b", opt: 65000)).udpLimit == 4096)
        // A label with other bytes is valid DNS, never a mesh hostname: forwarded untouched.
        #expect(try DNSQuery.parse(Self.query("a b.example")).name == nil)
    }

    @Test func refusesWhatIsNotOneWellFormedQuery() throws {
        #expect(throws: DNSQuery.Failure.short) { try DNSQuery.parse([1, 2, 3]) }
        #expect(throws: DNSQuery.Failure.notAQuery) { try DNSQuery.parse(Self.query("a", flags: 0x8180)) }
        #expect(throws: DNSQuery.Failure.opcode(2)) { try DNSQuery.parse(Self.query("a", flags: 0x1000)) }
        #expect(throws: DNSQuery.Failure.questionCount(2)) { try DNSQuery.parse(Self.query("a", qdcount: 2)) }
        // Cut inside the question, and a name longer than 255 bytes.
        let whole = Self.query("echo.shop")
        #expect(throws: DNSQuery.Failure.short) { try DNSQuery.parse(Array(whole.prefix(whole.count - 2))) }
        let long = Array(repeating: String(repeating: "a", count: 63), count: 5).joined(separator: ".")
        #expect(throws: DNSQuery.Failure.badName) { try DNSQuery.parse(Self.query(long)) }
        // 255 bytes with the root's zero is the most (4 labels of 63 and one of 2: 64*3 + 62 + 1).
        let longest = Array(repeating: String(repeating: "a", count: 63), count: 3).joined(separator: ".") + "." + String(repeating: "b", count: 61)
        #expect(DNSResponse.encode(longest).count == 255)
        #expect(try DNSQuery.parse(Self.query(longest)).name == longest)
        #expect(throws: DNSQuery.Failure.badName) { try DNSQuery.parse(Self.query(longest + "b")) }
        // A pointer into the header.
        #expect(throws: DNSQuery.Failure.badName) { try DNSQuery.parse(Array(whole.prefix(12)) + [0xc0, 4] + [0, 1, 0, 1]) }
        // A compression pointer that points at itself or forward loops nowhere.
        var looping = Array(whole.prefix(12)) + [0xc0, 12] + [0, 1, 0, 1]
        #expect(throws: DNSQuery.Failure.badName) { try DNSQuery.parse(looping) }
        looping = Array(whole.prefix(12)) + [0xc0, 40] + [0, 1, 0, 1]
        #expect(throws: DNSQuery.Failure.badName) { try DNSQuery.parse(looping) }
        // Label lengths 64-191 are reserved.
        #expect(throws: DNSQuery.Failure.badName) { try DNSQuery.parse(Array(whole.prefix(12)) + [0x41, 0, 0, 1, 0, 1]) }
        #expect(DNSQuery.id(of: Self.query("a", qdcount: 2)) == 0x1234)
        #expect(DNSQuery.id(of: Self.query("a", flags: 0x8180)) == nil)
    }

    @Test func answersAreAuthoritativeWithTheQuestionAndTTL30() throws {
        let query = try DNSQuery.parse(Self.query("echo.shop"))
        let answer = DNSResponse.answer(query, records: [.cname("echo.shop.svc.cluster.local"), .a([10, 96, 0, 42])], udp: true)
        #expect(Array(answer[0..<2]) == [0x12, 0x34])
        #expect(answer[2] == 0x85 && answer[3] == 0x80)  // QR, AA, RD; RA, NOERROR
        #expect(Array(answer[4..<8]) == [0, 1, 0, 2])
        let questionEnd = 12 + query.question.count
        #expect(Array(answer[12..<questionEnd]) == Array(query.question))
        // CNAME owned by the question's name (pointer to 12), then A owned by the CNAME's target.
        #expect(Array(answer[questionEnd..<questionEnd + 4]) == [0xc0, 0x0c, 0, 5])
        let target = DNSResponse.encode("echo.shop.svc.cluster.local")
        let aOwner = questionEnd + 12
        #expect(Array(answer[aOwner..<aOwner + target.count]) == target)
        let aRecord = aOwner + target.count
        #expect(Array(answer[aRecord..<aRecord + 2]) == DNSResponse.pointer(to: aOwner))
        #expect(Array(answer[(aRecord + 2)...]) == [0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 96, 0, 42])
    }

    @Test func aUDPAnswerOverTheClientsLimitKeepsWhatFitsAndSetsTC() throws {
        let query = try DNSQuery.parse(Self.query("many.example"))
        let records = (0..<40).map { DNSRecord.aaaa(Array(repeating: UInt8($0), count: 16)) }
        let answer = DNSResponse.answer(query, records: records, udp: true)
        // Each AAAA record here is 2 + 10 + 16 = 28 bytes after the header and question.
        let fit = (512 - 12 - query.question.count) / 28
        #expect(answer[2] & 0x02 != 0 && answer.count <= 512)
        #expect(Int(DNSQuery.u16(answer, 6)) == fit && answer.count == 12 + query.question.count + fit * 28)
        let overTCP = DNSResponse.answer(query, records: records, udp: false)
        #expect(overTCP[2] & 0x02 == 0 && DNSQuery.u16(overTCP, 6) == 40)
        let big = try DNSQuery.parse(Self.query("many.example", opt: 4096))
        #expect(DNSResponse.answer(big, records: records, udp: true)[2] & 0x02 == 0)
        // A forwarded answer too long for the client keeps its header's flags and code.
        var upstream = DNSResponse.failure(id: 0x1234, rcode: 3, query: query) + Array(repeating: 0, count: 600)
        upstream[7] = 9
        let cut = DNSResponse.forUDP(upstream, query: query)
        #expect(cut[2] & 0x02 != 0 && cut[3] & 0x0f == 3 && Array(cut[4..<12]) == [0, 1, 0, 0, 0, 0, 0, 0])
        #expect(cut.count == 12 + query.question.count)
    }

    /// RFC 6891: an EDNS query's answer (or failure) ends with our OPT record, counted in ARCOUNT,
    /// and a UDP answer cut to the client's limit still has room for it; a plain query's has none.
    @Test func anEDNSQueryIsAnsweredWithAnOPTRecordThatFits() throws {
        let opt: [UInt8] = [0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, 0, 0]  // root, OPT, 1232, TTL 0, no data
        #expect(DNSResponse.opt == opt)
        let edns = try DNSQuery.parse(Self.query("echo.shop", opt: 512))
        #expect(edns.hasEDNS)
        let answer = DNSResponse.answer(edns, records: [.a([10, 96, 0, 42])], udp: true)
        #expect(DNSQuery.u16(answer, 10) == 1 && Array(answer.suffix(opt.count)) == opt)
        let records = (0..<40).map { DNSRecord.aaaa(Array(repeating: UInt8($0), count: 16)) }
        let cut = DNSResponse.answer(edns, records: records, udp: true)
        #expect(cut[2] & 0x02 != 0 && cut.count <= 512 && Array(cut.suffix(opt.count)) == opt)
        #expect(Int(DNSQuery.u16(cut, 6)) == (512 - 12 - edns.question.count - opt.count) / 28)
        let failed = DNSResponse.failure(id: edns.id, rcode: DNSResponse.servFail, query: edns)
        #expect(DNSQuery.u16(failed, 10) == 1 && Array(failed.suffix(opt.count)) == opt)
        let plain = try DNSQuery.parse(Self.query("echo.shop"))
        #expect(!plain.hasEDNS && DNSQuery.u16(DNSResponse.answer(plain, records: [.a([1, 2, 3, 4])], udp: true), 10) == 0)
    }

    @Test func candidatesFollowTheKubernetesExpansionsThenWildcards() {
        #expect(DNSNames.candidates("echo", clientNamespace: "shop", domain: "cluster.local") ==
                ["echo", "echo.shop.svc.cluster.local", "*.shop.svc.cluster.local", "*.svc.cluster.local", "*.cluster.local", "*.local"])
        #expect(Array(DNSNames.candidates("echo.shop", clientNamespace: "web", domain: "cluster.local").prefix(4)) ==
                ["echo.shop", "*.shop", "echo.shop.svc.cluster.local", "*.shop.svc.cluster.local"])
        let three = DNSNames.candidates("echo.shop.svc", clientNamespace: "web", domain: "cluster.local")
        #expect(three.contains("echo.shop.svc.cluster.local") && three.contains("echo.shop.svc.svc.cluster.local"))
        #expect(three.firstIndex(of: "echo.shop.svc.cluster.local")! < three.firstIndex(of: "echo.shop.svc.svc.cluster.local")!)
        #expect(DNSNames.candidates("echo.shop.svc.cluster.local", clientNamespace: "web", domain: "cluster.local").first
                == "echo.shop.svc.cluster.local")
        #expect(DNSNames.candidates("", clientNamespace: "web", domain: "cluster.local").isEmpty)
        #expect(DNSNames.candidates("a..b", clientNamespace: "web", domain: "cluster.local").isEmpty)
    }
}
