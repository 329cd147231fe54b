/// A JSON value with a deterministic writer: object keys keep the order they were given, so audit
/// lines and /config_dump output are stable. It writes JSON; it does not parse it.
public indirect enum JSON: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int64)
    case string(String)
    case array([JSON])
    case object([(String, JSON)])

    public static func == (lhs: JSON, rhs: JSON) -> Bool { lhs.serialized() == rhs.serialized() }

    /// Compact (one line) or indented with two spaces.
    public func serialized(pretty: Bool = false) -> String {
        var out = ""
        write(into: &out, pretty: pretty, depth: 0)
        return out
    }

    private func write(into out: inout String, pretty: Bool, depth: Int) {
        switch self {
        case .null: out += "null"
        case .bool(let value): out += value ? "true" : "false"
        case .int(let value): out += String(value)
        case .string(let value): JSON.escape(value, into: &out)
        case .array(let items):
            writeContainer(into: &out, open: "[", close: "]", count: items.count, pretty: pretty, depth: depth) { index, out in
                items[index].write(into: &out, pretty: pretty, depth: depth + 1)
            }
        case .object(let members):
            writeContainer(into: &out, open: "{", close: "}", count: members.count, pretty: pretty, depth: depth) { index, out in
                JSON.escape(members[index].0, into: &out)
                out += pretty ? ": " : ":"
                members[index].1.write(into: &out, pretty: pretty, depth: depth + 1)
            }
        }
    }

    private func writeContainer(
        into out: inout String, open: String, close: String, count: Int, pretty: Bool, depth: Int,
        element: (Int, inout String) -> Void
    ) {
        out += open
        if count == 0 { out += close; return }
        let indent = pretty ? "\n" + String(repeating: "  ", count: depth + 1) : ""
        for index in 0..<count {
            if index > 0 { out += "," }
            out += indent
            element(index, &out)
        }
        if pretty { out += "\n" + String(repeating: "  ", count: depth) }
        out += close
    }

    static func escape(_ text: String, into out: inout String) {
        out += "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
    }
}
