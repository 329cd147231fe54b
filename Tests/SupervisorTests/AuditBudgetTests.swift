import Testing
@testable import Supervisor

/// What a worker can make the Supervisor write to the audit sink (`AuditBudget`).
@Suite struct AuditBudgetTests {
    /// 5,000 events in one second: the budget is written, the rest counted by name, and the
    /// summary comes once that second is over, with every lost event accounted for.
    @Test func aFloodIsCutToTheBudgetAndEveryLossIsSummed() {
        var budget = AuditBudget(perSecond: 100)
        var written = 0
        for index in 0..<5000 {
            let event = index % 2 == 0 ? "certificate_issued" : "csr_sent"
            let (admitted, summary) = budget.admit(event, by: "cert-worker[0]", nowMilliseconds: 7_000 + Int64(index % 1000))
            #expect(summary == nil)
            if admitted { written += 1 }
        }
        #expect(written == 100)
        #expect(budget.nextDue == 8_000)
        #expect(budget.due(nowMilliseconds: 7_999).isEmpty)  // the second is not over
        let summaries = budget.due(nowMilliseconds: 8_000)
        #expect(summaries == [.init(worker: "cert-worker[0]", dropped: 4900, events: "certificate_issued:2450,csr_sent:2450")])
        #expect(budget.due(nowMilliseconds: 9_000).isEmpty && budget.nextDue == nil)  // said once
    }

    /// Each worker has its own budget; a new second starts again, and the next event after a
    /// second with losses brings that second's summary along.
    @Test func perWorkerAndPerSecond() {
        var budget = AuditBudget(perSecond: 2)
        for _ in 0..<3 { _ = budget.admit("mesh_snapshot", by: "xds-worker[0]", nowMilliseconds: 1_500) }
        #expect(budget.admit("certificate_issued", by: "cert-worker[0]", nowMilliseconds: 1_500).0)
        let (admitted, summary) = budget.admit("mesh_snapshot", by: "xds-worker[0]", nowMilliseconds: 2_000)
        #expect(admitted && summary == .init(worker: "xds-worker[0]", dropped: 1, events: "mesh_snapshot:1"))
        #expect(budget.nextDue == nil)  // nothing lost in the second now running
        #expect(budget.due(nowMilliseconds: 3_000).isEmpty)
    }
}
