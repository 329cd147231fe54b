internal import CShims
import IPC
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// In-pod mode (issue #9, ISTIO_COMPAT §8): the ZDS connection to istio-cni and the pods it
/// enrolled. The Supervisor is the only process that touches network namespaces: it checks each
/// pod's namespace fd, makes the pod's listeners inside it (and, on a NetWorker's request,
/// unconnected sockets for the pod's upstream connections) and hands them to the NetWorkers.
/// Everything here runs on the Supervisor's one thread, driven by its poll loop; namespaces are
/// entered only by short-lived threads (CShimsNetns.c).
///
/// Where upstream exits on a protocol error, this closes the connection with an error ack and
/// reconnects (istio-cni replays its snapshot); where one pod's listeners cannot be made, that
/// pod is refused with an error ack and retried every 5 s while every other pod keeps serving
/// (istio/ztunnel#1707).
final class InPod {
    struct Pod {
        var info: PodInfo
        let netns: OwnedFD
        let netnsId: NetnsId
        /// One set per NetWorker index: (listener name, socket).
        var listeners: [[(name: String, fd: OwnedFD)]] = []
        /// Why the listeners could not be made (nil: served), and when to try again.
        var error: String?
        var nextRetry: Int64?
        var isUp: Bool { error == nil && !listeners.isEmpty }
    }

    struct NetnsId: Equatable {
        let device: UInt64
        let inode: UInt64
    }

    enum Event {
        /// Hand the pod's listeners to the NetWorkers.
        case up(String)
        /// Withdraw the pod from the NetWorkers (gone, or its namespace changed).
        case down(String)
        /// The pod's name, namespace or service account changed (same namespace).
        case updated(String)
        /// Readiness or the pending list changed.
        case status
    }

    static let retryMilliseconds: Int64 = 5_000
    static let maxBackoffMilliseconds: Int64 = 15_000
    /// Pods enrolled at most (ZTUNNEL_MAX_PODS, default 1,024: Kubernetes' max-pods is 110 by
    /// default, a few hundred at most); each costs listeners, a namespace fd and memory.
    private let maxPods: Int

    private let path: String
    private let mark: UInt32
    private let reusePort: Bool
    /// IP_TRANSPARENT on the pod listeners unless ENABLE_ORIG_SRC is false: best effort, or,
    /// with true (`transparentRequired`), a listener that cannot be made transparent fails the
    /// pod, as upstream.
    private let transparent: Bool
    private let transparentRequired: Bool
    /// TCP_NODELAY and keepalive, set on each pod listener before it listens (`Bounds.applyToListener`).
    private let listenerOptions: Bounds
    /// IP_TRANSPARENT and IP_FREEBIND on the sockets made for a NetWorker's connections, so it
    /// can bind them to the client's address: when the NetWorkers bind (original source, decided
    /// at start: `OriginalSource.networkerBinds`).
    private let transparentSockets: Bool
    private let ipv6: Bool
    private let copies: Int
    private let listenerSpecs: [(name: String, address: SocketAddress)]
    private let audit: AuditSink
    private(set) var pods: [String: Pod] = [:]
    private var connection: OwnedFD?
    private var snapshotDone = false
    private var inSnapshot: Set<String> = []
    private var nextConnect: Int64 = 0
    private var backoff: Int64 = 10
    private var connectFailureLogged = false
    private(set) var events: [Event] = []
    /// ztunnel's own network namespace: never a pod's.
    private let ownNetns: NetnsId?
    /// Pods whose listeners were made, and pods withdrawn after serving, since start (§15
    /// `workload_manager_proxies_started_total` / `_stopped_total`).
    private(set) var started: UInt64 = 0
    private(set) var stopped: UInt64 = 0

    init(configuration: Configuration, audit: AuditSink, transparentSockets: Bool) {
        self.transparentSockets = transparentSockets
        path = configuration.string("INPOD_UDS")
        mark = UInt32(clamping: configuration.int("PACKET_MARK"))
        reusePort = configuration.bool("INPOD_PORT_REUSE")
        let originalSource = Setting.parseBool(configuration.string("ENABLE_ORIG_SRC"))
        transparent = originalSource != false
        transparentRequired = originalSource == true
        listenerOptions = Bounds(configuration)
        ipv6 = configuration.bool("IPV6_ENABLED")
        copies = configuration.int("ZTUNNEL_NET_WORKERS")
        maxPods = configuration.int("ZTUNNEL_MAX_PODS")
        self.audit = audit
        var own = stat()
        ownNetns = stat("/proc/self/ns/net", &own) == 0 ? NetnsId(device: UInt64(own.st_dev), inode: UInt64(own.st_ino)) : nil
        let wildcard = ipv6 ? "[::]" : "0.0.0.0"
        var specs: [(String, String)] = [("outbound", "\(wildcard):15001"), ("inbound-plaintext", "\(wildcard):15006"),
                                         ("inbound", "\(wildcard):15008")]
        if configuration.string("UNSTABLE_ENABLE_SOCKS5") == "true" { specs.append(("socks5", "127.0.0.1:15080")) }
        // The DNS proxy (§13): istio-cni redirects the pod's port-53 traffic to 127.0.0.1:15053,
        // and IPv6 DNS to [::1]:15053 (made only where the pod's loopback has IPv6).
        if configuration.dnsProxyEnabled {
            specs.append(("dns-tcp", "127.0.0.1:15053"))
            specs.append(("dns-udp", "127.0.0.1:15053"))
            if ipv6 {
                specs.append(("dns-tcp", "[::1]:15053"))
                specs.append(("dns-udp", "[::1]:15053"))
            }
        }
        listenerSpecs = specs.compactMap { name, text in SocketAddress.parse(text).map { (name, $0) } }
    }

    /// Whether the snapshot of the current connection arrived and no pod waits for a retry (§16
    /// "workload proxy manager").
    var isSynced: Bool { connection != nil && snapshotDone }

    var pending: [PendingPod] {
        pods.filter { $0.value.error != nil }.sorted { $0.key < $1.key }.prefix(PendingPod.maxPerMessage)
            .map { PendingPod(uid: $0.key, info: $0.value.info, error: $0.value.error ?? "") }
    }

    var pollFd: Int32? { connection?.rawValue }

    /// The next time `tick` has work: a reconnect, or a pod's retry.
    var nextDeadline: Int64? {
        var times = pods.values.compactMap(\.nextRetry)
        if connection == nil { times.append(nextConnect) }
        return times.min()
    }

    func takeEvents() -> [Event] {
        defer { events = [] }
        return events
    }

    /// The listener sockets of an up pod for NetWorker `index`.
    func listeners(of uid: String, index: Int) -> [(name: String, fd: OwnedFD)] {
        guard let pod = pods[uid], pod.isUp, index < pod.listeners.count else { return [] }
        return pod.listeners[index]
    }

    // MARK: - The connection

    func tick(now: Int64) {
        if connection == nil && now >= nextConnect { connect(now: now) }
        for (uid, pod) in pods where pod.nextRetry.map({ now >= $0 }) == true {
            retry(uid, pod, now: now)
        }
    }

    private func connect(now: Int64) {
        do {
            let fd = OwnedFD(takingOwnershipOf: try Syscall.retrying("socket") {
                socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            })
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw SyscallError(function: "connect", errno: ENAMETOOLONG) }
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                for (index, byte) in bytes.enumerated() { raw[index] = byte }
            }
            _ = try withUnsafePointer(to: &address) { pointer in
                try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                    try Syscall.retrying("connect") { Glibc.connect(fd.rawValue, socketAddress, socklen_t(MemoryLayout<sockaddr_un>.size)) }
                }
            }
            try send(ZDS.hello, on: fd)
            connection = fd
            snapshotDone = false
            inSnapshot = []
            // The backoff is reset by a clean snapshot, not by connecting: a peer that refuses
            // every connection with a protocol error is retried ever more slowly.
            connectFailureLogged = false
            audit.record("cni_connected", [("socket", .string(path))])
            Log.info("connected to istio-cni", [("socket", path), ("pods", "\(pods.count)")])
            events.append(.status)
        } catch {
            if !connectFailureLogged {
                Log.warn("cannot connect to istio-cni yet; retrying with backoff", [("socket", path), ("error", "\(error)")])
                connectFailureLogged = true
            }
            nextConnect = now + backoff
            backoff = min(backoff * 2, Self.maxBackoffMilliseconds)
        }
    }

    private func disconnect(_ reason: String) {
        guard connection != nil else { return }
        connection = nil
        snapshotDone = false
        nextConnect = Clock.monotonicMilliseconds() + backoff
        backoff = min(backoff * 2, Self.maxBackoffMilliseconds)
        audit.record("cni_disconnected", [("reason", .string(reason))])
        Log.warn("istio-cni connection closed; pods keep serving until it replays its snapshot", [("reason", reason)])
        events.append(.status)
    }

    private func send(_ bytes: [UInt8], on fd: OwnedFD) throws {
        _ = try bytes.withUnsafeBytes { raw in
            try Syscall.retrying("send") { Glibc.send(fd.rawValue, raw.baseAddress, raw.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
        }
    }

    private func ack(_ error: String = "") {
        guard let connection else { return }
        do { try send(ZDS.ack(error: error), on: connection) } catch { disconnect("cannot send an ack: \(error)") }
    }

    /// Takes what istio-cni sent: a few records per turn of the Supervisor's loop.
    func readable() {
        for _ in 0..<16 {
            guard let connection else { return }
            let record: ([UInt8], [OwnedFD])
            do {
                guard let received = try IPCSocket.receiveRecord(fd: connection.rawValue, maxBytes: ZDS.maxMessageBytes, maxFds: 1,
                                                                 blocking: false, defusingFds: true) else { return }
                record = received
            } catch IPCError.closed {
                disconnect("istio-cni closed the connection")
                return
            } catch {
                protocolError("unreadable record: \(error)")
                return
            }
            handle(record.0, fds: record.1)
        }
    }

    /// Refused input: an error ack, then the connection is closed (istio-cni replays on the next).
    private func protocolError(_ reason: String) {
        audit.record("cni_protocol_error", [("security", .bool(true)), ("reason", .string(reason))])
        Log.error("istio-cni protocol error; reconnecting", [("reason", reason)])
        ack("protocol error: \(reason)")
        disconnect(reason)
    }

    private func handle(_ bytes: [UInt8], fds: [OwnedFD]) {
        let request: ZDS.Request
        do { request = try ZDS.decodeRequest(bytes) } catch {
            protocolError("\(error)")
            return
        }
        if case .add = request {} else if !fds.isEmpty {
            protocolError("an fd came with a message other than AddWorkload")
            return
        }
        switch request {
        case .add(let uid, let info):
            guard fds.count == 1 else {
                protocolError("AddWorkload \(uid) without its network namespace fd")
                return
            }
            add(uid: uid, info: PodInfo(name: info.name, namespace: info.namespace, serviceAccount: info.serviceAccount), netns: fds[0])
        case .keep(let uid):
            guard !snapshotDone else {
                protocolError("KeepWorkload \(uid) after the snapshot")
                return
            }
            guard inSnapshot.count < maxPods else {
                protocolError("a snapshot of more than \(maxPods) pods")
                return
            }
            inSnapshot.insert(uid)
            ack()
        case .del(let uid):
            inSnapshot.remove(uid)
            if pods[uid] != nil {
                remove(uid, reason: "DelWorkload")
            }
            ack()
        case .snapshotSent:
            guard !snapshotDone else {
                protocolError("a second SnapshotSent on one connection")
                return
            }
            snapshotDone = true
            backoff = 10
            for uid in pods.keys where !inSnapshot.contains(uid) {
                remove(uid, reason: "not in istio-cni's snapshot")
            }
            inSnapshot = []
            Log.info("istio-cni snapshot received", [("pods", "\(pods.count)"), ("pending", "\(pending.count)")])
            ack()
            events.append(.status)
        }
    }

    private func add(uid: String, info: PodInfo, netns: OwnedFD) {
        if !snapshotDone {
            guard inSnapshot.count < maxPods || inSnapshot.contains(uid) else {
                protocolError("a snapshot of more than \(maxPods) pods")
                return
            }
            inSnapshot.insert(uid)
        }
        let check = CShims_netns_check(netns.rawValue)
        guard check == 0 else {
            Log.warn("AddWorkload \(uid): the fd is not a network namespace; refused", [("errno", "\(-check)")])
            ack("failure to start proxy : the fd given for \(uid) is not a network namespace")
            return
        }
        var status = stat()
        guard fstat(netns.rawValue, &status) == 0 else {
            ack("failure to start proxy : cannot stat the network namespace of \(uid)")
            return
        }
        let id = NetnsId(device: UInt64(status.st_dev), inode: UInt64(status.st_ino))
        guard id != ownNetns else {
            ack("failure to start proxy : the namespace given for \(uid) is ztunnel's own")
            return
        }
        // One namespace, one pod: two uids sharing one would split its traffic between identities.
        if let other = pods.first(where: { $0.key != uid && $0.value.netnsId == id })?.key {
            ack("failure to start proxy : the namespace given for \(uid) is pod \(other)'s")
            return
        }
        if var existing = pods[uid] {
            if existing.netnsId == id {
                if existing.info != info && existing.isUp { events.append(.updated(uid)) }
                existing.info = info
                pods[uid] = existing
                ack(existing.error.map { "failure to start proxy : \($0)" } ?? "")
                return
            }
            remove(uid, reason: "its network namespace changed")
        }
        guard pods.count < maxPods else {
            ack("failure to start proxy : \(maxPods) pods are enrolled on this node already")
            return
        }
        var pod = Pod(info: info, netns: netns, netnsId: id)
        start(uid, &pod, now: Clock.monotonicMilliseconds())
        pods[uid] = pod
        ack(pod.error.map { "failure to start proxy : \($0)" } ?? "")
    }

    private func retry(_ uid: String, _ pod: Pod, now: Int64) {
        var pod = pod
        start(uid, &pod, now: now)
        pods[uid] = pod
    }

    /// Makes the pod's listeners (one set per NetWorker); on failure the pod waits for a retry.
    private func start(_ uid: String, _ pod: inout Pod, now: Int64) {
        do {
            pod.listeners = try (0..<copies).map { _ in try makeListeners(in: pod.netns) }
            pod.error = nil
            pod.nextRetry = nil
            audit.record("pod_enrolled", [("uid", .string(uid)), ("name", .string(pod.info.name)),
                                          ("namespace", .string(pod.info.namespace)),
                                          ("service_account", .string(pod.info.serviceAccount))])
            Log.info("pod served", [("uid", uid), ("pod", "\(pod.info.namespace)/\(pod.info.name)")])
            started += 1
            events.append(.up(uid))
        } catch {
            let first = pod.error == nil
            pod.listeners = []
            pod.error = "\(error)"
            pod.nextRetry = now + Self.retryMilliseconds
            if first {
                audit.record("pod_refused", [("uid", .string(uid)), ("name", .string(pod.info.name)),
                                             ("namespace", .string(pod.info.namespace)), ("error", .string("\(error)"))])
                Log.error("pod not served; retrying every 5 s", [("uid", uid), ("pod", "\(pod.info.namespace)/\(pod.info.name)"),
                                                                 ("error", "\(error)")])
            }
        }
        events.append(.status)
    }

    private func remove(_ uid: String, reason: String) {
        guard let pod = pods.removeValue(forKey: uid) else { return }
        audit.record("pod_removed", [("uid", .string(uid)), ("name", .string(pod.info.name)),
                                     ("namespace", .string(pod.info.namespace)), ("reason", .string(reason))])
        Log.info("pod withdrawn", [("uid", uid), ("pod", "\(pod.info.namespace)/\(pod.info.name)"), ("reason", reason)])
        if pod.isUp {
            stopped += 1
            events.append(.down(uid))
        }
        events.append(.status)
    }

    /// Closes the connection (drain): the pods stay with the NetWorkers until they exit.
    func close() {
        connection = nil
    }

    // MARK: - Sockets in a pod's namespace

    struct PodSocketError: Error, CustomStringConvertible {
        let description: String
    }

    private func makeListeners(in netns: OwnedFD) throws -> [(name: String, fd: OwnedFD)] {
        var made: [(name: String, fd: OwnedFD)] = []
        for (name, address) in listenerSpecs {
            do {
                made.append((name, name == "dns-udp" ? try bindDatagram(in: netns, on: address) : try listen(in: netns, on: address)))
            } catch let error as SyscallError where name.hasPrefix("dns-") && address.host == "::1"
                && [EADDRNOTAVAIL, EAFNOSUPPORT].contains(error.errno) {
                continue  // no IPv6 on the pod's loopback: no IPv6 DNS to capture either
            }
        }
        return made
    }

    /// The DNS proxy's UDP socket in the namespace: marked, bound. Never SO_REUSEADDR: on UDP it
    /// would let any process in the pod, of any uid, bind the same address after us and take the
    /// pod's DNS; SO_REUSEPORT is limited to our own uid.
    private func bindDatagram(in netns: OwnedFD, on address: SocketAddress) throws -> OwnedFD {
        let fd = try sockets(in: netns, family: address.family == .ipv4 ? AF_INET : AF_INET6, count: 1,
                             type: Int32(SOCK_DGRAM.rawValue))[0]
        var one: Int32 = 1
        if reusePort || copies > 1 { try option(fd, SOL_SOCKET, SO_REUSEPORT, &one, "SO_REUSEPORT") }
        _ = try address.withSockAddr { pointer, length in
            try Syscall.retrying("bind \(address)/udp") { bind(fd.rawValue, pointer, length) }
        }
        return fd
    }

    /// A listener in the namespace: marked, transparent when allowed, reusable. A dual-stack
    /// wildcard falls back to IPv4 in a pod without IPv6.
    private func listen(in netns: OwnedFD, on address: SocketAddress) throws -> OwnedFD {
        do {
            return try listenOnce(in: netns, on: address)
        } catch let error as SyscallError where address.family == .ipv6 && address.host == "::"
            && [EAFNOSUPPORT, EADDRNOTAVAIL].contains(error.errno) {
            guard let v4 = SocketAddress.parse("0.0.0.0:\(address.port)") else { throw error }
            return try listenOnce(in: netns, on: v4)
        }
    }

    private func listenOnce(in netns: OwnedFD, on address: SocketAddress) throws -> OwnedFD {
        let fd = try sockets(in: netns, family: address.family == .ipv4 ? AF_INET : AF_INET6, count: 1)[0]
        var one: Int32 = 1
        var zero: Int32 = 0
        try option(fd, SOL_SOCKET, SO_REUSEADDR, &one, "SO_REUSEADDR")
        if reusePort || copies > 1 { try option(fd, SOL_SOCKET, SO_REUSEPORT, &one, "SO_REUSEPORT") }
        if address.family == .ipv6 { try option(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &zero, "IPV6_V6ONLY") }
        // A listener that TPROXY rules may deliver to: best effort, as upstream's default, or
        // required (ENABLE_ORIG_SRC=true).
        if transparent {
            let (level, name) = Self.transparentOption(address.family == .ipv6)
            if setsockopt(fd.rawValue, level, name, &one, socklen_t(MemoryLayout<Int32>.size)) != 0 && transparentRequired {
                throw SyscallError(function: "setsockopt(IP_TRANSPARENT) (ENABLE_ORIG_SRC=true)", errno: errno)
            }
        }
        try listenerOptions.applyToListener(fd.rawValue)
        _ = try address.withSockAddr { pointer, length in
            try Syscall.retrying("bind \(address)") { bind(fd.rawValue, pointer, length) }
        }
        _ = try Syscall.retrying("listen") { Glibc.listen(fd.rawValue, 1024) }
        return fd
    }

    /// (level, option) of IP_TRANSPARENT or IPV6_TRANSPARENT.
    private static func transparentOption(_ ipv6: Bool) -> (Int32, Int32) {
        ipv6 ? (Int32(IPPROTO_IPV6), 75 /* IPV6_TRANSPARENT */) : (Int32(IPPROTO_IP), 19 /* IP_TRANSPARENT */)
    }

    private func option(_ fd: OwnedFD, _ level: Int32, _ name: Int32, _ value: inout Int32, _ what: String) throws {
        _ = try Syscall.retrying("setsockopt(\(what))") { setsockopt(fd.rawValue, level, name, &value, socklen_t(MemoryLayout<Int32>.size)) }
    }

    /// `count` TCP sockets made in the namespace, each marked (SO_MARK: istio-cni's rules let
    /// them through instead of capturing them again).
    private func sockets(in netns: OwnedFD, family: Int32, count: Int, type: Int32 = Int32(SOCK_STREAM.rawValue)) throws -> [OwnedFD] {
        var raw = [Int32](repeating: -1, count: count)
        var error: Int32 = 0
        let made = Int(CShims_sockets_in_netns(netns.rawValue, family, type, Int32(count), &raw, &error))
        let fds = raw.prefix(made).map { OwnedFD(takingOwnershipOf: $0) }
        guard made == count else { throw SyscallError(function: "socket in the pod's network namespace", errno: error) }
        var mark = self.mark
        for fd in fds {
            _ = try Syscall.retrying("setsockopt(SO_MARK)") {
                setsockopt(fd.rawValue, SOL_SOCKET, SO_MARK, &mark, socklen_t(MemoryLayout<UInt32>.size))
            }
        }
        return fds
    }

    /// Unconnected, marked sockets for a NetWorker's connections on the pod's behalf; nil when
    /// the pod is not served (gone, or pending).
    func upstreamSockets(for uid: String, family: PodSocketFamily, count: Int) -> [OwnedFD]? {
        guard let pod = pods[uid], pod.isUp else { return nil }
        do {
            let made = try sockets(in: pod.netns, family: family == .ipv4 ? AF_INET : AF_INET6, count: count)
            if transparentSockets {
                // Lets the NetWorker bind a connection to an application to the client's address
                // (it has no capability to set these itself). Best effort: without them its bind
                // fails and the connection leaves from the pod's address.
                var one: Int32 = 1
                let (level, name) = Self.transparentOption(family == .ipv6)
                let freebind: Int32 = family == .ipv6 ? 78 /* IPV6_FREEBIND */ : 15 /* IP_FREEBIND */
                for fd in made {
                    _ = setsockopt(fd.rawValue, level, name, &one, socklen_t(MemoryLayout<Int32>.size))
                    _ = setsockopt(fd.rawValue, level, freebind, &one, socklen_t(MemoryLayout<Int32>.size))
                }
            }
            return made
        } catch {
            Log.warn("cannot make sockets in a pod's namespace", [("uid", uid), ("error", "\(error)")])
            return []
        }
    }
}
