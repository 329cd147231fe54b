@testable import Shared
import Testing

/// POST /logging (ISTIO_COMPAT §17.1) as a function of the filter in force and the query.
@Suite struct LogFilterChangeTests {
    func outcome(_ query: [String: String], current: String = "info", initial: String = "info") -> LogFilterChange.Outcome {
        LogFilterChange.outcome(current: current, initial: initial, query: query)
    }

    @Test func noParameterReports() {
        #expect(outcome([:]) == .report)
    }

    @Test func levelAppendsItems() {
        #expect(outcome(["level": "debug"]) == .change("info,debug"))
        #expect(outcome(["level": "ztunnel%3A%3Aproxy%3Ddebug%2Caccess%3Doff"], current: "warn") == .change("warn,ztunnel::proxy=debug,access=off"))
        #expect(outcome(["level": "off"], current: "") == .change("off"))
    }

    @Test func resetGoesBackToTheStartThenAppends() {
        #expect(outcome(["reset": ""], current: "info,debug", initial: "warn") == .change("warn"))
        #expect(outcome(["reset": "", "level": "access=debug"], current: "info,debug", initial: "warn") == .change("warn,access=debug"))
    }

    @Test func badRequestsChangeNothing() {
        for query in [["level": "loud"], ["level": ""], ["level": "%zz"], ["level": "%ff%fe"], ["level": "a b=debug"],
                      ["verbose": "1"], ["level": "debug", "extra": ""]] {
            guard case .refused = outcome(query) else { Issue.record("accepted \(query)"); continue }
        }
        let long = String(repeating: "debug,", count: 200)
        guard case .refused = outcome(["level": long]) else { Issue.record("accepted a filter of \(long.count) bytes"); return }
    }

    @Test func theFilterIsInForceOnEveryThreadAndABadOneIsRefused() throws {
        Log.configure(level: "info", format: "plain", component: "net-worker[0]")
        #expect(Log.isEnabled(.info) && !Log.isEnabled(.debug))
        try Log.setFilter("info,ztunnel::proxy=debug,access=off")
        #expect(Log.isEnabled(.debug) && !Log.isAccessEnabled(.error))
        #expect(throws: (any Error).self) { try Log.setFilter("loud") }
        #expect(Log.filter == "info,ztunnel::proxy=debug,access=off" && Log.initialFilter == "info")
        Log.configure(level: "info", format: "plain", component: "net-worker[0]")
    }
}
