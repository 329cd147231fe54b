internal import CNghttp2
internal import COpenSSL
internal import CShims
import OpenSSLSupport
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// A client connection to istiod: TCP, TLS 1.3 (OpenSSL; the server name or IP verified against
/// the given roots, ALPN h2) and HTTP/2 (nghttp2), with any number of streams, each with a
/// request body that may still be growing (a gRPC stream). The socket is non-blocking and the
/// connection never waits by itself: the owner polls `fd` (for writing too when `wantsWrite`),
/// then calls `readAvailable()` and `flush()`. `HTTP2Call` is the one-shot use (the CA), the xDS
/// worker's ADS stream the long-lived one: one HTTP/2 client, no second TLS stack.
public final class HTTP2ClientConnection {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        public init(_ description: String) { self.description = description }
    }

    /// What arrived, in order.
    public enum Event: Equatable {
        /// A complete header block: the response headers (with `:status`) or the trailers.
        case headers(stream: Int32, [Header])
        case data(stream: Int32, [UInt8])
        /// The stream ended; `errorCode` is non-zero when it was reset.
        case closed(stream: Int32, errorCode: UInt32)
        /// The server will take no new streams.
        case goaway(errorCode: UInt32)
    }

    public struct Header: Equatable, Sendable {
        public let name: String
        public let value: String
        public init(_ name: String, _ value: String) { self.name = name; self.value = value }
    }

    public let fd: Int32
    public let peer: String
    private let ssl: OpaquePointer
    private var session: OpaquePointer?
    private var events: [Event] = []
    private var pendingHeaders: [Int32: [Header]] = [:]
    /// Per stream, the request body not yet handed to nghttp2, and whether it ends there.
    private var bodies: [Int32: (bytes: [UInt8], offset: Int, ended: Bool)] = [:]
    /// Bytes nghttp2 produced that TLS has not taken yet (SSL_write retries need the same bytes).
    private var outbox: [UInt8] = []
    /// Most bytes one stream may receive (the CA: a few KiB; xDS: its message bound).
    private let maxReceivedPerStream: Int
    private var received: [Int32: Int] = [:]
    /// Header bytes received per stream (all blocks), bounded by `maxHeaderBytesPerStream`.
    private var headerBytes: [Int32: Int] = [:]
    static let maxHeaderBytesPerStream = 64 * 1024
    private var isClosed = false

    /// Connects and completes the TLS handshake by `deadline` (monotonic ms), waiting in poll.
    /// `serverName` is verified (DNS name or IP literal) and sent as SNI when it is a name.
    public static func connect(host: String, port: UInt16, serverName: String, roots: TrustRoots, deadline: Int64,
                               maxReceivedPerStream: Int) throws -> HTTP2ClientConnection {
        let fd = try connectTCP(host: host, port: port, deadline: deadline)
        let ssl: OpaquePointer
        do { ssl = try handshake(fd: fd, serverName: serverName, roots: roots, deadline: deadline) } catch {
            Syscall.close(fd)
            throw error
        }
        let connection = HTTP2ClientConnection(fd: fd, ssl: ssl, peer: "\(host):\(port)", maxReceivedPerStream: maxReceivedPerStream)
        try connection.startSession()
        return connection
    }

    private init(fd: Int32, ssl: OpaquePointer, peer: String, maxReceivedPerStream: Int) {
        self.fd = fd
        self.ssl = ssl
        self.peer = peer
        self.maxReceivedPerStream = maxReceivedPerStream
    }

    deinit { close() }

    /// Closes the connection (no GOAWAY: the peer sees the TCP close).
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        if let session { nghttp2_session_del(session) }
        session = nil
        SSL_free(ssl)
        Syscall.close(fd)
    }

    // MARK: - Streams

    /// Opens a POST stream. `body` is its first bytes; with `endStream` false, more come by
    /// `send(_:on:end:)`. Returns the stream id.
    @discardableResult
    public func request(authority: String, path: String, headers: [(String, String)], body: [UInt8], endStream: Bool) throws -> Int32 {
        guard let session else { throw Failure("connection closed") }
        let all = [(":method", "POST"), (":scheme", "https"), (":authority", authority), (":path", path)] + headers
        // nghttp2 copies names and values during submit; the C strings live for this call only.
        let names = all.map { strdup($0.0) }
        let values = all.map { strdup($0.1) }
        defer { (names + values).forEach { free($0) } }
        var nva = (0..<all.count).map { index in
            nghttp2_nv(name: UnsafeMutableRawPointer(names[index]!).assumingMemoryBound(to: UInt8.self),
                       value: UnsafeMutableRawPointer(values[index]!).assumingMemoryBound(to: UInt8.self),
                       namelen: all[index].0.utf8.count, valuelen: all[index].1.utf8.count, flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue))
        }
        var provider = nghttp2_data_provider()
        provider.read_callback = { _, streamId, buffer, length, flags, _, user in
            guard let user, let buffer, let flags else { return Int(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
            return Unmanaged<HTTP2ClientConnection>.fromOpaque(user).takeUnretainedValue()
                .provide(stream: streamId, into: buffer, length: length, flags: flags)
        }
        let stream = nghttp2_submit_request(session, nil, &nva, nva.count, &provider, nil)
        guard stream > 0 else { throw Failure("nghttp2 request: \(String(cString: nghttp2_strerror(stream)))") }
        bodies[stream] = (body, 0, endStream)
        return stream
    }

    /// Appends bytes to a stream's request body (and ends it with `end`).
    public func send(_ bytes: [UInt8], on stream: Int32, end: Bool = false) throws {
        guard let session else { throw Failure("connection closed") }
        guard var body = bodies[stream], !body.ended else { throw Failure("stream \(stream) is not open for sending") }
        if body.offset > 0 && body.offset == body.bytes.count {
            body.bytes.removeAll(keepingCapacity: true)
            body.offset = 0
        }
        body.bytes += bytes
        body.ended = end
        bodies[stream] = body
        _ = nghttp2_session_resume_data(session, stream)
    }

    private func provide(stream: Int32, into buffer: UnsafeMutablePointer<UInt8>, length: Int,
                         flags: UnsafeMutablePointer<UInt32>) -> Int {
        guard var body = bodies[stream] else { return Int(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
        let count = min(length, body.bytes.count - body.offset)
        if count == 0 && !body.ended { return Int(NGHTTP2_ERR_DEFERRED.rawValue) }
        body.bytes.withUnsafeBytes { raw in
            if count > 0, let base = raw.baseAddress { buffer.update(from: base.assumingMemoryBound(to: UInt8.self) + body.offset, count: count) }
        }
        body.offset += count
        if body.ended && body.offset == body.bytes.count {
            flags.pointee |= UInt32(NGHTTP2_DATA_FLAG_EOF.rawValue)
            body.bytes = []
            body.offset = 0
        }
        bodies[stream] = body
        return count
    }

    // MARK: - Reading and writing

    /// Whether TLS holds input the socket's readiness no longer shows: read again without polling.
    public var hasBufferedInput: Bool { !isClosed && SSL_pending(ssl) > 0 }

    /// Whether bytes wait for the socket to become writable.
    public var wantsWrite: Bool {
        guard let session else { return false }
        return !outbox.isEmpty || nghttp2_session_want_write(session) != 0
    }

    /// Reads what the socket has (without blocking), at most `budget` bytes, and returns the
    /// events it produced: a peer that sends without pause cannot make one call hold more than the
    /// budget. Bytes TLS already decrypted beyond it wait (`hasBufferedInput`). Throws when the
    /// peer closed the connection or sent what HTTP/2 or TLS refuse.
    public func readAvailable(budget: Int = 4 << 20) throws -> [Event] {
        guard let session else { throw Failure("connection closed") }
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        var taken = 0
        while taken < budget {
            let read = SSL_read(ssl, &buffer, Int32(buffer.count))
            if read <= 0 {
                let error = SSL_get_error(ssl, read)
                if error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE { break }
                if error == SSL_ERROR_ZERO_RETURN || (error == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
                    throw Failure("\(peer) closed the connection")
                }
                throw Failure("reading from \(peer): \(OpenSSLError("TLS"))")
            }
            taken += Int(read)
            let consumed = nghttp2_session_mem_recv(session, buffer, Int(read))
            guard consumed >= 0 else { throw Failure("malformed HTTP/2 from \(peer): \(String(cString: nghttp2_strerror(Int32(consumed))))") }
            if isClosed { break }
        }
        let out = events
        events = []
        return out
    }

    /// Writes what nghttp2 has queued until the socket would block. Returns true when all of it
    /// was written.
    @discardableResult
    public func flush() throws -> Bool {
        guard let session else { throw Failure("connection closed") }
        while true {
            if outbox.isEmpty {
                var data: UnsafePointer<UInt8>?
                let length = nghttp2_session_mem_send(session, &data)
                guard length >= 0 else { throw Failure("nghttp2 send: \(String(cString: nghttp2_strerror(Int32(length))))") }
                guard length > 0, let data else { return true }
                outbox = Array(UnsafeBufferPointer(start: data, count: length))
            }
            let written = outbox.withUnsafeBytes { SSL_write(ssl, $0.baseAddress, Int32($0.count)) }
            if written > 0 {
                outbox.removeFirst(Int(written))
                continue
            }
            let error = SSL_get_error(ssl, written)
            if error == SSL_ERROR_WANT_WRITE || error == SSL_ERROR_WANT_READ { return false }
            throw Failure("writing to \(peer): \(OpenSSLError("TLS"))")
        }
    }

    /// Waits (poll) until the socket is readable, or writable when bytes wait, or `deadline`
    /// passes (throws `what` timed out).
    public func wait(until deadline: Int64, _ what: String) throws {
        try Self.poll(fd: fd, events: Int16(POLLIN) | (wantsWrite ? Int16(POLLOUT) : 0), deadline: deadline, what)
    }

    // MARK: - nghttp2 session

    private func startSession() throws {
        var callbacks: OpaquePointer?
        guard nghttp2_session_callbacks_new(&callbacks) == 0, let callbacks else { throw Failure("nghttp2 callbacks") }
        defer { nghttp2_session_callbacks_del(callbacks) }
        nghttp2_session_callbacks_set_on_header_callback(callbacks) { _, frame, name, nameLength, value, valueLength, _, user in
            guard let user, let frame, let name, let value else { return 0 }
            let connection = Unmanaged<HTTP2ClientConnection>.fromOpaque(user).takeUnretainedValue()
            let header = Header(String(decoding: UnsafeBufferPointer(start: name, count: nameLength), as: UTF8.self),
                                String(decoding: UnsafeBufferPointer(start: value, count: valueLength), as: UTF8.self))
            let stream = frame.pointee.hd.stream_id
            // Bounded per stream, across blocks: HPACK lets a few wire bytes name kilobytes.
            let bytes = (connection.headerBytes[stream] ?? 0) + nameLength + valueLength + 32
            guard (connection.pendingHeaders[stream]?.count ?? 0) < 256, bytes <= HTTP2ClientConnection.maxHeaderBytesPerStream else {
                return Int32(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue)
            }
            connection.headerBytes[stream] = bytes
            connection.pendingHeaders[stream, default: []].append(header)
            return 0
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks) { _, frame, user in
            guard let user, let frame else { return 0 }
            let connection = Unmanaged<HTTP2ClientConnection>.fromOpaque(user).takeUnretainedValue()
            let stream = frame.pointee.hd.stream_id
            switch UInt32(frame.pointee.hd.type) {
            case NGHTTP2_HEADERS.rawValue:
                connection.events.append(.headers(stream: stream, connection.pendingHeaders.removeValue(forKey: stream) ?? []))
            case NGHTTP2_GOAWAY.rawValue:
                connection.events.append(.goaway(errorCode: frame.pointee.goaway.error_code))
            default: break
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks) { _, _, stream, data, length, user in
            guard let user, let data else { return 0 }
            let connection = Unmanaged<HTTP2ClientConnection>.fromOpaque(user).takeUnretainedValue()
            let total = (connection.received[stream] ?? 0) + length
            guard total <= connection.maxReceivedPerStream else { return Int32(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
            connection.received[stream] = total
            connection.events.append(.data(stream: stream, Array(UnsafeBufferPointer(start: data, count: length))))
            return 0
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks) { _, stream, errorCode, user in
            guard let user else { return 0 }
            let connection = Unmanaged<HTTP2ClientConnection>.fromOpaque(user).takeUnretainedValue()
            connection.bodies[stream] = nil
            connection.received[stream] = nil
            connection.pendingHeaders[stream] = nil
            connection.headerBytes[stream] = nil
            connection.events.append(.closed(stream: stream, errorCode: errorCode))
            return 0
        }
        let user = Unmanaged.passUnretained(self).toOpaque()
        guard nghttp2_session_client_new(&session, callbacks, user) == 0, let session else { throw Failure("nghttp2 session") }
        // A large window: an xDS push of a big mesh is megabytes, and nghttp2 acknowledges what the
        // callbacks consumed.
        var settings = [nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: 4 << 20),
                        nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0),
                        nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: 64 * 1024)]
        guard nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &settings, settings.count) == 0,
              nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, 16 << 20) == 0 else {
            throw Failure("nghttp2 settings")
        }
    }

    // MARK: - TCP and TLS

    static func poll(fd: Int32, events: Int16, deadline: Int64, _ what: String) throws {
        let remaining = deadline - Clock.monotonicMilliseconds()
        guard remaining > 0 else { throw Failure("timed out \(what)") }
        var pfd = pollfd(fd: fd, events: events, revents: 0)
        if Glibc.poll(&pfd, 1, Int32(clamping: remaining)) == 0 { throw Failure("timed out \(what)") }
    }

    private static func connectTCP(host: String, port: UInt16, deadline: Int64) throws -> Int32 {
        var hints = addrinfo()
        // One socket type, so glibc has no several answers to sort (RFC 6724 sorting opens UDP
        // sockets, which a worker that looks no name up may not: RoleSpec.seccomp).
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &result)
        guard rc == 0, let first = result else {
            if let path = ResolverFiles.changedSinceWarmUp() { ResolverFiles.whenChanged?(path) }
            throw Failure("cannot resolve \(host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(result) }
        var lastError = "no address"
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        while let info = candidate {
            candidate = info.pointee.ai_next
            let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue),
                            info.pointee.ai_protocol)
            if fd < 0 { continue }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            // A peer that vanishes without a reset (its node lost) is noticed: keepalive probes
            // after 30 s idle, and unacknowledged data gives up after 60 s.
            var idle: Int32 = 30, interval: Int32 = 10, count: Int32 = 3, userTimeout: Int32 = 60_000
            setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, socklen_t(MemoryLayout<Int32>.size))
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPIDLE, &idle, socklen_t(MemoryLayout<Int32>.size))
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPINTVL, &interval, socklen_t(MemoryLayout<Int32>.size))
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_KEEPCNT, &count, socklen_t(MemoryLayout<Int32>.size))
            setsockopt(fd, Int32(IPPROTO_TCP), 18 /* TCP_USER_TIMEOUT */, &userTimeout, socklen_t(MemoryLayout<Int32>.size))
            if Glibc.connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 { return fd }
            if errno == EINPROGRESS {
                do {
                    try poll(fd: fd, events: Int16(POLLOUT), deadline: deadline, "connecting to \(host):\(port)")
                    var error: Int32 = 0
                    var length = socklen_t(MemoryLayout<Int32>.size)
                    getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
                    if error == 0 { return fd }
                    lastError = String(cString: strerror(error))
                } catch {
                    lastError = "\(error)"
                }
            } else {
                lastError = String(cString: strerror(errno))
            }
            Syscall.close(fd)
        }
        throw Failure("cannot connect to \(host):\(port): \(lastError)")
    }

    private static func handshake(fd: Int32, serverName: String, roots: TrustRoots, deadline: Int64) throws -> OpaquePointer {
        guard let context = SSL_CTX_new(TLS_client_method()) else { throw OpenSSLError("SSL_CTX_new") }
        defer { SSL_CTX_free(context) }
        SSL_CTX_set_cert_store(context, roots.store)
        X509_STORE_up_ref(roots.store)  // SSL_CTX_set_cert_store takes a reference
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
        _ = CShims_SSL_CTX_set_mode(context, Int(SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER))
        guard let ssl = SSL_new(context) else { throw OpenSSLError("SSL_new") }
        var ok = CShims_SSL_set_min_proto_version(ssl, TLS1_3_VERSION) == 1 && SSL_set_fd(ssl, fd) == 1
        let isAddress = SocketAddress.parse(serverName.contains(":") ? "[\(serverName)]:0" : "\(serverName):0") != nil
        if isAddress {
            ok = ok && X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), serverName) == 1
        } else {
            ok = ok && SSL_set1_host(ssl, serverName) == 1 && CShims_SSL_set_tlsext_host_name(ssl, serverName) == 1
        }
        let alpn: [UInt8] = [2, 0x68, 0x32]  // "h2"
        ok = ok && SSL_set_alpn_protos(ssl, alpn, UInt32(alpn.count)) == 0
        guard ok else {
            SSL_free(ssl)
            throw OpenSSLError("TLS client set-up")
        }
        OpenSSLError.clearQueue()
        while true {
            let rc = SSL_connect(ssl)
            if rc == 1 { break }
            let what = "in the TLS handshake with \(serverName)"
            do {
                switch SSL_get_error(ssl, rc) {
                case SSL_ERROR_WANT_READ: try poll(fd: fd, events: Int16(POLLIN), deadline: deadline, what)
                case SSL_ERROR_WANT_WRITE: try poll(fd: fd, events: Int16(POLLOUT), deadline: deadline, what)
                default:
                    let verify = SSL_get_verify_result(ssl)
                    let reason = verify == X509_V_OK ? "" : " (\(String(cString: X509_verify_cert_error_string(verify))))"
                    throw Failure("\(what): \(OpenSSLError("TLS"))\(reason)")
                }
            } catch {
                SSL_free(ssl)
                throw error
            }
        }
        var selected: UnsafePointer<UInt8>?
        var length: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &selected, &length)
        guard length == 2, let selected, selected[0] == 0x68, selected[1] == 0x32 else {
            SSL_free(ssl)
            throw Failure("\(serverName) did not negotiate ALPN h2")
        }
        return ssl
    }
}

extension HTTP2ClientConnection {
    /// Loads the resolver's configuration and libssl's tables while files can still be opened
    /// (before a worker's sandbox), and notes /etc/resolv.conf as it is now.
    ///
    /// glibc re-reads resolv.conf on the next lookup after the file changes; a confined worker
    /// cannot open it (EACCES), and from then on every lookup fails. So a lookup that fails after
    /// the file changed calls `whenChanged` with its path: the workers exit there, and the
    /// Supervisor starts one that reads the new file before its sandbox. Called once, before the
    /// worker's threads start.
    public static func warmUpResolver(whenChanged: @escaping @Sendable (String) -> Never) {
        ResolverFiles.whenChanged = whenChanged
        ResolverFiles.atWarmUp = ResolverFiles.identity(ResolverFiles.path)
        CShims_resolver_warm_up()
        if let probe = SSL_CTX_new(TLS_client_method()) { SSL_CTX_free(probe) }
    }
}

/// What glibc compares to decide that resolv.conf changed: device, inode, size, mtime, ctime.
enum ResolverFiles {
    static let path = "/etc/resolv.conf"
    // Written once by warmUpResolver before the worker's threads start, read-only afterwards.
    nonisolated(unsafe) static var whenChanged: (@Sendable (String) -> Never)?
    nonisolated(unsafe) static var atWarmUp: [Int]?

    static func identity(_ path: String) -> [Int]? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return [Int(info.st_dev), Int(info.st_ino), Int(info.st_size), info.st_mtim.tv_sec, info.st_mtim.tv_nsec,
                info.st_ctim.tv_sec, info.st_ctim.tv_nsec]
    }

    /// The path, when it differs from what warmUpResolver saw (or appeared or went away).
    static func changedSinceWarmUp() -> String? {
        guard whenChanged != nil else { return nil }
        return identity(path) == atWarmUp ? nil : path
    }
}
