/// libFuzzer target: one message from a pod to its DNS proxy on 15053 (Sources/NetWorker/
/// DNSMessage.swift, UDP or one TCP frame). Nothing may trap. What parses has a name of at most
/// 255 bytes made of the allowed characters; an answer to it (with the input's tail as records)
/// starts with the query's id and question, and over UDP stays within the client's limit; the
/// candidate names of a parsed name are distinct.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDNS(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    _ = DNSQuery.id(of: bytes)
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
    var rest = bytes.suffix(from: min(bytes.count, 12 + query.question.count))[...]
    while let kind = rest.first, records.count < 64 {
        rest = rest.dropFirst()
        switch kind % 3 {
        case 0: records.append(.a(Array(rest.prefix(4)))); rest = rest.dropFirst(4)
        case 1: records.append(.aaaa(Array(rest.prefix(16)))); rest = rest.dropFirst(16)
        default: records.append(.cname(String(decoding: rest.prefix(40), as: UTF8.self))); rest = rest.dropFirst(40)
        }
    }
    for udp in [true, false] {
        let answer = DNSResponse.answer(query, records: records, udp: udp)
        if answer.count < 12 + query.question.count || DNSQuery.u16(answer, 0) != query.id
            || Array(answer[12..<12 + query.question.count]) != Array(query.question) {
            fatalError("an answer without the query's id and question")
        }
        if udp && answer.count > query.udpLimit { fatalError("a UDP answer of \(answer.count) bytes over \(query.udpLimit)") }
    }
    return 0
}
