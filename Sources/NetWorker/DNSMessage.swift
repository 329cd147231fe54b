// No imports: this file is also compiled alone into the `dns` fuzz target (Fuzz/run.sh).

/// DNS messages as the per-pod DNS proxy (15053, ISTIO_COMPAT §13) reads and writes them
/// (RFC 1035): a query's header, its one question and, for a query over UDP, the EDNS payload
/// size of its OPT record. Everything is bounds-checked; a message this code does not accept is
/// answered FORMERR (when it has a header) or dropped, never trusted further.
struct DNSQuery: Equatable {
    static let maxNameBytes = 255
    static let maxMessageBytes = 65_535

    var id: UInt16
    /// The query's RD bit, echoed in the answer.
    var recursionDesired: Bool
    /// Lower-cased, without the trailing dot ("" for the root); nil when a label holds bytes a
    /// mesh hostname never has (such a query is forwarded untouched).
    var name: String?
    var type: UInt16
    var qclass: UInt16
    /// The question as it came (name, type, class), copied into the answer.
    var question: ArraySlice<UInt8>
    /// The client's UDP payload limit: 512, or its OPT record's size (at most 4,096).
    var udpLimit: Int
    /// The query carried an OPT record (EDNS, RFC 6891): the answer carries one too.
    var hasEDNS = false

    enum Failure: Error, Equatable {
        case short, notAQuery, opcode(UInt8), questionCount(UInt16), badName, trailing
    }

    static let typeA: UInt16 = 1, typeCNAME: UInt16 = 5, typeAAAA: UInt16 = 28, typeOPT: UInt16 = 41
    static let classIN: UInt16 = 1

    /// Parses a query. `Failure.opcode` and `.questionCount` still have a usable id (the caller
    /// answers NOTIMP / FORMERR); the others are FORMERR when there is a header at all.
    static func parse(_ bytes: [UInt8]) throws -> DNSQuery {
        guard bytes.count >= 12, bytes.count <= maxMessageBytes else { throw Failure.short }
        let flags = UInt16(bytes[2]) << 8 | UInt16(bytes[3])
        guard flags & 0x8000 == 0 else { throw Failure.notAQuery }
        let opcode = UInt8((flags >> 11) & 0xf)
        guard opcode == 0 else { throw Failure.opcode(opcode) }
        let qdcount = u16(bytes, 4), ancount = u16(bytes, 6), nscount = u16(bytes, 8), arcount = u16(bytes, 10)
        guard qdcount == 1 else { throw Failure.questionCount(qdcount) }
        var offset = 12
        let name = try readName(bytes, &offset)
        guard offset + 4 <= bytes.count else { throw Failure.short }
        let type = u16(bytes, offset), qclass = u16(bytes, offset + 2)
        offset += 4
        let question = bytes[12..<offset]
        var udpLimit = 512
        var hasEDNS = false
        // Only a plain query carries records after its question: its OPT record, if any.
        if ancount == 0 && nscount == 0 && arcount > 0 && arcount <= 8 {
            for _ in 0..<arcount {
                _ = try readName(bytes, &offset)
                guard offset + 10 <= bytes.count else { throw Failure.short }
                let recordType = u16(bytes, offset), recordClass = u16(bytes, offset + 2)
                let length = Int(u16(bytes, offset + 8))
                offset += 10
                guard offset + length <= bytes.count else { throw Failure.short }
                offset += length
                if recordType == typeOPT {
                    udpLimit = min(max(Int(recordClass), 512), 4096)
                    hasEDNS = true
                }
            }
        }
        return DNSQuery(id: u16(bytes, 0), recursionDesired: flags & 0x0100 != 0, name: name, type: type,
                        qclass: qclass, question: question, udpLimit: udpLimit, hasEDNS: hasEDNS)
    }

    /// The id of anything with a header (for a FORMERR answer to a query that does not parse).
    static func id(of bytes: [UInt8]) -> UInt16? {
        guard bytes.count >= 12, bytes[2] & 0x80 == 0 else { return nil }
        return u16(bytes, 0)
    }

    /// A name in wire form at `offset` (compression pointers followed backwards, at most 16);
    /// moves `offset` past it. Returns nil for a name whose labels hold anything but letters,
    /// digits, '-', '_' and '*' (valid DNS, but never a mesh hostname).
    static func readName(_ bytes: [UInt8], _ offset: inout Int) throws -> String? {
        var labels: [String] = []
        var plain = true
        var position = offset
        var jumped = false
        var jumps = 0
        var total = 0
        while true {
            guard position < bytes.count else { throw Failure.short }
            let length = Int(bytes[position])
            if length & 0xc0 == 0xc0 {
                guard position + 1 < bytes.count else { throw Failure.short }
                let target = (length & 0x3f) << 8 | Int(bytes[position + 1])
                // Backwards only, and never into the header.
                guard target >= 12, target < position, jumps < 16 else { throw Failure.badName }
                if !jumped { offset = position + 2 }
                jumped = true
                jumps += 1
                position = target
                continue
            }
            guard length & 0xc0 == 0 else { throw Failure.badName }
            position += 1
            if length == 0 { break }
            total += length + 1
            // 255 bytes with the root label's zero.
            guard total + 1 <= maxNameBytes, position + length <= bytes.count else { throw Failure.badName }
            var label = ""
            for byte in bytes[position..<position + length] {
                switch byte {
                case UInt8(ascii: "A")...UInt8(ascii: "Z"): label.unicodeScalars.append(Unicode.Scalar(byte + 32))
                case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                     UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "*"):
                    label.unicodeScalars.append(Unicode.Scalar(byte))
                default: plain = false
                }
            }
            labels.append(label)
            position += length
        }
        if !jumped { offset = position }
        return plain ? labels.joined(separator: ".") : nil
    }

    static func u16(_ bytes: [UInt8], _ offset: Int) -> UInt16 { UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1]) }
}

/// DNS over TCP (RFC 1035 4.2.2): each message after its 2-byte length.
enum DNSTCPFrame {
    /// The first whole message at the start of `bytes` and how many bytes it took with its
    /// length; nil while it is incomplete.
    static func next(_ bytes: ArraySlice<UInt8>) -> (message: ArraySlice<UInt8>, consumed: Int)? {
        guard bytes.count >= 2 else { return nil }
        let start = bytes.startIndex
        let length = Int(bytes[start]) << 8 | Int(bytes[start + 1])
        guard bytes.count >= 2 + length else { return nil }
        return (bytes[(start + 2)..<(start + 2 + length)], 2 + length)
    }
}

/// An answer record the proxy writes.
enum DNSRecord: Equatable {
    case a([UInt8])
    case aaaa([UInt8])
    case cname(String)
}

enum DNSResponse {
    static let noError: UInt8 = 0, formErr: UInt8 = 1, servFail: UInt8 = 2, notImp: UInt8 = 4
    static let ttl: UInt32 = 30
    /// The UDP payload size our OPT record advertises (the common safe size since DNS Flag Day
    /// 2020); our answers themselves follow the client's limit.
    static let ednsPayload: UInt16 = 1232

    /// The OPT pseudo-record an answer to an EDNS query ends with: root name, our payload size,
    /// extended code 0, version 0, no flags, no options.
    static var opt: [UInt8] { [0] + be16(DNSQuery.typeOPT) + be16(ednsPayload) + be32(0) + be16(0) }

    /// `out` with the OPT record appended and counted, when the query had one.
    private static func withEDNS(_ out: [UInt8], _ query: DNSQuery?) -> [UInt8] {
        guard let query, query.hasEDNS, out.count >= 12 else { return out }
        var out = out + opt
        out[10] = 0
        out[11] = 1
        return out
    }

    /// An authoritative answer to `query`: the question copied, then `records`. The first record
    /// is owned by the question's name; after a CNAME, the records that follow are owned by its
    /// target. Over UDP, an answer longer than the client's limit keeps the records that fit and
    /// sets TC (a client that can retries over TCP for the rest; one that cannot still has some).
    /// An EDNS query's answer ends with our OPT record, which always fits.
    static func answer(_ query: DNSQuery, rcode: UInt8 = noError, records: [DNSRecord], udp: Bool) -> [UInt8] {
        var out = header(id: query.id, rd: query.recursionDesired, aa: true, rcode: rcode, questions: 1, answers: 0)
        out += query.question
        var owner: [UInt8] = [0xc0, 0x0c]  // the question's name, at offset 12
        var written = 0
        for record in records {
            var bytes = owner
            var nextOwner = owner
            switch record {
            case .a(let address):
                bytes += be16(DNSQuery.typeA) + be16(DNSQuery.classIN) + be32(ttl) + be16(UInt16(address.count)) + address
            case .aaaa(let address):
                bytes += be16(DNSQuery.typeAAAA) + be16(DNSQuery.classIN) + be32(ttl) + be16(UInt16(address.count)) + address
            case .cname(let target):
                let name = encode(target)
                bytes += be16(DNSQuery.typeCNAME) + be16(DNSQuery.classIN) + be32(ttl) + be16(UInt16(name.count))
                nextOwner = pointer(to: out.count + bytes.count)
                bytes += name
            }
            if udp && out.count + bytes.count + (query.hasEDNS ? opt.count : 0) > query.udpLimit {
                out[2] |= 0x02  // TC
                break
            }
            out += bytes
            owner = nextOwner
            written += 1
        }
        out[6] = UInt8(written >> 8)
        out[7] = UInt8(written & 0xff)
        return withEDNS(out, query)
    }

    /// An answer with only a code (SERVFAIL, NOTIMP, FORMERR), the question copied when known.
    static func failure(id: UInt16, rcode: UInt8, query: DNSQuery? = nil) -> [UInt8] {
        var out = header(id: id, rd: query?.recursionDesired ?? false, aa: false, rcode: rcode,
                         questions: query == nil ? 0 : 1, answers: 0)
        if let query { out += query.question }
        return withEDNS(out, query)
    }

    /// A forwarded answer, for a UDP client: as it came when it fits, else the upstream's header
    /// (its flags and rcode kept) with TC set, no records, and the question.
    static func forUDP(_ response: [UInt8], query: DNSQuery) -> [UInt8] {
        guard response.count > query.udpLimit else { return response }
        var out = Array(response.prefix(12))
        out[2] |= 0x02
        out[4] = 0; out[5] = 1
        for index in 6..<12 { out[index] = 0 }
        return out + query.question
    }

    static func header(id: UInt16, rd: Bool, aa: Bool, rcode: UInt8, questions: Int, answers: Int) -> [UInt8] {
        let flags: UInt16 = 0x8000 | (aa ? 0x0400 : 0) | (rd ? 0x0100 : 0) | 0x0080 | UInt16(rcode & 0xf)
        return be16(id) + be16(flags) + be16(UInt16(questions)) + be16(UInt16(answers)) + be16(0) + be16(0)
    }

    /// A name in wire form, without compression; labels longer than 63 bytes are cut (mesh
    /// hostnames come from validated resources and never have them).
    static func encode(_ name: String) -> [UInt8] {
        var out: [UInt8] = []
        for label in name.split(separator: ".") {
            let bytes = Array(label.utf8.prefix(63))
            out.append(UInt8(bytes.count))
            out += bytes
        }
        out.append(0)
        return out
    }

    /// Whether a nameserver's datagram can be an answer at all (a header with QR set).
    static func isAnswer(_ bytes: [UInt8]) -> Bool { bytes.count >= 12 && bytes[2] & 0x80 != 0 }

    /// A forwarded answer under the client's id again (it went out under one of ours).
    static func restoringID(_ answer: [UInt8], to id: UInt16) -> [UInt8] {
        guard answer.count >= 2 else { return answer }
        var answer = answer
        answer[0] = UInt8(id >> 8)
        answer[1] = UInt8(id & 0xff)
        return answer
    }

    static func pointer(to offset: Int) -> [UInt8] { [0xc0 | UInt8((offset >> 8) & 0x3f), UInt8(offset & 0xff)] }
    static func be16(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xff)] }
    static func be32(_ value: UInt32) -> [UInt8] { [UInt8(value >> 24), UInt8((value >> 16) & 0xff), UInt8((value >> 8) & 0xff), UInt8(value & 0xff)] }
}

/// The names a query may mean (ISTIO_COMPAT §13), in the order they are tried: the name itself,
/// then its Kubernetes expansions from the client's namespace; for each, the exact name and then
/// wildcards of decreasing specificity.
enum DNSNames {
    static func candidates(_ name: String, clientNamespace: String, domain: String) -> [String] {
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        guard !name.isEmpty, !labels.contains(where: \.isEmpty) else { return [] }
        var aliases = [name]
        switch labels.count {
        case 1:
            aliases.append("\(name).\(clientNamespace).svc.\(domain)")
        case 2:
            aliases.append("\(name).svc.\(domain)")
            aliases.append("\(name).\(clientNamespace).svc.\(domain)")
        case 3:
            if labels[2] == "svc" { aliases.append("\(name).\(domain)") }
            aliases.append("\(name).svc.\(domain)")
        case 4:
            if labels[3] == "svc" { aliases.append("\(name).\(domain)") }
        default:
            break
        }
        var out: [String] = []
        for alias in aliases {
            out.append(alias)
            let parts = alias.split(separator: ".")
            if parts.count > 1 {
                for start in 1..<parts.count { out.append("*." + parts[start...].joined(separator: ".")) }
            }
        }
        var seen = Set<String>()
        return out.filter { seen.insert($0).inserted }
    }
}

/// A lookup of the NetWorker's own (SOCKS5 names outside the mesh, ISTIO_COMPAT §14): the A or
/// AAAA query it sends to a nameserver, and the addresses it takes from the answer.
enum DNSLookup {
    /// A recursive query for `name` (no trailing dot); nil when `name` is not a host name (an
    /// empty label, a label over 63 bytes, over 253 bytes in all, or a byte other than letters,
    /// digits, '-' and '_').
    static func query(id: UInt16, name: String, type: UInt16) -> [UInt8]? {
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        guard !name.isEmpty, name.utf8.count <= 253,
              labels.allSatisfy({ !$0.isEmpty && $0.utf8.count <= 63 && $0.utf8.allSatisfy(isHostByte) }) else { return nil }
        let flags: UInt16 = 0x0100  // RD
        return DNSResponse.be16(id) + DNSResponse.be16(flags) + DNSResponse.be16(1) + DNSResponse.be16(0)
            + DNSResponse.be16(0) + DNSResponse.be16(0) + DNSResponse.encode(name) + DNSResponse.be16(type)
            + DNSResponse.be16(DNSQuery.classIN)
    }

    private static func isHostByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "_"): return true
        default: return false
        }
    }

    /// At most this many records of an answer are looked at.
    static let maxRecords = 256

    /// The addresses (4 or 16 bytes, per `type`) an answer gives for `name`: the records of the
    /// answer section owned by `name` or by a name a CNAME there leads to, in order. An empty
    /// list for NXDOMAIN or an answer without such records; nil for anything that is not a
    /// well-formed answer to this very question (another id, another question, a server failure).
    static func addresses(in answer: [UInt8], id: UInt16, name: String, type: UInt16) -> [[UInt8]]? {
        guard answer.count >= 12, answer.count <= DNSQuery.maxMessageBytes, DNSQuery.u16(answer, 0) == id,
              answer[2] & 0x80 != 0, DNSQuery.u16(answer, 4) == 1 else { return nil }
        let rcode = answer[3] & 0x0f
        if rcode == 3 { return [] }  // NXDOMAIN
        guard rcode == 0 else { return nil }
        var offset = 12
        guard let asked = try? DNSQuery.readName(answer, &offset), asked == name.lowercased(),
              offset + 4 <= answer.count, DNSQuery.u16(answer, offset) == type,
              DNSQuery.u16(answer, offset + 2) == DNSQuery.classIN else { return nil }
        offset += 4
        let size = type == DNSQuery.typeA ? 4 : 16
        var owners: Set<String> = [asked]
        var found: [[UInt8]] = []
        for _ in 0..<min(Int(DNSQuery.u16(answer, 6)), maxRecords) {
            // A name this code does not read (nil: bytes a host name never has) owns nothing here.
            let owner: String?
            do { owner = try DNSQuery.readName(answer, &offset) } catch { return nil }
            guard offset + 10 <= answer.count else { return nil }
            let recordType = DNSQuery.u16(answer, offset), recordClass = DNSQuery.u16(answer, offset + 2)
            let length = Int(DNSQuery.u16(answer, offset + 8))
            offset += 10
            guard offset + length <= answer.count else { return nil }
            if let owner, owners.contains(owner), recordClass == DNSQuery.classIN {
                if recordType == type && length == size {
                    found.append(Array(answer[offset..<offset + length]))
                } else if recordType == DNSQuery.typeCNAME {
                    var target = offset
                    if let alias = try? DNSQuery.readName(answer, &target), target == offset + length {
                        owners.insert(alias)
                    }
                }
            }
            offset += length
        }
        return found
    }
}
