/// The request target of an HTTP/1.1 request on the admin, stats and readiness ports, split into
/// its path and query parameters. Pure and self-contained (no imports), so the fuzz target in
/// `Fuzz/targets/request_target.swift` compiles it alone.
///
/// It never traps on what a client sends: `?`, `?=`, `?&&`, `?a=b=c`, a lone `=` and empty keys
/// are all parameters (an empty key is kept as "" and then matches no endpoint's parameter).
/// It does not percent-decode: no endpoint takes a parameter value that would need it, and
/// decoding is where parsers grow bugs. Repeated keys keep the first value, so a later `&kind=`
/// cannot override what an earlier one said.
struct RequestTarget: Equatable {
    var path: String
    var query: [String: String]

    /// The most parameters kept; a target with more is still served, the rest are ignored.
    static let maxParameters = 16

    init(path: String, query: [String: String] = [:]) {
        self.path = path
        self.query = query
    }

    init(parsing uri: String) {
        guard let mark = uri.firstIndex(of: "?") else {
            self.init(path: uri)
            return
        }
        var query: [String: String] = [:]
        // omittingEmptySubsequences: "a&&b" yields two pairs, "&" none.
        for pair in uri[uri.index(after: mark)...].split(separator: "&").prefix(Self.maxParameters) {
            let key: Substring
            let value: Substring
            if let equals = pair.firstIndex(of: "=") {
                key = pair[..<equals]
                value = pair[pair.index(after: equals)...]
            } else {
                key = pair
                value = ""
            }
            if query[String(key)] == nil { query[String(key)] = String(value) }
        }
        self.init(path: String(uri[..<mark]), query: query)
    }
}
