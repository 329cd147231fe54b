import IPC
import NIOCore
import Shared

/// Connections waiting for something the control thread will learn (an on-demand lookup's
/// answer, a certificate): each waits under a key until `release(key)` or its timeout, whichever
/// comes first, and then goes on and decides with what is known by then. At most `capacity`
/// wait at once; one more is not made to wait (it decides at once).
final class KeyedWaiters: @unchecked Sendable {
    private final class Waiter {
        let promise: EventLoopPromise<Void>
        var timer: Scheduled<Void>?
        var done = false
        init(promise: EventLoopPromise<Void>) { self.promise = promise }
    }

    private let lock = Mutex()
    private var waiting: [String: [Waiter]] = [:]
    private var count = 0
    let capacity: Int
    let timeout: TimeAmount

    init(capacity: Int, timeout: TimeAmount) {
        self.capacity = capacity
        self.timeout = timeout
    }

    /// A future that succeeds when `key` is released or the timeout passes, and whether nobody
    /// was waiting for `key` before (the caller then asks for it); nil when full.
    func wait(for key: String, on loop: EventLoop) -> (future: EventLoopFuture<Void>, isFirst: Bool)? {
        // No promise for a refused wait: one never completed is a leak (SwiftNIO traps on it in
        // debug builds).
        guard lock.withLock({ count < capacity }) else { return nil }
        let waiter = Waiter(promise: loop.makePromise())
        let first: Bool? = lock.withLock {
            guard count < capacity else {
                waiter.done = true
                return nil
            }
            count += 1
            let first = waiting[key] == nil
            waiting[key, default: []].append(waiter)
            return first
        }
        guard let first else {
            waiter.promise.succeed(())
            return nil
        }
        let timer = loop.scheduleTask(in: timeout) { self.expire(waiter, key: key) }
        lock.withLock { if !waiter.done { waiter.timer = timer } else { timer.cancel() } }
        return (waiter.promise.futureResult, first)
    }

    /// Lets everyone waiting for `key` go on.
    func release(_ key: String) {
        let released = lock.withLock { () -> [Waiter] in
            let list = waiting.removeValue(forKey: key) ?? []
            count -= list.count
            for waiter in list { waiter.done = true }
            return list
        }
        for waiter in released {
            waiter.timer?.cancel()
            waiter.promise.succeed(())
        }
    }

    var waitingCount: Int { lock.withLock { count } }

    func isWaiting(for key: String) -> Bool { lock.withLock { waiting[key] != nil } }

    private func expire(_ waiter: Waiter, key: String) {
        let fire = lock.withLock { () -> Bool in
            guard !waiter.done else { return false }
            waiter.done = true
            count -= 1
            if var list = waiting[key] {
                list.removeAll { $0 === waiter }
                waiting[key] = list.isEmpty ? nil : list
            }
            return true
        }
        if fire { waiter.promise.succeed(()) }
    }
}

/// XDS_ON_DEMAND on the NetWorker's side (ISTIO_COMPAT §6.3): a connection whose source or
/// destination address is in no resource waits while the xDS worker asks istiod for it, and
/// decides once the answer is in force here (the snapshot that holds it applied), or after
/// `timeout` with what is known (an unknown destination then passes through as plain TCP).
final class OnDemandLookups: @unchecked Sendable {
    static let timeout: TimeAmount = .seconds(5)
    static let capacity = 4096

    let isEnabled: Bool
    private let waiters = KeyedWaiters(capacity: OnDemandLookups.capacity, timeout: OnDemandLookups.timeout)
    /// Sends the lookup to the Supervisor; false when it could not be sent now (the channel is
    /// full: it is asked again every 100 ms while someone still waits for it).
    private let ask: @Sendable (String) -> Bool
    static let askRetryDelay: TimeAmount = .milliseconds(100)
    private let lock = Mutex()
    /// Keys answered in a snapshot not yet in force here, with that snapshot's generation.
    private var answeredIn: [String: UInt64] = [:]
    private var appliedGeneration: UInt64 = 0

    init(isEnabled: Bool, ask: @escaping @Sendable (String) -> Bool) {
        self.isEnabled = isEnabled
        self.ask = ask
    }

    /// Concurrent waits one client address may hold: one pod cannot take every slot.
    static let perClient = 64
    private var waitsByClient: [String: Int] = [:]

    /// Waits for each key (asking for the ones nobody asked for yet); succeeds with true when all
    /// are answered or timed out, with false at once when this client (or the NetWorker) has too
    /// many waiting: the caller then refuses rather than decide without the mesh. `stillUnknown`
    /// is asked again once registered, so an answer that landed meanwhile does not cost a wait.
    func fetch(_ keys: [String], client: String, on loop: EventLoop, stillUnknown: @escaping (String) -> Bool) -> EventLoopFuture<Bool> {
        let wanted = Set(keys).filter(DemandKey.isValid)
        let admitted = lock.withLock { () -> Bool in
            let held = waitsByClient[client] ?? 0
            guard held + wanted.count <= Self.perClient else { return false }
            waitsByClient[client] = held + wanted.count
            return true
        }
        guard admitted else {
            OnDemandLookups.warnFull("\(Self.perClient) lookups already wait for client \(client)")
            return loop.makeSucceededFuture(false)
        }
        var futures: [EventLoopFuture<Void>] = []
        var complete = true
        for key in wanted {
            guard let (future, isFirst) = waiters.wait(for: key, on: loop) else {
                complete = false
                continue
            }
            if isFirst { askUntilSent(key, on: loop) }
            if !stillUnknown(key) { waiters.release(key) }
            futures.append(future)
        }
        if !complete { OnDemandLookups.warnFull("\(OnDemandLookups.capacity) lookups wait already") }
        return EventLoopFuture.andAllComplete(futures, on: loop).map {
            self.lock.withLock {
                let left = (self.waitsByClient[client] ?? 0) - wanted.count
                self.waitsByClient[client] = left > 0 ? left : nil
            }
            return complete
        }
    }

    /// A lookup that could not be sent is sent again shortly, while anyone still waits for it,
    /// rather than leaving its connections to wait out their 5 s.
    private func askUntilSent(_ key: String, on loop: EventLoop) {
        guard !ask(key), waiters.isWaiting(for: key) else { return }
        loop.scheduleTask(in: Self.askRetryDelay) { self.askUntilSent(key, on: loop) }
    }

    /// One warning per 10 s at most: a flood must not become a flood of log lines.
    private static let warnLock = Mutex()
    nonisolated(unsafe) private static var lastWarning: Int64 = -10_000
    static func warnFull(_ what: String) {
        let now = Clock.monotonicMilliseconds()
        let due = warnLock.withLock { () -> Bool in
            guard now - lastWarning >= 10_000 else { return false }
            lastWarning = now
            return true
        }
        if due { Log.warn("on-demand lookups: \(what); refusing such connections rather than deciding without the mesh") }
    }

    /// istiod answered `keys`; what it sent is in snapshot `generation` or an earlier one.
    func answered(_ keys: [String], generation: UInt64) {
        let now = lock.withLock { () -> Bool in
            if generation <= appliedGeneration { return true }
            for key in keys { answeredIn[key] = max(answeredIn[key] ?? 0, generation) }
            return false
        }
        if now { for key in keys { waiters.release(key) } }
    }

    /// Snapshot `generation` is in force (or was refused: the answers will not come another way).
    func applied(generation: UInt64) {
        let ready = lock.withLock { () -> [String] in
            appliedGeneration = max(appliedGeneration, generation)
            let ready = answeredIn.filter { $0.value <= appliedGeneration }.map(\.key)
            for key in ready { answeredIn[key] = nil }
            return ready
        }
        for key in ready { waiters.release(key) }
    }
}
