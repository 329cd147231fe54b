import Testing
@testable import NetWorker

/// `RequestTarget(parsing:)`: how the request target of an admin, stats or readiness request is
/// split into a path and query parameters, including the odd shapes a client may send.
@Suite struct RequestTargetTests {
    @Test func noQuestionMarkIsAllPath() {
        let target = RequestTarget(parsing: "/config_dump")
        #expect(target.path == "/config_dump")
        #expect(target.query.isEmpty)
        #expect(RequestTarget(parsing: "/a=b&c=d") == RequestTarget(path: "/a=b&c=d"))
    }

    @Test func pathAndQuerySplitAtTheFirstQuestionMark() {
        let target = RequestTarget(parsing: "/debug/fault?kind=seccomp&x=1")
        #expect(target.path == "/debug/fault")
        #expect(target.query == ["kind": "seccomp", "x": "1"])
        // A later `?` belongs to the query.
        #expect(RequestTarget(parsing: "/p?a=b?c") == RequestTarget(path: "/p", query: ["a": "b?c"]))
    }

    @Test func lonelyQuestionMarkGivesNoParameters() {
        #expect(RequestTarget(parsing: "/config_dump?") == RequestTarget(path: "/config_dump", query: [:]))
        #expect(RequestTarget(parsing: "?") == RequestTarget(path: "", query: [:]))
    }

    @Test func emptyKeyAndValue() {
        #expect(RequestTarget(parsing: "/config_dump?=") == RequestTarget(path: "/config_dump", query: ["": ""]))
        #expect(RequestTarget(parsing: "/p?=v") == RequestTarget(path: "/p", query: ["": "v"]))
    }

    @Test func emptyPairsAreSkipped() {
        // "&&" separates nothing; the only pair is the empty key with an empty value.
        #expect(RequestTarget(parsing: "/p?&&=&") == RequestTarget(path: "/p", query: ["": ""]))
        #expect(RequestTarget(parsing: "/p?&") == RequestTarget(path: "/p", query: [:]))
        #expect(RequestTarget(parsing: "/p?a&&b") == RequestTarget(path: "/p", query: ["a": "", "b": ""]))
    }

    @Test func valueKeepsLaterEqualsSigns() {
        #expect(RequestTarget(parsing: "/p?a==b") == RequestTarget(path: "/p", query: ["a": "=b"]))
        #expect(RequestTarget(parsing: "/p?a=b=c") == RequestTarget(path: "/p", query: ["a": "b=c"]))
    }

    @Test func loneEqualsSign() {
        #expect(RequestTarget(parsing: "=") == RequestTarget(path: "=", query: [:]))
        #expect(RequestTarget(parsing: "/=") == RequestTarget(path: "/=", query: [:]))
    }

    @Test func keyWithoutEqualsHasEmptyValue() {
        #expect(RequestTarget(parsing: "/p?flag") == RequestTarget(path: "/p", query: ["flag": ""]))
    }

    @Test func noPercentDecoding() {
        #expect(RequestTarget(parsing: "/a%20b?k%3D=v%26") == RequestTarget(path: "/a%20b", query: ["k%3D": "v%26"]))
    }

    @Test func firstOfRepeatedKeysWins() {
        #expect(RequestTarget(parsing: "/debug/fault?kind=seccomp&kind=ipc-garbage").query == ["kind": "seccomp"])
        #expect(RequestTarget(parsing: "/p?kind&kind=x").query == ["kind": ""])
        #expect(RequestTarget(parsing: "/p?kind=a&other=b&kind=").query == ["kind": "a", "other": "b"])
    }

    @Test func parametersBeyondTheMaximumAreIgnored() {
        let limit = RequestTarget.maxParameters
        let pairs = (0..<(limit + 4)).map { "k\($0)=\($0)" }
        let target = RequestTarget(parsing: "/p?" + pairs.joined(separator: "&"))
        #expect(target.path == "/p")
        #expect(target.query.count == limit)
        #expect(target.query["k0"] == "0")
        #expect(target.query["k\(limit - 1)"] == "\(limit - 1)")
        #expect(target.query["k\(limit)"] == nil)
        // Empty pairs do not count against the limit; a repeat does and keeps the first value.
        let repeated = (0..<limit).map { _ in "kind=late" }
        let late = RequestTarget(parsing: "/p?&&kind=first&" + repeated.joined(separator: "&") + "&x=1")
        #expect(late.query == ["kind": "first"])
    }

    @Test func exactlyTheMaximumIsKept() {
        let limit = RequestTarget.maxParameters
        let target = RequestTarget(parsing: "/p?" + (0..<limit).map { "k\($0)" }.joined(separator: "&"))
        #expect(target.query.count == limit)
    }
}
