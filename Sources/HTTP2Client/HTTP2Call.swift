import Shared

/// One unary gRPC call (the CA's `CreateCertificate`) on a connection of its own: one POST
/// stream, then the response headers, body and trailers. Every wait is a poll against one absolute
/// deadline for the whole call, so a peer that drips bytes cannot hold the caller past it.
public enum HTTP2Call {
    public struct Response {
        public var status = 0
        /// Response headers, then trailers.
        public var headers: [(String, String)] = []
        public var body: [UInt8] = []
        public var closed = false
        public var closeError: UInt32 = 0

        public init() {}
    }

    /// POSTs `body` to `path` on host:port. `serverName` is verified (DNS name or IP literal). The
    /// response body may be at most `maxBody` bytes.
    public static func post(host: String, port: UInt16, serverName: String, roots: TrustRoots, path: String,
                            headers: [(String, String)], body: [UInt8], timeoutSeconds: Int, maxBody: Int = 1 << 20) throws -> Response {
        let deadline = Clock.monotonicMilliseconds() + Int64(timeoutSeconds) * 1000
        let connection = try HTTP2ClientConnection.connect(host: host, port: port, serverName: serverName, roots: roots,
                                                           deadline: deadline, maxReceivedPerStream: maxBody)
        defer { connection.close() }
        let stream = try connection.request(authority: "\(serverName):\(port)", path: path, headers: headers, body: body, endStream: true)
        var response = Response()
        while !response.closed {
            try connection.flush()
            try connection.wait(until: deadline, "waiting for the response of \(host):\(port)")
            let events: [HTTP2ClientConnection.Event]
            do { events = try connection.readAvailable() } catch let failure as HTTP2ClientConnection.Failure {
                throw HTTP2ClientConnection.Failure("\(failure) before the response")
            }
            for event in events {
                switch event {
                case .headers(stream, let headers):
                    for header in headers {
                        if header.name == ":status" { response.status = Int(header.value) ?? 0 } else { response.headers.append((header.name, header.value)) }
                    }
                case .data(stream, let bytes): response.body += bytes
                case .closed(stream, let errorCode):
                    response.closed = true
                    response.closeError = errorCode
                default: break
                }
            }
        }
        return response
    }
}
