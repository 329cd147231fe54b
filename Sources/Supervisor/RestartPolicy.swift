/// The one place the restart policy lives (STYLE.md §2). Pure: it is told when a worker exited and
/// answers what to do; the Supervisor does the waiting and the spawning.
struct RestartPolicy {
    enum Decision: Equatable {
        /// Start a replacement after this many milliseconds.
        case restart(afterMilliseconds: Int64)
        /// Too many exits in the window: the node's traffic is better served by the kubelet
        /// restarting the pod than by a worker that keeps dying.
        case giveUp(exits: Int, windowMilliseconds: Int64)
    }

    let limit: Int
    let windowMilliseconds: Int64
    let initialBackoffMilliseconds: Int64
    let maxBackoffMilliseconds: Int64
    /// Exit times (monotonic ms) within the window, across all workers: a crash loop anywhere in
    /// the tree counts.
    private(set) var recentExits: [Int64] = []

    init(limit: Int, windowMilliseconds: Int64, initialBackoffMilliseconds: Int64, maxBackoffMilliseconds: Int64) {
        self.limit = limit
        self.windowMilliseconds = windowMilliseconds
        self.initialBackoffMilliseconds = initialBackoffMilliseconds
        self.maxBackoffMilliseconds = maxBackoffMilliseconds
    }

    /// The first exit in a window is replaced at once (connections are waiting in the backlog);
    /// each further one waits twice as long as the one before, up to the maximum.
    mutating func workerExited(at now: Int64) -> Decision {
        recentExits.removeAll { now - $0 >= windowMilliseconds }
        recentExits.append(now)
        let exits = recentExits.count
        if exits >= limit { return .giveUp(exits: exits, windowMilliseconds: windowMilliseconds) }
        if exits == 1 { return .restart(afterMilliseconds: 0) }
        var delay = initialBackoffMilliseconds
        for _ in 2..<exits where delay < maxBackoffMilliseconds { delay *= 2 }
        return .restart(afterMilliseconds: min(delay, maxBackoffMilliseconds))
    }
}
