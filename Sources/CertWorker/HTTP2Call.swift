internal import CNghttp2
internal import COpenSSL
internal import CShims
import OpenSSLSupport
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// One unary gRPC call over HTTP/2 over TLS, all in OpenSSL and nghttp2 (no second TLS stack):
/// connect with a deadline, TLS 1.3 with the server name verified against the given roots and
/// ALPN h2, one POST stream, then the response headers, body and trailers. The socket is
/// non-blocking and every wait is a poll against one absolute deadline for the whole call, so a
/// peer that drips bytes cannot hold the CA thread past it. One connection per call.
final class HTTP2Call {
    struct CallError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    struct Response {
        var status = 0
        var headers: [(String, String)] = []
        var body: [UInt8] = []
        var closed = false
        var closeError: UInt32 = 0
    }

    private var response = Response()
    private var requestBody: [UInt8] = []
    private var requestOffset = 0
    private var fd: Int32 = -1
    /// Monotonic ms by which the whole call must be done.
    private var deadline: Int64 = 0

    /// POSTs `body` to `path` on host:port. `serverName` is verified (DNS name or IP literal).
    static func post(host: String, port: UInt16, serverName: String, roots: OpaquePointer, path: String,
                     headers: [(String, String)], body: [UInt8], timeoutSeconds: Int) throws -> Response {
        let call = HTTP2Call()
        call.deadline = Clock.monotonicMilliseconds() + Int64(timeoutSeconds) * 1000
        call.fd = try call.connect(host: host, port: port)
        defer { Syscall.close(call.fd) }
        let ssl = try call.handshake(serverName: serverName, roots: roots)
        defer { SSL_free(ssl) }
        call.requestBody = body
        return try call.exchange(ssl: ssl, authority: "\(serverName):\(port)", path: path, headers: headers)
    }

    // MARK: - TCP and TLS

    /// Waits until `fd` is ready for `events` or the call's deadline passes.
    private func wait(for events: Int16, _ what: String) throws {
        let remaining = deadline - Clock.monotonicMilliseconds()
        guard remaining > 0 else { throw CallError("timed out \(what)") }
        var pfd = pollfd(fd: fd, events: events, revents: 0)
        let rc = poll(&pfd, 1, Int32(clamping: remaining))
        if rc == 0 { throw CallError("timed out \(what)") }
    }

    /// After an OpenSSL call on the non-blocking socket returned `rc`: wait for what it needs, or
    /// throw its error.
    private func waitAfter(_ ssl: OpaquePointer, _ rc: Int32, _ what: String) throws {
        switch SSL_get_error(ssl, rc) {
        case SSL_ERROR_WANT_READ: try wait(for: Int16(POLLIN), what)
        case SSL_ERROR_WANT_WRITE: try wait(for: Int16(POLLOUT), what)
        default: throw CallError("\(what): \(OpenSSLError("TLS"))")
        }
    }

    private func connect(host: String, port: UInt16) throws -> Int32 {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &result)
        guard rc == 0, let first = result else { throw CallError("cannot resolve \(host): \(String(cString: gai_strerror(rc)))") }
        defer { freeaddrinfo(result) }
        var lastError = "no address"
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        while let info = candidate {
            candidate = info.pointee.ai_next
            let candidateFd = socket(info.pointee.ai_family,
                                     info.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue),
                                     info.pointee.ai_protocol)
            if candidateFd < 0 { continue }
            var one: Int32 = 1
            setsockopt(candidateFd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            fd = candidateFd
            if Glibc.connect(candidateFd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 { return candidateFd }
            if errno == EINPROGRESS {
                do {
                    try wait(for: Int16(POLLOUT), "connecting to \(host):\(port)")
                    var error: Int32 = 0
                    var length = socklen_t(MemoryLayout<Int32>.size)
                    getsockopt(candidateFd, SOL_SOCKET, SO_ERROR, &error, &length)
                    if error == 0 { return candidateFd }
                    lastError = String(cString: strerror(error))
                } catch {
                    lastError = "\(error)"
                }
            } else {
                lastError = String(cString: strerror(errno))
            }
            Syscall.close(candidateFd)
            fd = -1
        }
        throw CallError("cannot connect to \(host):\(port): \(lastError)")
    }

    private func handshake(serverName: String, roots: OpaquePointer) throws -> OpaquePointer {
        guard let context = SSL_CTX_new(TLS_client_method()) else { throw OpenSSLError("SSL_CTX_new") }
        defer { SSL_CTX_free(context) }
        SSL_CTX_set_cert_store(context, roots)
        X509_STORE_up_ref(roots)  // SSL_CTX_set_cert_store takes a reference
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
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
            do { try waitAfter(ssl, rc, "in the TLS handshake with \(serverName)") } catch {
                SSL_free(ssl)
                throw error
            }
        }
        var selected: UnsafePointer<UInt8>?
        var length: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &selected, &length)
        guard length == 2, let selected, selected[0] == 0x68, selected[1] == 0x32 else {
            SSL_free(ssl)
            throw CallError("\(serverName) did not negotiate ALPN h2")
        }
        return ssl
    }

    // MARK: - HTTP/2 with nghttp2

    private func exchange(ssl: OpaquePointer, authority: String, path: String, headers: [(String, String)]) throws -> Response {
        var callbacks: OpaquePointer?
        guard nghttp2_session_callbacks_new(&callbacks) == 0, let callbacks else { throw CallError("nghttp2 callbacks") }
        defer { nghttp2_session_callbacks_del(callbacks) }
        nghttp2_session_callbacks_set_on_header_callback(callbacks) { _, frame, name, nameLength, value, valueLength, _, user in
            guard let user, let name, let value else { return 0 }
            let call = Unmanaged<HTTP2Call>.fromOpaque(user).takeUnretainedValue()
            let key = String(decoding: UnsafeBufferPointer(start: name, count: nameLength), as: UTF8.self)
            let text = String(decoding: UnsafeBufferPointer(start: value, count: valueLength), as: UTF8.self)
            if key == ":status" { call.response.status = Int(text) ?? 0 } else { call.response.headers.append((key, text)) }
            return 0
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks) { _, _, _, data, length, user in
            guard let user, let data else { return 0 }
            let call = Unmanaged<HTTP2Call>.fromOpaque(user).takeUnretainedValue()
            // A CA response is a few KiB; refuse a peer that streams without end.
            guard call.response.body.count + length <= 1 << 20 else { return Int32(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
            call.response.body += UnsafeBufferPointer(start: data, count: length)
            return 0
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks) { _, _, errorCode, user in
            guard let user else { return 0 }
            let call = Unmanaged<HTTP2Call>.fromOpaque(user).takeUnretainedValue()
            call.response.closed = true
            call.response.closeError = errorCode
            return 0
        }
        var session: OpaquePointer?
        let user = Unmanaged.passUnretained(self).toOpaque()
        guard nghttp2_session_client_new(&session, callbacks, user) == 0, let session else { throw CallError("nghttp2 session") }
        defer { nghttp2_session_del(session) }
        guard nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nil, 0) == 0 else { throw CallError("nghttp2 settings") }
        try submit(session: session, authority: authority, path: path, headers: headers)
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        while !response.closed {
            try flush(session: session, ssl: ssl)
            let read = SSL_read(ssl, &buffer, Int32(buffer.count))
            if read <= 0 {
                if SSL_get_error(ssl, read) == SSL_ERROR_ZERO_RETURN { throw CallError("connection ended before the response") }
                try waitAfter(ssl, read, "waiting for the CA's response")
                continue
            }
            guard nghttp2_session_mem_recv(session, buffer, Int(read)) >= 0 else { throw CallError("malformed HTTP/2 from the CA") }
        }
        return response
    }

    private func submit(session: OpaquePointer, authority: String, path: String, headers: [(String, String)]) throws {
        let all = [(":method", "POST"), (":scheme", "https"), (":authority", authority), (":path", path)] + headers
        // nghttp2 copies names and values during submit; the C strings only live for this call.
        let names = all.map { strdup($0.0) }
        let values = all.map { strdup($0.1) }
        defer { (names + values).forEach { free($0) } }
        var nva = (0..<all.count).map { index in
            nghttp2_nv(name: UnsafeMutableRawPointer(names[index]!).assumingMemoryBound(to: UInt8.self),  // strdup of short literals
                       value: UnsafeMutableRawPointer(values[index]!).assumingMemoryBound(to: UInt8.self),
                       namelen: all[index].0.utf8.count, valuelen: all[index].1.utf8.count, flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue))
        }
        var provider = nghttp2_data_provider()
        provider.read_callback = { _, _, buffer, length, flags, _, user in
            guard let user, let buffer, let flags else { return Int(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue) }
            let call = Unmanaged<HTTP2Call>.fromOpaque(user).takeUnretainedValue()
            let count = min(length, call.requestBody.count - call.requestOffset)
            call.requestBody.withUnsafeBytes { raw in
                if count > 0, let base = raw.baseAddress { buffer.update(from: base.assumingMemoryBound(to: UInt8.self) + call.requestOffset, count: count) }
            }
            call.requestOffset += count
            if call.requestOffset == call.requestBody.count { flags.pointee |= UInt32(NGHTTP2_DATA_FLAG_EOF.rawValue) }
            return count
        }
        guard nghttp2_submit_request(session, nil, &nva, nva.count, &provider, nil) > 0 else { throw CallError("nghttp2 request") }
    }

    /// Writes everything nghttp2 has queued to the TLS connection.
    private func flush(session: OpaquePointer, ssl: OpaquePointer) throws {
        while true {
            var data: UnsafePointer<UInt8>?
            let length = nghttp2_session_mem_send(session, &data)
            guard length >= 0 else { throw CallError("nghttp2 send") }
            guard length > 0, let data else { return }
            // nghttp2 hands out its buffer once: write all of it, waiting as needed.
            while true {
                let written = SSL_write(ssl, data, Int32(length))
                if written == Int32(length) { break }
                try waitAfter(ssl, written, "writing to the CA")
            }
        }
    }
}
