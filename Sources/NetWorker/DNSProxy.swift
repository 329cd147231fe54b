import IPC
import Mesh
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// The per-pod DNS proxy on 15053 (ISTIO_COMPAT §13), UDP and TCP, in in-pod mode: istio-cni
/// redirects each enrolled pod's DNS there. A/AAAA questions for mesh services are answered from
/// the mesh model (authoritative, TTL 30 s); everything else is forwarded to the nameservers of
/// ztunnel's own /etc/resolv.conf, in order. Over UDP, through sockets the Supervisor made and
/// connected to each nameserver (a NetWorker may not make UDP sockets), each query under a
/// random id of ours; an answer with TC set, or no UDP socket, goes over TCP, one connection per
/// query. At most 32 forwards in flight per pod and 256 per NetWorker (beyond: SERVFAIL), 5 s
/// for the whole attempt.
final class DNSProxy: Sendable {
    private let state: NetWorkerState
    private let group: EventLoopGroup
    private let upstreams = NIOLockedValueBox<[DNSUpstream]>([])
    private let domain: String
    private let network: String
    private let ipv6: Bool
    /// Ztunnel's search domains, stripped from a name to look it up again (§13).
    private let searchDomains: [String]
    private let preferredNamespace: String
    private let inFlight = NIOLockedValueBox<(total: Int, byPod: [String: Int])>((0, [:]))
    private let metrics: DNSMetrics
    /// Where istio-cni sends a pod's DNS: the proxy's port on the pod's loopback.
    static let port: UInt16 = 15053
    static let forwardTimeout = TimeAmount.seconds(5)
    static let udpTryTimeout = TimeAmount.seconds(2)
    static let maxRecords = 64
    static let maxForwardsPerPod = 32
    static let maxForwards = 256
    static let maxTCPConnectionsPerPod = 64

    // Written once by the NetWorker's main thread before any listener is adopted.
    nonisolated(unsafe) static var shared: DNSProxy?

    init(state: NetWorkerState, group: EventLoopGroup, metrics: DNSMetrics) {
        self.state = state
        self.metrics = metrics
        self.group = group
        domain = state.configuration.string("CLUSTER_DOMAIN")
        network = state.configuration.string("NETWORK")
        ipv6 = state.configuration.bool("IPV6_ENABLED")
        searchDomains = state.configuration.string("ZTUNNEL_DNS_SEARCH_DOMAINS").split(separator: " ").map(String.init)
        preferredNamespace = state.configuration.string("PREFERED_SERVICE_NAMESPACE")
    }

    /// A UDP socket connected to one nameserver, from the Supervisor (in resolv.conf's order).
    func addUpstream(_ fd: OwnedFD) {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd.rawValue, $0, &length) }
        }
        var peer: NIOCore.SocketAddress?
        if named == 0 && Int32(storage.ss_family) == AF_INET {
            peer = withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { NIOCore.SocketAddress($0.pointee, host: "") } }
        } else if named == 0 && Int32(storage.ss_family) == AF_INET6 {
            peer = withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { NIOCore.SocketAddress($0.pointee, host: "") } }
        }
        guard let address = peer else {
            Log.warn("dns proxy: an upstream socket without a peer; ignored")
            return
        }
        let upstream = DNSUpstream(address: address, fd: fd.rawValue)
        do {
            upstream.channel = try DatagramBootstrap(group: group)
                .channelInitializer { $0.pipeline.addHandler(DNSUpstreamHandler(upstream: upstream)) }
                .withBoundSocket(fd.take()).wait()
        } catch {
            Log.warn("dns proxy: cannot use the socket to nameserver \(address): \(error)")
            return
        }
        upstreams.withLockedValue { $0.append(upstream) }
        Log.info("dns proxy: forwarding to nameserver \(address)")
    }

    /// Runs `body` with the descriptor of a nameserver socket, on its channel's event loop and
    /// only while that channel is open (NIO may close it there, and the number be reused): the
    /// fault probe `dns-upstream-elsewhere`. False when there is no such socket.
    func withUpstreamDescriptor(_ body: @escaping @Sendable (Int32) -> Void) -> Bool {
        guard let upstream = upstreams.withLockedValue({ $0.first }), let channel = upstream.channel else { return false }
        let fd = upstream.fd
        channel.eventLoop.execute {
            if channel.isActive { body(fd) } else { Log.warn("the nameserver socket to \(upstream.address) is closed") }
        }
        return true
    }

    /// Whether lookups of its own can be made: a nameserver socket came from the Supervisor.
    var canResolve: Bool { upstreams.withLockedValue { !$0.isEmpty } }

    /// What the NetWorker's own lookups count against in the forward budget.
    static let ownLookups = "(ztunnel)"

    /// The addresses of `name` from the nameservers, for SOCKS5 names outside the mesh (§14):
    /// A, and AAAA when IPv6 is enabled, asked at once; IPv4 first. Empty when no nameserver
    /// answered in time or the name has none; nil when too many lookups are in flight already
    /// (at most `maxForwardsPerPod` of its own, within the NetWorker's `maxForwards`).
    func resolve(_ name: String, on loop: EventLoop) -> EventLoopFuture<[IPAddress]?> {
        let upstreams = self.upstreams.withLockedValue { $0 }
        guard !upstreams.isEmpty else { return loop.makeSucceededFuture([]) }
        guard reserveForward(Self.ownLookups) else { return loop.makeSucceededFuture(nil) }
        let deadline = NIODeadline.now() + Self.forwardTimeout
        let types = ipv6 ? [DNSQuery.typeA, DNSQuery.typeAAAA] : [DNSQuery.typeA]
        let asked = types.map { type -> EventLoopFuture<[IPAddress]> in
            let id = UInt16.random(in: 0...UInt16.max)
            guard let query = DNSLookup.query(id: id, name: name, type: type) else { return loop.makeSucceededFuture([]) }
            return forward(query, to: upstreams[...], until: deadline, on: loop).map { answer in
                guard let answer, let found = DNSLookup.addresses(in: answer, id: id, name: name, type: type) else { return [] }
                return found.compactMap { IPAddress(bytes: $0) }
            }
        }
        return EventLoopFuture.whenAllComplete(asked, on: loop)
            .map { results -> [IPAddress]? in results.flatMap { (try? $0.get()) ?? [] } }
            .always { _ in self.releaseForward(Self.ownLookups) }
    }

    /// The answer to one message from pod `pod` (sent from `source`, an IP), or nil to drop it
    /// (no header to answer).
    func answer(_ bytes: [UInt8], pod: String, source: String?, udp: Bool, on loop: EventLoop) -> EventLoopFuture<[UInt8]?> {
        let query: DNSQuery
        do {
            query = try DNSQuery.parse(bytes)
        } catch DNSQuery.Failure.opcode {
            return loop.makeSucceededFuture(DNSQuery.id(of: bytes).map { DNSResponse.failure(id: $0, rcode: DNSResponse.notImp) })
        } catch {
            return loop.makeSucceededFuture(DNSQuery.id(of: bytes).map { DNSResponse.failure(id: $0, rcode: DNSResponse.formErr) })
        }
        guard let namespace = PodDialer.shared?.info(pod)?.namespace else {
            Log.debug("dns query from a pod no longer served", [("pod", pod)])
            return loop.makeSucceededFuture(DNSResponse.failure(id: query.id, rcode: DNSResponse.servFail, query: query))
        }
        let model = state.model  // one snapshot for the whole query
        let client = state.workload(at: source, in: model)
        let labels = DNSMetrics.Labels(queryType: DNSMetrics.typeName(query.type), udp: udp,
                                       canonicalService: Self.orUnknown(client?.canonicalName),
                                       canonicalRevision: Self.orUnknown(client?.canonicalRevision))
        if query.qclass == DNSQuery.classIN, query.type == DNSQuery.typeA || query.type == DNSQuery.typeAAAA,
           let name = query.name, let records = lookUp(name, v6: query.type == DNSQuery.typeAAAA, clientNamespace: namespace, in: model) {
            Log.debug("dns answered", [("pod", pod), ("query", name), ("records", "\(records.count)")])
            metrics.answered(labels)
            return loop.makeSucceededFuture(DNSResponse.answer(query, records: records, udp: udp))
        }
        guard reserveForward(pod) else {
            Log.debug("dns forward refused: too many in flight", [("pod", pod)])
            metrics.forwarded(labels, failed: true, nanoseconds: 0)
            return loop.makeSucceededFuture(DNSResponse.failure(id: query.id, rcode: DNSResponse.servFail, query: query))
        }
        let started = NIODeadline.now()
        let deadline = started + Self.forwardTimeout
        let metrics = self.metrics
        let upstreams = self.upstreams.withLockedValue { $0 }
        return forward(bytes, to: upstreams[...], until: deadline, on: loop).always { _ in self.releaseForward(pod) }
            .map { response -> [UInt8]? in
            let took = UInt64(max(0, (NIODeadline.now() - started).nanoseconds))
            guard let response, response.count >= 12, DNSQuery.u16(response, 0) == query.id else {
                metrics.forwarded(labels, failed: true, nanoseconds: took)
                return DNSResponse.failure(id: query.id, rcode: DNSResponse.servFail, query: query)
            }
            metrics.forwarded(labels, failed: false, nanoseconds: took)
            return udp ? DNSResponse.forUDP(response, query: query) : response
        }
    }

    private static func orUnknown(_ value: String?) -> String { (value ?? "").isEmpty ? "unknown" : value ?? "unknown" }

    /// Addresses of the service the name means, or nil when no mesh service has it (forwarded).
    /// A service found without an address of the family asked is an empty answer, not a miss.
    /// The name is tried as it came, then with each of ztunnel's search domains stripped; a
    /// match found by stripping (not through a wildcard) is answered with a CNAME from the name
    /// asked to the stripped one first (§13).
    func lookUp(_ name: String, v6: Bool, clientNamespace: String, in model: MeshModel) -> [DNSRecord]? {
        var names = [name]
        for search in searchDomains where name.hasSuffix("." + search) && name.utf8.count > search.utf8.count + 1 {
            names.append(String(name.dropLast(search.count + 1)))
        }
        for (index, asked) in names.enumerated() {
            for candidate in DNSNames.candidates(asked, clientNamespace: clientNamespace, domain: domain) {
                guard let records = records(for: candidate, v6: v6, clientNamespace: clientNamespace, in: model) else { continue }
                return index > 0 && !candidate.hasPrefix("*.") ? [.cname(asked)] + records : records
            }
        }
        return nil
    }

    /// The records of the service `candidate` names, or nil when none does.
    private func records(for candidate: String, v6: Bool, clientNamespace: String, in model: MeshModel) -> [DNSRecord]? {
        let matching = (model.servicesByHostname[candidate] ?? []).compactMap { model.services[$0] }.filter { service in
            (service.visibility == .public || service.namespace == clientNamespace)
                && (!service.vips.isEmpty || service.hostname.hasSuffix(".svc.\(domain)"))
        }
        guard let service = matching.min(by: { rank($0, clientNamespace) < rank($1, clientNamespace) }) else { return nil }
        if v6 && !ipv6 { return [] }
        var addresses: [IPAddress]
        if service.vips.isEmpty {
            // Headless: the ready endpoints of this network, as the router would pick them.
            addresses = model.endpoints(of: service.key)
                .filter { $0.workload.status == .healthy && $0.workload.network == network }
                .flatMap { $0.workload.addresses }
        } else {
            addresses = service.vips.filter { $0.network == network }.map(\.ip)
        }
        addresses = addresses.map(\.unmapped).filter { $0.isIPv4 != v6 }
        var seen = Set<IPAddress>()
        // A headless service may have thousands of endpoints; an answer keeps 64 of them (at
        // random), which also keeps it far below a TCP message's 64 KiB.
        return addresses.filter { seen.insert($0).inserted }.shuffled().prefix(Self.maxRecords)
            .map { v6 ? .aaaa($0.bytes) : .a($0.bytes) }
    }

    /// The client's namespace first, then a canonical service, then PREFERED_SERVICE_NAMESPACE,
    /// then by key (a stable choice).
    private func rank(_ service: Service, _ clientNamespace: String) -> (Int, Int, Int, String) {
        (service.namespace == clientNamespace ? 0 : 1, service.canonical ? 0 : 1,
         !preferredNamespace.isEmpty && service.namespace == preferredNamespace ? 0 : 1, service.key)
    }

    private func reserveForward(_ pod: String) -> Bool {
        inFlight.withLockedValue { counts in
            guard counts.total < Self.maxForwards, counts.byPod[pod, default: 0] < Self.maxForwardsPerPod else { return false }
            counts.total += 1
            counts.byPod[pod, default: 0] += 1
            return true
        }
    }

    private func releaseForward(_ pod: String) {
        inFlight.withLockedValue { counts in
            counts.total -= 1
            let left = counts.byPod[pod, default: 1] - 1
            counts.byPod[pod] = left > 0 ? left : nil
        }
    }

    /// The query to the first of `upstreams` that answers: over UDP (2 s a try), then over TCP
    /// when its UDP answer was truncated; its answer (with the query's own id), or nil when none
    /// answered by the deadline.
    private func forward(_ bytes: [UInt8], to upstreams: ArraySlice<DNSUpstream>, until deadline: NIODeadline,
                         on loop: EventLoop) -> EventLoopFuture<[UInt8]?> {
        guard let upstream = upstreams.first, deadline > .now() else { return loop.makeSucceededFuture(nil) }
        let tryDeadline = min(deadline, .now() + Self.udpTryTimeout)
        return upstream.ask(bytes, until: tryDeadline, on: loop).hop(to: loop).flatMap { answer -> EventLoopFuture<[UInt8]?> in
            if let answer, answer.count >= 12, answer[2] & 0x02 == 0 { return loop.makeSucceededFuture(answer) }
            if answer != nil {  // truncated: the whole answer over TCP from the same nameserver
                return self.forwardTCP(bytes, to: upstream.address, until: deadline, on: loop)
            }
            return loop.makeSucceededFuture(nil)
        }.flatMap { answer in
            answer.map { loop.makeSucceededFuture($0) } ?? self.forward(bytes, to: upstreams.dropFirst(), until: deadline, on: loop)
        }
    }

    /// The query, as it came, over TCP (a 2-byte length before each message); its answer, or
    /// nil on any failure or at the deadline.
    private func forwardTCP(_ bytes: [UInt8], to upstream: NIOCore.SocketAddress, until deadline: NIODeadline,
                            on loop: EventLoop) -> EventLoopFuture<[UInt8]?> {
        let promise = loop.makePromise(of: [UInt8]?.self)
        ClientBootstrap(group: loop)
            .connectTimeout(deadline - .now())
            .channelInitializer { channel in
                channel.pipeline.addHandler(ByteToMessageHandler(DNSStreamDecoder())).flatMap {
                    channel.pipeline.addHandler(ForwardedAnswer(promise: promise))
                }
            }
            .connect(to: upstream)
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    var buffer = channel.allocator.buffer(capacity: bytes.count + 2)
                    buffer.writeInteger(UInt16(bytes.count))
                    buffer.writeBytes(bytes)
                    channel.writeAndFlush(buffer, promise: nil)
                    let timeout = loop.scheduleTask(deadline: deadline) { channel.close(promise: nil) }
                    promise.futureResult.whenComplete { _ in
                        timeout.cancel()
                        channel.close(promise: nil)
                    }
                case .failure(let error):
                    Log.debug("dns forward failed", [("upstream", "\(upstream)"), ("error", "\(error)")])
                    promise.succeed(nil)
                }
            }
        return promise.futureResult
    }
}

/// DNS over TCP: each message preceded by its length (2 bytes).
struct DNSStreamDecoder: ByteToMessageDecoder {
    typealias InboundOut = [UInt8]

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        // Copied only once the whole frame is here (its 2-byte length, then the message), not on
        // every partial read.
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt16.self),
              buffer.readableBytes >= 2 + Int(length) else { return .needMoreData }
        let frame = buffer.getBytes(at: buffer.readerIndex, length: 2 + Int(length)) ?? []
        guard let (message, consumed) = DNSTCPFrame.next(frame[...]) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: consumed)
        context.fireChannelRead(wrapInboundOut(Array(message)))
        return .continue
    }
}

/// The first answer on a forwarding connection completes the promise; a close before it, nil.
private final class ForwardedAnswer: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = [UInt8]
    private let promise: EventLoopPromise<[UInt8]?>
    private var done = false

    init(promise: EventLoopPromise<[UInt8]?>) { self.promise = promise }

    private func complete(_ answer: [UInt8]?) {
        guard !done else { return }
        done = true
        promise.succeed(answer)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        complete(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        complete(nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// 15053/UDP of one pod: each datagram answered to its sender.
final class DNSDatagramHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>
    private let proxy: DNSProxy
    private let pod: String

    init(proxy: DNSProxy, pod: String) {
        self.proxy = proxy
        self.pod = pod
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        let bytes = envelope.data.getBytes(at: envelope.data.readerIndex, length: envelope.data.readableBytes) ?? []
        let channel = context.channel
        proxy.answer(bytes, pod: pod, source: envelope.remoteAddress.ipAddress, udp: true, on: context.eventLoop).whenSuccess { answer in
            guard let answer else { return }
            var buffer = channel.allocator.buffer(capacity: answer.count)
            buffer.writeBytes(answer)
            channel.writeAndFlush(AddressedEnvelope(remoteAddress: envelope.remoteAddress, data: buffer), promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A datagram socket keeps serving after a bad send or an ICMP error.
        Log.debug("dns udp: \(error)")
    }
}

/// 15053/TCP of one pod: length-prefixed queries, answered in order.
final class DNSStreamHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = [UInt8]
    typealias OutboundOut = ByteBuffer
    private let proxy: DNSProxy
    private let pod: String
    private var pending: EventLoopFuture<Void>?
    private var queued = 0
    /// Queries a client may have waiting for their answers on one connection.
    static let maxQueued = 32

    init(proxy: DNSProxy, pod: String) {
        self.proxy = proxy
        self.pod = pod
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let query = unwrapInboundIn(data)
        let channel = context.channel
        let loop = context.eventLoop
        let proxy = self.proxy, pod = self.pod
        guard queued < Self.maxQueued else {
            Log.debug("dns tcp: more than \(Self.maxQueued) queries waiting; closed", [("pod", pod)])
            context.close(promise: nil)
            return
        }
        queued += 1
        let previous = pending ?? loop.makeSucceededVoidFuture()
        // One at a time, in order: the next answer is written after the one before it.
        pending = previous.flatMap { () -> EventLoopFuture<[UInt8]?> in
            guard channel.isActive else { return loop.makeSucceededFuture(nil) }
            return proxy.answer(query, pod: pod, source: channel.remoteAddress?.ipAddress, udp: false, on: loop)
        }.map { answer in
            self.queued -= 1
            // No answer (no header to answer), or a client that stopped reading while answers
            // pile up in our buffer: the connection ends.
            guard let answer, channel.isWritable else { channel.close(promise: nil); return }
            var buffer = channel.allocator.buffer(capacity: answer.count + 2)
            buffer.writeInteger(UInt16(answer.count))
            buffer.writeBytes(answer)
            channel.writeAndFlush(buffer, promise: nil)
        }
    }

    /// Idle for 30 s, or the client's side closed (after its last query): the connection ends,
    /// once the answers already asked for are written.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else if let event = event as? ChannelEvent, event == .inputClosed {
            let channel = context.channel
            (pending ?? context.eventLoop.makeSucceededVoidFuture()).whenComplete { _ in channel.close(promise: nil) }
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// One nameserver over a connected UDP socket: each query goes out under a random id of ours,
/// not in use on this socket; the answer comes back under its own id. All state lives on the
/// channel's event loop.
final class DNSUpstream: @unchecked Sendable {
    let address: NIOCore.SocketAddress
    var channel: Channel?
    /// The socket's descriptor (NIO's, used on the channel's loop while it is open): for the
    /// fault probe `dns-upstream-elsewhere` only.
    let fd: Int32
    private var pending: [UInt16: (id: UInt16, promise: EventLoopPromise<[UInt8]?>, timeout: Scheduled<Void>)] = [:]
    static let maxPending = 1024

    init(address: NIOCore.SocketAddress, fd: Int32) {
        self.address = address
        self.fd = fd
    }

    /// The answer to `query` (its id restored), or nil at `deadline` or on any failure.
    func ask(_ query: [UInt8], until deadline: NIODeadline, on caller: EventLoop) -> EventLoopFuture<[UInt8]?> {
        guard let channel else { return caller.makeSucceededFuture(nil) }
        let loop = channel.eventLoop
        return loop.flatSubmit {
            guard query.count >= 12, self.pending.count < Self.maxPending else { return loop.makeSucceededFuture(nil) }
            var ours = UInt16.random(in: 0...UInt16.max)
            while self.pending[ours] != nil { ours = UInt16.random(in: 0...UInt16.max) }
            let promise = loop.makePromise(of: [UInt8]?.self)
            let timeout = loop.scheduleTask(deadline: deadline) { self.complete(ours, with: nil) }
            self.pending[ours] = (DNSQuery.u16(query, 0), promise, timeout)
            var buffer = channel.allocator.buffer(capacity: query.count)
            buffer.writeBytes(DNSResponse.be16(ours))
            buffer.writeBytes(query[2...])
            channel.writeAndFlush(AddressedEnvelope(remoteAddress: self.address, data: buffer)).whenFailure { error in
                Log.debug("dns upstream \(self.address): \(error)")
                self.complete(ours, with: nil)
            }
            return promise.futureResult
        }
    }

    /// On the channel's loop: the waiting query with id `ours` gets `answer` (its id restored).
    func complete(_ ours: UInt16, with answer: [UInt8]?) {
        guard let waiting = pending.removeValue(forKey: ours) else { return }
        waiting.timeout.cancel()
        waiting.promise.succeed(answer.map { DNSResponse.restoringID($0, to: waiting.id) })
    }

    /// On the channel's loop: the nameserver refused (ICMP port unreachable on the connected
    /// socket): every query waiting on it goes on to the next nameserver now.
    func failAll() {
        for ours in Array(pending.keys) { complete(ours, with: nil) }
    }
}

/// Answers from a nameserver's connected UDP socket (the kernel passes only its datagrams).
private final class DNSUpstreamHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    private let upstream: DNSUpstream

    init(upstream: DNSUpstream) { self.upstream = upstream }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        guard let bytes = envelope.data.getBytes(at: envelope.data.readerIndex, length: envelope.data.readableBytes),
              DNSResponse.isAnswer(bytes) else { return }
        upstream.complete(DNSQuery.u16(bytes, 0), with: bytes)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        Log.debug("dns upstream: \(error)")
        if let error = error as? IOError, error.errnoCode == ECONNREFUSED { upstream.failAll() }
    }
}
