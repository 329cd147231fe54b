/// libFuzzer target: the DNS proxy's outside bytes (Sources/NetWorker/DNSMessage.swift,
/// Sources/Shared/ResolvConf.swift). Nothing may trap. The input is taken as:
/// - a message from a pod (UDP): what parses has a name of at most 255 bytes made of the allowed
///   characters; an answer to it (with the input's tail as records) starts with the query's id
///   and question, and over UDP stays within the client's limit, ending with our OPT record when
///   the query had one; candidate names are distinct;
/// - a nameserver's answer to that query: cut for UDP it stays within the limit and keeps the
///   question; its id restored is the query's;
/// - a TCP stream from a pod: the frames it splits into lie within it, in order;
/// - a resolv.conf: at most 3 nameservers, each one word; at most 6 search domains, each a name;
/// - a nameserver's answer to one of our own lookups (SOCKS5 names): the addresses taken are
///   4 bytes each (A) and at most one per record looked at; and the input as a name to look
///   up: a query made for it parses back to that name and type.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDNS(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    _ = DNSQuery.id(of: bytes)
    var rest = bytes[...]
    var frames = 0
    while let (message, consumed) = DNSTCPFrame.next(rest) {
        if message.startIndex != rest.startIndex + 2 || message.endIndex > rest.endIndex || consumed != message.count + 2 {
            fatalError("a TCP frame outside its stream")
        }
        _ = try? DNSQuery.parse(Array(message))
        rest = rest.dropFirst(consumed)
        frames += 1
        if frames > 1000 { break }
    }
    let servers = ResolvConf.nameservers(String(decoding: bytes, as: UTF8.self))
    if servers.count > 3 || servers.contains(where: { $0.isEmpty || $0.contains(" ") || $0.contains("\t") }) {
        fatalError("resolv.conf read as \(servers)")
    }
    let search = ResolvConf.searchDomains(String(decoding: bytes, as: UTF8.self))
    if search.count > 6 || search.contains(where: { $0.isEmpty || $0.utf8.count > 253 || $0.contains(" ") || $0.hasSuffix(".") }) {
        fatalError("search domains read as \(search)")
    }
    if bytes.count >= 12 {
        for name in ["www.example", "a"] {
            if let found = DNSLookup.addresses(in: bytes, id: DNSQuery.u16(bytes, 0), name: name, type: DNSQuery.typeA),
               found.count > DNSLookup.maxRecords || found.contains(where: { $0.count != 4 }) {
                fatalError("addresses \(found) from an answer")
            }
        }
    }
    let asName = String(decoding: bytes.prefix(300), as: UTF8.self)
    if let lookup = DNSLookup.query(id: 7, name: asName, type: DNSQuery.typeAAAA) {
        guard let parsed = try? DNSQuery.parse(lookup), parsed.name == asName.lowercased(), parsed.type == DNSQuery.typeAAAA,
              parsed.id == 7 else { fatalError("a lookup of \(asName) does not parse back") }
    }
    guard let query = try? DNSQuery.parse(bytes) else { return 0 }
    if let name = query.name {
        if name.utf8.count > 255 { fatalError("a name of \(name.utf8.count) bytes") }
        for byte in name.utf8 where !(byte == 0x2e || byte == 0x2d || byte == 0x5f || byte == 0x2a
                                      || (0x30...0x39).contains(byte) || (0x61...0x7a).contains(byte)) {
            fatalError("a name with byte \(byte)")
        }
        let candidates = DNSNames.candidates(name, clientNamespace: "ns", domain: "cluster.local")
        if Set(candidates).count != candidates.count { fatalError("repeated candidates") }
    }
    if query.udpLimit < 512 || query.udpLimit > 4096 { fatalError("udp limit \(query.udpLimit)") }
    var records: [DNSRecord] = []
    var tail = bytes.suffix(from: min(bytes.count, 12 + query.question.count))[...]
    while let kind = tail.first, records.count < 64 {
        tail = tail.dropFirst()
        switch kind % 3 {
        case 0: records.append(.a(Array(tail.prefix(4)))); tail = tail.dropFirst(4)
        case 1: records.append(.aaaa(Array(tail.prefix(16)))); tail = tail.dropFirst(16)
        default: records.append(.cname(String(decoding: tail.prefix(40), as: UTF8.self))); tail = tail.dropFirst(40)
        }
    }
    // The input, with QR set, as a nameserver's answer to this query (its id our own).
    var answer = bytes
    answer[2] |= 0x80
    answer[0] ^= 0x5a
    if DNSResponse.isAnswer(answer) {
        let bytes = answer
        let restored = DNSResponse.restoringID(bytes, to: query.id)
        if DNSQuery.u16(restored, 0) != query.id || restored.count != bytes.count { fatalError("id not restored") }
        let cut = DNSResponse.forUDP(bytes, query: query)
        if bytes.count <= query.udpLimit {
            if cut != bytes { fatalError("an answer that fits was changed") }
        } else if cut.count > query.udpLimit || cut[2] & 0x02 == 0 || Array(cut[12...]) != Array(query.question) {
            fatalError("a cut answer of \(cut.count) bytes, over \(query.udpLimit), without TC or without the question")
        }
    }
    for udp in [true, false] {
        let answer = DNSResponse.answer(query, records: records, udp: udp)
        if answer.count < 12 + query.question.count || DNSQuery.u16(answer, 0) != query.id
            || Array(answer[12..<12 + query.question.count]) != Array(query.question) {
            fatalError("an answer without the query's id and question")
        }
        if udp && answer.count > query.udpLimit { fatalError("a UDP answer of \(answer.count) bytes over \(query.udpLimit)") }
        if query.hasEDNS && (DNSQuery.u16(answer, 10) != 1 || Array(answer.suffix(DNSResponse.opt.count)) != DNSResponse.opt) {
            fatalError("an answer to an EDNS query without our OPT record")
        }
    }
    return 0
}
