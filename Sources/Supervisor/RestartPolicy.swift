/// The one place the restart policy lives (STYLE.md §2). Pure: it is told when a worker exited and
/// whether it had been serving, and answers what to do; the Supervisor does the waiting and the
/// spawning.
///
/// Two kinds of exit are told apart, because they mean different things:
/// - A worker that dies **before it became ready** points at something broken in this node's
///   set-up (a bad configuration, a missing binary, a profile that kills start-up). Retrying
///   forever would hide it, so such exits count towards the crash-loop limit across the whole
///   tree, and reaching it makes the Supervisor give up (the pod is restarted and the failure is
///   visible to the operator).
/// - A worker that dies **after it was serving** was most likely killed by what it parsed: a
///   packet, a peer, a pod. Giving up then would let anyone who can reach a port stop the node's
///   traffic with a few bad requests (istio/ztunnel#1707: one pod crash-looped every ztunnel of
///   its node). Such a worker is replaced forever, after a backoff that doubles per slot up to a
///   cap and resets once a replacement has served for a whole window. Each restart is counted
///   and audited by the Supervisor.
struct RestartPolicy {
    enum Decision: Equatable {
        /// Start a replacement after this many milliseconds.
        case restart(afterMilliseconds: Int64)
        /// Too many workers died before becoming ready within the window.
        case giveUp(exits: Int, windowMilliseconds: Int64)
    }

    let limit: Int
    let windowMilliseconds: Int64
    let initialBackoffMilliseconds: Int64
    let maxBackoffMilliseconds: Int64
    /// Exit times (monotonic ms) of workers that never became ready, within the window, across
    /// all slots: a broken set-up anywhere in the tree counts.
    private(set) var startupFailures: [Int64] = []
    /// Exit times of serving workers within the window, per slot: one slot's bad luck does not
    /// slow the replacement of another.
    private(set) var servingExits: [String: [Int64]] = [:]

    init(limit: Int, windowMilliseconds: Int64, initialBackoffMilliseconds: Int64, maxBackoffMilliseconds: Int64) {
        self.limit = limit
        self.windowMilliseconds = windowMilliseconds
        self.initialBackoffMilliseconds = initialBackoffMilliseconds
        self.maxBackoffMilliseconds = maxBackoffMilliseconds
    }

    /// A worker in `slot` exited at `now`. `wasReady` says whether this process had reached the
    /// running state.
    mutating func workerExited(slot: String, at now: Int64, wasReady: Bool) -> Decision {
        if wasReady {
            var exits = (servingExits[slot] ?? []).filter { now - $0 < windowMilliseconds }
            exits.append(now)
            servingExits[slot] = exits
            return .restart(afterMilliseconds: backoff(afterExits: exits.count))
        }
        startupFailures.removeAll { now - $0 >= windowMilliseconds }
        startupFailures.append(now)
        let exits = startupFailures.count
        if exits >= limit { return .giveUp(exits: exits, windowMilliseconds: windowMilliseconds) }
        return .restart(afterMilliseconds: backoff(afterExits: exits))
    }

    /// The first exit in a window is replaced at once (connections are waiting in the backlog);
    /// each further one waits twice as long as the one before, up to the maximum.
    private func backoff(afterExits exits: Int) -> Int64 {
        if exits <= 1 { return 0 }
        var delay = initialBackoffMilliseconds
        for _ in 2..<exits where delay < maxBackoffMilliseconds { delay *= 2 }
        return min(delay, maxBackoffMilliseconds)
    }
}
