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
}
