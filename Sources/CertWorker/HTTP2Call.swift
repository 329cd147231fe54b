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
/// ALPN h2, one POST stream, then the response headers, body and trailers. Blocking, bounded by
/// socket timeouts; one connection per call.
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

    /// POSTs `body` to `path` on host:port. `serverName` is verified (DNS name or IP literal).
    static func post(host: String, port: UInt16, serverName: String, roots: OpaquePointer, path: String,
                     headers: [(String, String)], body: [UInt8], timeoutSeconds: Int) throws -> Response {
        let fd = try connect(host: host, port: port, timeoutSeconds: timeoutSeconds)
        defer { Syscall.close(fd) }
        let ssl = try handshake(fd: fd, serverName: serverName, roots: roots)
        defer { SSL_free(ssl) }
        let call = HTTP2Call()
        call.requestBody = body
        return try call.exchange(ssl: ssl, authority: "\(serverName):\(port)", path: path, headers: headers)
    }

    // MARK: - TCP and TLS

    private static func connect(host: String, port: UInt16, timeoutSeconds: Int) throws -> Int32 {
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
            let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), info.pointee.ai_protocol)
            if fd < 0 { continue }
            // On Linux SO_SNDTIMEO bounds connect(2) too.
            var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            if Glibc.connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 { return fd }
            lastError = String(cString: strerror(errno))
            Syscall.close(fd)
        }
        throw CallError("cannot connect to \(host):\(port): \(lastError)")
    }

    private static func handshake(fd: Int32, serverName: String, roots: OpaquePointer) throws -> OpaquePointer {
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
        guard SSL_connect(ssl) == 1 else {
            let error = OpenSSLError("TLS handshake with \(serverName)")
            SSL_free(ssl)
            throw error
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
            guard read > 0 else { throw CallError("connection ended before the response: \(OpenSSLError("SSL_read"))") }
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
            guard SSL_write(ssl, data, Int32(length)) == Int32(length) else { throw CallError("TLS write: \(OpenSSLError("SSL_write"))") }
        }
    }
}
