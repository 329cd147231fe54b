internal import CShims
import IPC
import NIOCore
import NIOPosix
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// In-pod mode (issue #9): the pods this NetWorker serves, which connection belongs to which pod,
/// and the connections made on a pod's behalf. A NetWorker cannot enter a namespace or mark a
/// socket; the Supervisor makes unconnected, marked sockets in the pod's namespace ahead of need
/// (`podSocketsWanted` → `podSocket`), and this connects them: non-blocking connect, completion
/// seen by one epoll thread, then handed to SwiftNIO as a connected socket on the caller's loop.
final class PodDialer: @unchecked Sendable {
    /// This NetWorker's, set once at start in in-pod mode, before any listener is served.
    nonisolated(unsafe) static var shared: PodDialer?

    /// Sockets kept ready per pod and family (ZTUNNEL_POD_SOCKET_POOL, 8); a refill is asked for
    /// when fewer than half remain. 0: none kept, one asked for per connection.
    let poolTarget: Int
    private var lowWater: Int { max(1, poolTarget / 2) }
    static let socketWait: TimeAmount = .seconds(5)

    private struct Pool {
        var sockets: [OwnedFD] = []
        /// When a refill was last asked for; another is asked for after `refillRetry` (the
        /// Supervisor may have sent none: a pending pod, a spent budget, a dropped frame).
        var requestedAt: Int64?
    }
    static let refillRetryMilliseconds: Int64 = 1_000

    private let lock = Mutex()
    private var pods: [String: PodInfo] = [:]
    private var pools: [String: Pool] = [:]
    /// Each pod's connections (accepted on its listeners), closed when the pod goes.
    private var channels: [String: [ObjectIdentifier: Channel]] = [:]
    private var podOfChannel: [ObjectIdentifier: String] = [:]
    /// Wakes a waiting connection at least every `refillRetryMilliseconds`, so a refill that was
    /// lost is asked for again well before the connection's deadline.
    private let arrivals = KeyedWaiters(capacity: 4096, timeout: .milliseconds(PodDialer.refillRetryMilliseconds))
    private let ask: @Sendable (String, PodSocketFamily, UInt16) -> Void
    private let connector = Connector()

    /// Connections to an application leave from the client's address (ENABLE_ORIG_SRC not
    /// false): the Supervisor makes the pod's sockets transparent, this binds them.
    let bindsOriginalSource: Bool

    init(poolTarget: Int, bindsOriginalSource: Bool, ask: @escaping @Sendable (String, PodSocketFamily, UInt16) -> Void) {
        self.poolTarget = poolTarget
        self.bindsOriginalSource = bindsOriginalSource
        self.ask = ask
    }

    // MARK: - Pods and their connections

    /// A pod served from now on; its IPv4 pool is filled ahead of its first connection.
    func add(_ uid: String, _ info: PodInfo) {
        let isNew = lock.withLock { () -> Bool in
            defer { pods[uid] = info }
            return pods[uid] == nil
        }
        if isNew && poolTarget > 0 { _ = takeOrAsk(uid, .ipv4, taking: false) }
    }

    var served: [String: PodInfo] { lock.withLock { pods } }
    func isServed(_ uid: String) -> Bool { lock.withLock { pods[uid] != nil } }
    func info(_ uid: String) -> PodInfo? { lock.withLock { pods[uid] } }

    /// Forgets the pod: its sockets are closed, its connections closed now (the pod is gone).
    func remove(_ uid: String) {
        let open = lock.withLock { () -> [Channel] in
            pods[uid] = nil
            for family in [PodSocketFamily.ipv4, .ipv6] { pools[Self.key(uid, family)] = nil }
            let open = Array((channels.removeValue(forKey: uid) ?? [:]).values)
            for channel in open { podOfChannel[ObjectIdentifier(channel)] = nil }
            return open
        }
        for family in [PodSocketFamily.ipv4, .ipv6] { arrivals.release(Self.key(uid, family)) }
        // HBONE peers hear it first (istio/ztunnel#1191): GOAWAY on the pod's inbound HTTP/2
        // connections, then the close, which sends close_notify before the TCP close.
        for channel in open {
            channel.eventLoop.execute {
                channel.pipeline.fireUserInboundEventTriggered(DrainRequested())
                channel.close(promise: nil)
            }
        }
        if !open.isEmpty { Log.info("pod withdrawn: closed its connections", [("uid", uid), ("connections", "\(open.count)")]) }
    }

    /// Records that `channel` was accepted on one of `uid`'s listeners.
    func register(_ channel: Channel, pod uid: String) {
        let id = ObjectIdentifier(channel)
        let known = lock.withLock { () -> Bool in
            guard pods[uid] != nil else { return false }
            channels[uid, default: [:]][id] = channel
            podOfChannel[id] = uid
            return true
        }
        guard known else {
            channel.close(promise: nil)
            return
        }
        channel.closeFuture.whenComplete { _ in
            self.lock.withLock {
                self.channels[uid]?[id] = nil
                self.podOfChannel[id] = nil
            }
        }
    }

    /// The pod a connection belongs to (nil: a node-level listener's).
    func pod(of channel: Channel) -> String? { lock.withLock { podOfChannel[ObjectIdentifier(channel)] } }

    // MARK: - Sockets

    /// A socket the Supervisor made in the pod's namespace.
    func add(socket fd: OwnedFD, pod uid: String, family: PodSocketFamily) {
        let key = Self.key(uid, family)
        let kept = lock.withLock { () -> Bool in
            guard pods[uid] != nil else { return false }
            pools[key, default: Pool()].sockets.append(fd)
            pools[key]?.requestedAt = nil
            return true
        }
        if kept { arrivals.release(key) } else { fd.close() }
    }

    private static func key(_ uid: String, _ family: PodSocketFamily) -> String { "\(uid)|\(family.rawValue)" }

    /// Takes a socket when `taking` and one is there; asks for a refill below the low-water
    /// mark. nil pod: the pod is not served.
    private func takeOrAsk(_ uid: String, _ family: PodSocketFamily, taking: Bool) -> (socket: OwnedFD?, known: Bool) {
        let key = Self.key(uid, family)
        let now = Clock.monotonicMilliseconds()
        let (taken, refill, known) = lock.withLock { () -> (OwnedFD?, Bool, Bool) in
            guard pods[uid] != nil else { return (nil, false, false) }
            var pool = pools[key] ?? Pool()
            let taken = taking ? pool.sockets.popLast() : nil
            let due = pool.requestedAt.map { now - $0 >= Self.refillRetryMilliseconds } ?? true
            // Without a pool, one socket per connection that found none.
            let refill = due && (poolTarget == 0 ? taking && taken == nil : pool.sockets.count < lowWater)
            if refill { pool.requestedAt = now }
            pools[key] = pool
            return (taken, refill, true)
        }
        if refill { ask(uid, family, UInt16(max(poolTarget, 1))) }
        return (taken, known)
    }

    /// Takes a socket of the pod's, waiting for a refill while none is left, until `deadline`.
    private func socket(for uid: String, family: PodSocketFamily, on loop: EventLoop, deadline: NIODeadline) -> EventLoopFuture<OwnedFD> {
        let (taken, known) = takeOrAsk(uid, family, taking: true)
        if let taken { return loop.makeSucceededFuture(taken) }
        guard known else { return loop.makeFailedFuture(DialError("pod \(uid) is no longer served")) }
        guard NIODeadline.now() < deadline, let (future, _) = arrivals.wait(for: Self.key(uid, family), on: loop) else {
            return loop.makeFailedFuture(DialError("no socket from pod \(uid)'s namespace in time"))
        }
        // Woken by an arrival (another waiter may take it first: look again) or the wait's end.
        return future.flatMap { self.socket(for: uid, family: family, on: loop, deadline: deadline) }
    }

    struct DialError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    /// Connects to `address` from the pod's namespace and returns the channel, set up by
    /// `bootstrap` (options and initializer) on `loop`. `source`, an inbound connection's client,
    /// is the address it leaves from when `bindsOriginalSource` (see `OriginalSource`).
    func connect(pod uid: String, to address: NIOCore.SocketAddress, from source: NIOCore.SocketAddress? = nil,
                 on loop: EventLoop, timeout: TimeAmount, bootstrap: ClientBootstrap) -> EventLoopFuture<Channel> {
        let family: PodSocketFamily = address.protocol == .inet6 ? .ipv6 : .ipv4
        let bindTo = bindsOriginalSource ? source.flatMap { OriginalSource.bindAddress(client: $0, destination: address) } : nil
        return socket(for: uid, family: family, on: loop, deadline: .now() + Self.socketWait).flatMap { fd in
            if let bindTo { OriginalSource.bind(fd, to: bindTo) }
            return self.connector.connect(fd, to: address, on: loop, timeout: timeout)
        }.flatMap { raw in
            // SwiftNIO owns the descriptor from here, and closes it if it cannot use it.
            bootstrap.withConnectedSocket(raw)
        }
    }
}

/// The client's address as the source of a connection to an application (upstream's
/// `freebind_connect`): the pod's socket is transparent (the Supervisor set IP_TRANSPARENT and
/// IP_FREEBIND), so it may be bound to an address the pod does not own; istio-cni's rules mark
/// the connection (connmark 0x111) and route the application's replies back to it. Landlock lets
/// the NetWorker bind port 0 only.
enum OriginalSource {
    /// The client's address with port 0, in the destination's family (an IPv4 client seen on a
    /// dual-stack listener as ::ffff:a.b.c.d becomes a.b.c.d); nil when the families differ or the
    /// client is the destination itself (a pod reaching its own address) or the destination is
    /// loopback (a PROXY application tunnel: a foreign source cannot reach 127.0.0.1), as upstream.
    static func bindAddress(client: NIOCore.SocketAddress, destination: NIOCore.SocketAddress) -> NIOCore.SocketAddress? {
        guard let clientIP = client.ipAddress, let destinationIP = destination.ipAddress,
              !destinationIP.hasPrefix("127."), destinationIP != "::1" else { return nil }
        var ip = clientIP
        if destination.protocol == .inet, ip.hasPrefix("::ffff:"), !ip.dropFirst(7).contains(":") { ip = String(ip.dropFirst(7)) }
        guard ip != destinationIP, let address = try? NIOCore.SocketAddress(ipAddress: ip, port: 0),
              address.protocol == destination.protocol else { return nil }
        return address
    }

    /// Binds `fd` to `address`. A failure (the Supervisor could not make the socket transparent,
    /// an address the kernel refuses) leaves it unbound: the connection leaves from the pod's own
    /// address, as upstream falls back; said once at warning, then at debug.
    static func bind(_ fd: OwnedFD, to address: NIOCore.SocketAddress) {
        let rc = address.withSockAddr { pointer, length in Glibc.bind(fd.rawValue, pointer, socklen_t(length)) }
        guard rc != 0 else { return }
        let reason = String(cString: strerror(errno))
        let first = warnLock.withLock { () -> Bool in
            defer { warned = true }
            return !warned
        }
        if !first {
            Log.debug("original source: bind failed; the connection leaves from the pod's address", [("src", "\(address)"), ("error", reason)])
        } else {
            Log.warn("original source: bind failed; the connection leaves from the pod's address (said once)", [("src", "\(address)"), ("error", reason)])
        }
    }

    private static let warnLock = Mutex()
    nonisolated(unsafe) private static var warned = false
}

/// Non-blocking connects whose completion one epoll thread waits for. A connect that does not
/// complete within its timeout is cancelled and its socket closed.
final class Connector: @unchecked Sendable {
    private let epoll: Int32
    private let lock = Mutex()
    /// By token, not by descriptor: a descriptor number is reused as soon as it is closed, and
    /// an event left over from a timed-out connect must not complete a newer one.
    private var pending: [UInt64: (fd: Int32, promise: EventLoopPromise<Int32>)] = [:]
    private var nextToken: UInt64 = 1

    /// The thread starts with the first connect: a NetWorker outside in-pod mode never has it.
    private var started = false

    init() {
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
    }

    private func startIfNeeded() {
        let start = lock.withLock { () -> Bool in
            defer { started = true }
            return !started
        }
        guard start else { return }
        let box = Unmanaged.passRetained(self)
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            guard let raw else { return nil }
            Unmanaged<Connector>.fromOpaque(raw).takeRetainedValue().run()
            return nil
        }, box.toOpaque())
        if rc == 0 { pthread_detach(thread) } else { box.release(); Log.error("cannot start the pod connector thread: \(rc)") }
    }

    /// Succeeds with the connected descriptor (now the caller's), or fails with the reason.
    func connect(_ fd: OwnedFD, to address: NIOCore.SocketAddress, on loop: EventLoop, timeout: TimeAmount) -> EventLoopFuture<Int32> {
        startIfNeeded()
        let raw = fd.take()
        let flags = fcntl(raw, F_GETFL)
        guard flags >= 0, fcntl(raw, F_SETFL, flags | O_NONBLOCK) == 0 else {
            close(raw)
            return loop.makeFailedFuture(PodDialer.DialError("cannot make the pod socket non-blocking: errno \(errno)"))
        }
        var one: Int32 = 1
        _ = setsockopt(raw, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let rc = address.withSockAddr { pointer, length in Glibc.connect(raw, pointer, socklen_t(length)) }
        if rc == 0 { return loop.makeSucceededFuture(raw) }
        guard errno == EINPROGRESS else {
            let error = errno
            close(raw)
            return loop.makeFailedFuture(PodDialer.DialError("connect to \(address) failed: \(String(cString: strerror(error)))"))
        }
        let promise = loop.makePromise(of: Int32.self)
        let token = lock.withLock { () -> UInt64 in
            defer { nextToken += 1 }
            pending[nextToken] = (raw, promise)
            return nextToken
        }
        var event = epoll_event()
        event.events = EPOLLOUT.rawValue | EPOLLONESHOT.rawValue
        event.data.u64 = token
        if epoll_ctl(epoll, EPOLL_CTL_ADD, raw, &event) != 0 {
            let error = errno
            lock.withLock { pending[token] = nil }
            close(raw)
            promise.fail(PodDialer.DialError("cannot wait for the connect: errno \(error)"))
            return promise.futureResult
        }
        loop.scheduleTask(in: timeout) {
            // Whoever removes the entry owns the descriptor: the timeout or the epoll thread.
            guard let waiting = self.lock.withLock({ self.pending.removeValue(forKey: token) }) else { return }
            _ = epoll_ctl(self.epoll, EPOLL_CTL_DEL, waiting.fd, nil)
            close(waiting.fd)
            waiting.promise.fail(PodDialer.DialError("connect to \(address) timed out"))
        }
        return promise.futureResult
    }

    private func run() -> Never {
        var events = [epoll_event](repeating: epoll_event(), count: 64)
        while true {
            let count = epoll_wait(epoll, &events, Int32(events.count), -1)
            if count < 0 { continue }
            for event in events.prefix(Int(count)) {
                guard let (raw, promise) = lock.withLock({ pending.removeValue(forKey: event.data.u64) }) else { continue }
                _ = epoll_ctl(epoll, EPOLL_CTL_DEL, raw, nil)
                var error: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                _ = getsockopt(raw, SOL_SOCKET, SO_ERROR, &error, &length)
                if error == 0 {
                    promise.succeed(raw)
                } else {
                    close(raw)
                    promise.fail(PodDialer.DialError("connect failed: \(String(cString: strerror(error)))"))
                }
            }
        }
    }
}
