import Testing
@testable import Supervisor

/// The per-NetWorker budgets the Supervisor holds NetWorkers to (on-demand lookups, pod sockets).
@Suite struct PerSecondBudgetTests {
    /// Within a second, no more than the budget, one by one or in bulk; the next whole second
    /// starts again; each NetWorker index has its own.
    @Test func aNetWorkerGetsItsBudgetPerSecondAndNoMore() {
        var budget = PerSecondBudget<UInt16>(perSecond: 1024)
        let granted = (0..<5000).map { budget.spend(0, nowMilliseconds: 10_000 + Int64($0 % 1000)) }.reduce(0, +)
        #expect(granted == 1024)
        #expect(budget.refusals(0, nowMilliseconds: 10_999) == 5000 - 1024 && budget.refusals(0, nowMilliseconds: 11_000) == 0)
        #expect(budget.spend(1, nowMilliseconds: 10_999) == 1)          // another NetWorker
        #expect(budget.spend(0, nowMilliseconds: 11_000) == 1)          // the next second
        #expect(budget.spend(0, upTo: 5000, nowMilliseconds: 11_500) == 1023)
        #expect(budget.spend(0, upTo: 1, nowMilliseconds: 11_999) == 0)
        #expect(budget.spend(0, upTo: 0, nowMilliseconds: 12_000) == 0)
        #expect(budget.spend(0, upTo: -3, nowMilliseconds: 12_000) == 0)
    }
}
