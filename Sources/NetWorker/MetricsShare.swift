import NIOCore
import Shared

/// This NetWorker's side of the shared counters (with several NetWorkers): it publishes its own
/// traffic and bound counters into its region once a second, and a scrape sums them with what
/// every other NetWorker last published (MetricsMerge), so `/metrics` shows one set wherever it
/// lands. With one NetWorker there are no regions and a scrape shows its own counters.
final class MetricsShare: @unchecked Sendable {
    private let lock = Mutex()
    private var own: CounterRegion?
    private var peers: [UInt16: CounterRegion] = [:]

    /// A region from the Supervisor: this worker's own (writable) or a peer's (read-only).
    func attach(index: UInt16, writable: Bool, fd: OwnedFD) {
        do {
            let region = try CounterRegion(fd: fd, writable: writable)
            lock.withLock { if writable { own = region } else { peers[index] = region } }
        } catch {
            Log.warn("counter region \(index) unusable: \(error)")
        }
    }

    /// Publishes `lines` into this worker's region, if it has one.
    func publish(_ lines: [String]) {
        guard let own = lock.withLock({ own }) else { return }
        own.write(Array((lines.joined(separator: "\n") + "\n").utf8))
    }

    /// `lines` (this worker's, live) summed with every peer's last publication.
    func merged(_ lines: [String]) -> [String] {
        let regions = lock.withLock { peers.sorted { $0.key < $1.key }.map(\.value) }
        if regions.isEmpty { return lines }
        return MetricsMerge.merge(own: lines, peers: regions.compactMap { $0.read() })
    }

    /// Publishes `source()` every second on `loop`.
    func startPublishing(on loop: EventLoop, _ source: @escaping @Sendable () -> [String]) {
        loop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [self] _ in publish(source()) }
    }
}
