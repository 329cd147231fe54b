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
    private var windows: [String: (second: Int64, written: Int, dropped: [String: Int])] = [:]

    init(perSecond: Int) { self.perSecond = perSecond }

    /// Whether `worker` may cause `event` now; the summary of its previous second, if that one
    /// is over and lost events (to be written first).
    mutating func admit(_ event: String, by worker: String, nowMilliseconds: Int64) -> (Bool, Summary?) {
        let second = nowMilliseconds / 1000
        var summary: Summary?
        var window = windows[worker] ?? (second: second, written: 0, dropped: [:])
        if window.second != second {
            summary = Self.summary(worker, window.dropped)
            window = (second: second, written: 0, dropped: [:])
        }
        let admitted = window.written < perSecond
        if admitted { window.written += 1 } else { window.dropped[event, default: 0] += 1 }
        windows[worker] = window
        return (admitted, summary)
    }

    /// The summaries of every worker whose second with losses is over; those windows are reset.
    mutating func due(nowMilliseconds: Int64) -> [Summary] {
        let second = nowMilliseconds / 1000
        var summaries: [Summary] = []
        for (worker, window) in windows where window.second != second {
            if let summary = Self.summary(worker, window.dropped) { summaries.append(summary) }
            windows[worker] = nil
        }
        return summaries.sorted { $0.worker < $1.worker }
    }

    /// When `due` next has something to give: the end of the earliest second that lost events.
    var nextDue: Int64? {
        windows.values.filter { !$0.dropped.isEmpty }.map { ($0.second + 1) * 1000 }.min()
    }

    private static func summary(_ worker: String, _ dropped: [String: Int]) -> Summary? {
        guard !dropped.isEmpty else { return nil }
        return Summary(worker: worker, dropped: dropped.values.reduce(0, +),
                       events: dropped.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ","))
    }
}
