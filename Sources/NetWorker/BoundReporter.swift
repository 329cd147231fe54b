import Shared

/// Counts how often each bound was reached and says so in the log once per episode, with the
/// listener and the peer (issue #6): the first time a bound is hit after a quiet spell it is
/// logged; repeats are only counted until the bound has not been hit for `quietMilliseconds`,
/// so a flood of refused peers cannot flood the log. The counts are on the stats port as
/// `ztunnel_bound_reached_total{listener,bound}`. Shared by every event loop; one lock.
final class BoundReporter: @unchecked Sendable {
    enum Bound: String, CaseIterable, Sendable {
        case connections = "max_connections"
        case handshakeTimeout = "handshake_timeout"
        case idleTimeout = "idle_timeout"
        case requestHeadTimeout = "request_head_timeout"
        case requestHeadSize = "request_head_size"
        case handshakeInput = "handshake_input"
        case earlyData = "early_data"
    }

    private struct Key: Hashable {
        var listener: String
        var bound: Bound
    }

    private let lock = Mutex()
    private var counts: [Key: UInt64] = [:]
    private var lastHit: [Key: Int64] = [:]
    static let quietMilliseconds: Int64 = 60_000
    let now: () -> Int64

    init(now: @escaping () -> Int64 = Clock.monotonicMilliseconds) { self.now = now }

    /// Records that `bound` was reached on `listener` by `peer`; logs it when it opens an
    /// episode. Returns whether it was logged (for tests).
    @discardableResult
    func reached(_ bound: Bound, listener: String, peer: String, detail: String) -> Bool {
        let key = Key(listener: listener, bound: bound)
        let time = now()
        let isNewEpisode = lock.withLock { () -> Bool in
            counts[key, default: 0] += 1
            defer { lastHit[key] = time }
            guard let last = lastHit[key] else { return true }
            return time - last >= Self.quietMilliseconds
        }
        if isNewEpisode {
            Log.warn("\(listener): \(bound.rawValue) reached (\(detail)); closing the connection; further hits are counted in ztunnel_bound_reached_total",
                     [("listener", listener), ("peer", peer), ("bound", bound.rawValue)])
        }
        return isNewEpisode
    }

    /// Prometheus lines for the stats port.
    func metricLines() -> [String] {
        let snapshot = lock.withLock { counts }
        var lines = [
            "# HELP ztunnel_bound_reached Connections closed because they reached a bound (deadline, cap, buffer).",
            "# TYPE ztunnel_bound_reached counter",
        ]
        for (key, count) in snapshot.sorted(by: { ($0.key.listener, $0.key.bound.rawValue) < ($1.key.listener, $1.key.bound.rawValue) }) {
            lines.append("ztunnel_bound_reached_total{listener=\"\(key.listener)\",bound=\"\(key.bound.rawValue)\"} \(count)")
        }
        return lines
    }
}

/// Live connections per listener, against its cap. Admission is a lock and two integers.
final class ConnectionLimiter: @unchecked Sendable {
    private let lock = Mutex()
    private var live: [String: Int] = [:]

    /// Takes a slot on `listener` unless `cap` are taken.
    func admit(_ listener: String, cap: Int) -> Bool {
        lock.withLock {
            let count = live[listener, default: 0]
            guard count < cap else { return false }
            live[listener] = count + 1
            return true
        }
    }

    func release(_ listener: String) {
        lock.withLock { live[listener] = max(0, live[listener, default: 0] - 1) }
    }

    func count(_ listener: String) -> Int { lock.withLock { live[listener, default: 0] } }
}
