import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// The NetWorker's event loops, measured by NIO after each tick: the counterpart of upstream's
/// `tokio_*` runtime families (ISTIO_COMPAT §15.1 allows our own names). Per loop: the time it
/// spent working (a tick from wake-up to its end) and its ticks and tasks; and how many loops
/// there are. Labelled by NetWorker, so the scrape shows every NetWorker's loops side by side
/// (a loop busy all the time is the data plane's bottleneck).
final class LoopMetrics: NIOEventLoopMetricsDelegate, Sendable {
    private struct Loop {
        let index: Int
        var busyNanos: UInt64 = 0
        var ticks: UInt64 = 0
        var tasks: UInt64 = 0
    }

    private let loops = NIOLockedValueBox<[ObjectIdentifier: Loop]>([:])
    private let netWorker: UInt16

    init(netWorker: UInt16) { self.netWorker = netWorker }

    /// On the loop's own thread after every tick: a few additions under an uncontended lock.
    func processedTick(info: NIOEventLoopTickInfo) {
        let busy = UInt64(max(0, (info.endTime - info.startTime).nanoseconds))
        loops.withLockedValue { loops in
            var loop = loops[info.eventLoopID] ?? Loop(index: loops.count)
            loop.busyNanos &+= busy
            loop.ticks &+= 1
            loop.tasks &+= UInt64(max(0, info.numberOfTasks))
            loops[info.eventLoopID] = loop
        }
    }

    func metricLines() -> [String] {
        let snapshot = loops.withLockedValue { Array($0.values) }.sorted { $0.index < $1.index }
        var lines = ["# HELP ztunnel_event_loops Event loop threads of the NetWorkers (each loop appears once it has run).",
                     "# TYPE ztunnel_event_loops gauge", "ztunnel_event_loops \(snapshot.count)"]
        let families: [(String, String, (Loop) -> String)] = [
            ("ztunnel_event_loop_busy_seconds", "Time each event loop spent working rather than waiting.", {
                MetricsMerge.seconds(nanoseconds: $0.busyNanos)
            }),
            ("ztunnel_event_loop_ticks", "Times each event loop woke up to work.", { "\($0.ticks)" }),
            ("ztunnel_event_loop_tasks", "Tasks each event loop ran (besides its I/O).", { "\($0.tasks)" }),
        ]
        for (name, help, value) in families {
            lines += ["# HELP \(name) \(help)", "# TYPE \(name) counter"]
            for loop in snapshot {
                lines.append("\(name)_total{net_worker=\"\(netWorker)\",loop=\"\(loop.index)\"} \(value(loop))")
            }
        }
        return lines
    }
}
