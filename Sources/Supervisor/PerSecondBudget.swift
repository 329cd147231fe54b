/// What each NetWorker may make the Supervisor do per second (pod sockets made in a pod's
/// namespace, on-demand lookups relayed to the xDS worker): a count per NetWorker index that
/// starts again at each whole second of the monotonic clock. A NetWorker over its budget is
/// refused for the rest of that second, not killed: a compromised one is held to it, a busy
/// one waits.
struct PerSecondBudget<Key: Hashable> {
    let perSecond: Int
    private var windows: [Key: (second: Int64, used: Int, refused: Int)] = [:]

    init(perSecond: Int) { self.perSecond = perSecond }

    /// Takes up to `wanted` from NetWorker `index`'s budget for the second holding
    /// `nowMilliseconds`; returns how many it got.
    mutating func spend(_ index: Key, upTo wanted: Int = 1, nowMilliseconds: Int64) -> Int {
        let second = nowMilliseconds / 1000
        var window = windows[index].flatMap { $0.second == second ? $0 : nil } ?? (second: second, used: 0, refused: 0)
        let granted = max(0, min(wanted, perSecond - window.used))
        window.used += granted
        if granted < wanted { window.refused += 1 }
        windows[index] = window
        return granted
    }

    /// How many of NetWorker `index`'s requests in the second holding `nowMilliseconds` were cut
    /// short (1 right after the first: the moment to say so once a second).
    func refusals(_ index: Key, nowMilliseconds: Int64) -> Int {
        windows[index].flatMap { $0.second == nowMilliseconds / 1000 ? $0.refused : nil } ?? 0
    }
}
