/// The nameservers of an /etc/resolv.conf text, in order, at most 3 (as glibc reads them).
public enum ResolvConf {
    public static func nameservers(_ text: String) -> [String] {
        var out: [String] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 2, fields[0] == "nameserver", out.count < 3 else { continue }
            out.append(String(fields[1]))
        }
        return out
    }

    /// The search list (resolv(5)): the domains of the last `search` or `domain` line, lower-cased,
    /// without trailing dots, at most 6, each a host name of at most 253 bytes (others skipped).
    public static func searchDomains(_ text: String) -> [String] {
        var out: [String] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let keyword = fields.first, keyword == "search" || keyword == "domain" else { continue }
            out = []
            for field in fields.dropFirst() where out.count < 6 {
                var domain = field.lowercased()
                while domain.hasSuffix(".") { domain.removeLast() }
                let labels = domain.split(separator: ".", omittingEmptySubsequences: false)
                guard !domain.isEmpty, domain.utf8.count <= 253, labels.allSatisfy({ label in
                    !label.isEmpty && label.utf8.count <= 63 && label.utf8.allSatisfy { byte in
                        (0x61...0x7a).contains(byte) || (0x30...0x39).contains(byte) || byte == 0x2d || byte == 0x5f
                    }
                }) else { continue }
                out.append(domain)
            }
        }
        return out
    }
}
