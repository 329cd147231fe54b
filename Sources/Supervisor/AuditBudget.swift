import Shared

/// What the workers can make the Supervisor write to the audit sink, per second (threat model:
/// a compromised CertWorker could otherwise write events at any rate, and an xDS worker or a
/// NetWorker cause one per snapshot or answer, until the disk is full).
///
/// Each worker (by its slot's name, `cert-worker[0]`) may cause `perSecond` events in each whole
/// second of the monotonic clock; the rest are not written but counted by event name. Once that
/// second is over, `due` gives one summary per worker that lost some (`audit_events_dropped`),
/// so the sink always says that, how many and what was left out. The Supervisor's own events
/// (starts, exits, violations) are never held back: they are bounded by what it does.
struct AuditBudget {
    struct Summary: Equatable {
        let worker: String
        let dropped: Int
        /// `event:count`, by event name.
        let events: String
    }

    let perSecond: Int
    /// What each worker wrote this second (the per-second arithmetic of the other budgets).
    private var written: PerSecondBudget<String>
    /// What each worker lost, by event name, in the second it lost them.
    private var lost: [String: (second: Int64, counts: [String: Int])] = [:]

    init(perSecond: Int) {
        self.perSecond = perSecond
        written = PerSecondBudget(perSecond: perSecond)
    }

    /// Whether `worker` may cause `event` now; the summary of its previous second, if that one
    /// is over and lost events (to be written first).
    mutating func admit(_ event: String, by worker: String, nowMilliseconds: Int64) -> (Bool, Summary?) {
        let second = nowMilliseconds / 1000
        var summary: Summary?
        if let earlier = lost[worker], earlier.second != second {
            summary = Self.summary(worker, earlier.counts)
            lost[worker] = nil
        }
        let admitted = written.spend(worker, nowMilliseconds: nowMilliseconds) == 1
        if !admitted { lost[worker, default: (second, [:])].counts[event, default: 0] += 1 }
        return (admitted, summary)
    }

    /// The summaries of every worker whose second with losses is over; those are forgotten.
    mutating func due(nowMilliseconds: Int64) -> [Summary] {
        let second = nowMilliseconds / 1000
        var summaries: [Summary] = []
        for (worker, earlier) in lost where earlier.second != second {
            if let summary = Self.summary(worker, earlier.counts) { summaries.append(summary) }
            lost[worker] = nil
        }
        return summaries.sorted { $0.worker < $1.worker }
    }

    /// When `due` next has something to give: the end of the earliest second that lost events.
    var nextDue: Int64? {
        lost.values.map { ($0.second + 1) * 1000 }.min()
    }

    private static func summary(_ worker: String, _ dropped: [String: Int]) -> Summary? {
        guard !dropped.isEmpty else { return nil }
        return Summary(worker: worker, dropped: dropped.values.reduce(0, +),
                       events: dropped.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ","))
    }
}
