import NIOCore
import Shared

/// This NetWorker's side of the shared counters (with several NetWorkers). It publishes its
/// traffic and bound counters into its own region once a second and before every scrape; a scrape
/// sums what every region holds, its own included, so two scrapes landing on different
/// NetWorkers see the same published values and a sum never goes down. What a previous process
/// left in this worker's region is kept as a base the live counters are added to, so a restart
/// does not make the counters go backwards (Prometheus would read a reset). With one NetWorker
/// there are no regions and a scrape shows its own counters.
final class MetricsShare: @unchecked Sendable {
    private let lock = Mutex()
    private var own: CounterRegion?
    private var base: [UInt8] = []
    private var peers: [UInt16: CounterRegion] = [:]
    private var warnedCut = false

    /// A region from the Supervisor: this worker's own (writable) or a peer's (read-only).
    func attach(index: UInt16, writable: Bool, fd: OwnedFD) {
        do {
            let region = try CounterRegion(fd: fd, writable: writable)
            lock.withLock {
                if writable {
                    own = region
                    base = region.read() ?? []
                } else {
                    peers[index] = region
                }
            }
        } catch {
            Log.warn("counter region \(index) unusable: \(error)")
        }
    }

    /// Publishes `lines` (live), added to the base, into this worker's region, if it has one.
    func publish(_ lines: [String]) {
        let held: (own: CounterRegion?, base: [UInt8]) = lock.withLock { (self.own, self.base) }
        guard let region = held.own else { return }
        let merged = held.base.isEmpty ? lines : MetricsMerge.merge(own: lines, peers: [held.base])
        let text = Array((merged.filter { !$0.hasPrefix("#") }.joined(separator: "\n") + "\n").utf8)
        if text.count > CounterRegion.capacity && !lock.withLock({ warnedCut }) {
            lock.withLock { warnedCut = true }
            Log.warn("counters exceed the shared region (\(text.count) bytes); the sum across NetWorkers misses some series")
        }
        region.write(text)
    }

    /// The scrape's lines: `lines` (this worker's live counters, for their families and
    /// comments) published, then every region's content summed.
    func merged(_ lines: [String]) -> [String] {
        let held: (own: CounterRegion?, peers: [CounterRegion]) = lock.withLock {
            (self.own, self.peers.sorted { $0.key < $1.key }.map { $0.value })
        }
        guard let own = held.own else { return lines }
        publish(lines)
        var texts: [[UInt8]] = []
        for region in [own] + held.peers {
            if let text = region.read() { texts.append(text) }
        }
        let comments = lines.filter { $0.hasPrefix("#") }
        return MetricsMerge.merge(own: comments, peers: texts)
    }

    /// Publishes `source()` every second on `loop`.
    func startPublishing(on loop: EventLoop, _ source: @escaping @Sendable () -> [String]) {
        loop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [self] _ in publish(source()) }
    }
}
