import NIOCore
import NIOPosix

/// Closes a relayed connection with no bytes either way for `timeout` (ZTUNNEL_IDLE_TIMEOUT), and
/// says so through `onIdle` first.
///
/// It replaces SwiftNIO's IdleStateHandler on every relayed connection: that handler keeps one
/// scheduled task per connection in the event loop's timer heap and cancels it at close, and
/// SwiftNIO cancels by a linear scan of that heap. With 15,000 connections open the scans took
/// about 5% of our event loops' CPU (`make bench`'s held row under perf). Here a connection only
/// notes when it last read or wrote; one sweep per event loop (`IdleSweeper`) looks at all of
/// them a few times per timeout, and a closed connection leaves in O(1). So a silent connection
/// closes up to one sweep interval after its timeout (a quarter of it, at most 1 s late), where
/// IdleStateHandler closed it on time.
final class IdleWatch: ChannelDuplexHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = NIOAny

    let timeoutNanoseconds: UInt64
    private let onIdle: @Sendable () -> Void
    private(set) var lastActivity: UInt64 = 0
    private var context: ChannelHandlerContext?
    private var sweeper: IdleSweeper?

    init(timeout: TimeAmount, onIdle: @escaping @Sendable () -> Void) {
        timeoutNanoseconds = UInt64(max(timeout.nanoseconds, 1))
        self.onIdle = onIdle
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        lastActivity = NIODeadline.now().uptimeNanoseconds
        let sweeper = IdleSweeper.forLoop(context.eventLoop)
        self.sweeper = sweeper
        sweeper.add(self)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        sweeper?.remove(self)
        sweeper = nil
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        sweeper?.remove(self)
        sweeper = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastActivity = NIODeadline.now().uptimeNanoseconds
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        lastActivity = NIODeadline.now().uptimeNanoseconds
        context.write(data, promise: promise)
    }

    /// Whether the timeout passed at `now` (the sweep asks on the channel's loop).
    fileprivate func isIdle(now: UInt64) -> Bool { now &- lastActivity >= timeoutNanoseconds }

    /// Closes the channel as idle, unless it went inactive in the same sweep (closing one
    /// connection can close its partner on the same loop).
    fileprivate func closeIdle() {
        guard sweeper != nil, let context else { return }
        sweeper?.remove(self)
        sweeper = nil
        onIdle()
        context.close(promise: nil)
    }
}

/// The connections an event loop watches for idleness, looked at every quarter of the shortest
/// timeout among them (between 20 ms and 1 s) while there are any. Used on its loop only.
final class IdleSweeper: @unchecked Sendable {
    /// One per event loop thread, found without a lock (each loop runs on one thread for life).
    private static let current = ThreadSpecificVariable<IdleSweeper>()

    /// The sweeper of `loop`, called on it.
    static func forLoop(_ loop: EventLoop) -> IdleSweeper {
        loop.preconditionInEventLoop()
        // Another loop on this thread (tests' embedded loops) gets a sweeper of its own.
        if let sweeper = current.currentValue, sweeper.loop === loop { return sweeper }
        let sweeper = IdleSweeper(loop: loop)
        current.currentValue = sweeper
        return sweeper
    }

    private let loop: EventLoop
    private var watched: [ObjectIdentifier: IdleWatch] = [:]
    private var task: RepeatedTask?
    private var interval: UInt64 = 0

    private init(loop: EventLoop) { self.loop = loop }

    func add(_ watch: IdleWatch) {
        loop.preconditionInEventLoop()
        watched[ObjectIdentifier(watch)] = watch
        let wanted = min(max(watch.timeoutNanoseconds / 4, 20_000_000), 1_000_000_000)
        if task == nil || wanted < interval { start(every: wanted) }
    }

    func remove(_ watch: IdleWatch) {
        watched[ObjectIdentifier(watch)] = nil
    }

    private func start(every nanoseconds: UInt64) {
        task?.cancel()
        interval = nanoseconds
        let delay = TimeAmount.nanoseconds(Int64(nanoseconds))
        task = loop.scheduleRepeatedTask(initialDelay: delay, delay: delay) { [weak self] _ in self?.sweep() }
    }

    private func sweep() {
        guard !watched.isEmpty else {
            task?.cancel()
            task = nil
            return
        }
        let now = NIODeadline.now().uptimeNanoseconds
        // The idle ones first (closing removes entries), without copying the rest.
        var idle: [IdleWatch] = []
        for watch in watched.values where watch.isIdle(now: now) { idle.append(watch) }
        for watch in idle { watch.closeIdle() }
    }
}
