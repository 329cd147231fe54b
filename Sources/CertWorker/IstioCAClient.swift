internal import COpenSSL
import OpenSSLSupport
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// The Istio CA backend (ISTIO_COMPAT §4.2-4.3): `CreateCertificate` over gRPC/HTTP/2/TLS to
/// CA_ADDRESS, trusting CA_ROOT_CA, with the bearer token re-read from its file on every call,
/// the cluster id header, and `ImpersonatedIdentity` metadata for every identity other than
/// ztunnel's own.
final class IstioCAClient: CertificateAuthority {
    let name = "istiod"
    let host: String
    let port: UInt16
    private let roots: OpaquePointer
    private let token: TokenSource
    private let clusterId: String
    private let ownIdentity: String?
    static let path = "/istio.v1.auth.IstioCertificateService/CreateCertificate"

    enum TokenSource {
        case none
        case file(String)
        case literal(String)
    }

    struct CAError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    /// Reads CA_ROOT_CA (file, inline PEM or SYSTEM) before the sandbox.
    init(configuration: Configuration) throws {
        var address = configuration.string("CA_ADDRESS")
        for scheme in ["https://", "http://"] where address.hasPrefix(scheme) { address = String(address.dropFirst(scheme.count)) }
        guard let colon = address.lastIndex(of: ":"), let port = UInt16(address[address.index(after: colon)...]) else {
            throw CAError("invalid CA_ADDRESS \"\(configuration.string("CA_ADDRESS"))\": expected [https://]host:port")
        }
        host = String(address[..<colon]).trimmingCharacters(in: "[]")
        self.port = port
        guard let store = X509_STORE_new() else { throw OpenSSLError("X509_STORE_new") }
        roots = store
        let rootSetting = configuration.string("CA_ROOT_CA")
        if rootSetting == "SYSTEM" {
            guard X509_STORE_set_default_paths(store) == 1 else { throw OpenSSLError("system trust store") }
        } else {
            let pem: String
            if rootSetting.contains("-----BEGIN") {
                pem = rootSetting
            } else {
                do { pem = String(decoding: try Syscall.readFile(rootSetting, limit: 256 * 1024), as: UTF8.self) } catch {
                    throw CAError("invalid CA_ROOT_CA (\(rootSetting)): \(error)")
                }
            }
            for certificate in try Certificate.parseChain(pem: pem) {
                try certificate.withUnsafeX509 { guard X509_STORE_add_cert(store, $0) == 1 else { throw OpenSSLError("CA root") } }
            }
        }
        let tokenSetting = configuration.string("AUTH_TOKEN")
        if access(tokenSetting, F_OK) == 0 {
            token = .file(tokenSetting)
        } else if tokenSetting != Configuration.defaultTokenPath && !tokenSetting.isEmpty {
            token = .literal(tokenSetting)  // a path that does not exist is a static token
        } else {
            token = .none
        }
        clusterId = configuration.string("ISTIO_META_CLUSTER_ID")
        let namespace = configuration.string("POD_NAMESPACE")
        let account = configuration.string("SERVICE_ACCOUNT")
        ownIdentity = namespace.isEmpty || account.isEmpty
            ? nil : "spiffe://\(configuration.string("TRUST_DOMAIN"))/ns/\(namespace)/sa/\(account)"
    }

    deinit { X509_STORE_free(roots) }

    func issue(csrPEM: String, identity: SpiffeId, ttlSeconds: Int) throws -> IssuedCertificate {
        var headers = [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "10S")]
        switch token {
        case .none: break
        case .literal(let value): headers += [("authorization", "Bearer \(value)"), ("clusterid", clusterId)]
        case .file(let path):
            // Re-read on every call: the projected token rotates under us.
            let bytes: [UInt8]
            do { bytes = try Syscall.readFile(path, limit: 64 * 1024) } catch { throw CAError("cannot read the token \(path): \(error)") }
            guard !bytes.isEmpty else { throw CAError("the token file \(path) is empty") }
            headers += [("authorization", "Bearer \(String(decoding: bytes, as: UTF8.self))"), ("clusterid", clusterId)]
        }
        let impersonated = identity.description == ownIdentity ? nil : identity.description
        let message = CAProtobuf.encodeRequest(csrPEM: csrPEM, validitySeconds: Int64(ttlSeconds), impersonatedIdentity: impersonated)
        var body: [UInt8] = [0] + withUnsafeBytes(of: UInt32(message.count).bigEndian, Array.init)
        body += message
        let response = try HTTP2Call.post(host: host, port: port, serverName: host, roots: roots, path: Self.path,
                                          headers: headers, body: body, timeoutSeconds: 10)
        return try Self.result(of: response)
    }

    /// The certificate chain from a gRPC response, or the CA's error.
    static func result(of response: HTTP2Call.Response) throws -> IssuedCertificate {
        guard response.status == 200 else { throw CAError("CA answered HTTP \(response.status)") }
        let grpcStatus = response.headers.last { $0.0 == "grpc-status" }?.1 ?? "missing"
        guard grpcStatus == "0" else {
            let message = response.headers.last { $0.0 == "grpc-message" }?.1 ?? ""
            throw CAError("CA returned gRPC status \(grpcStatus) \(message)")
        }
        let body = response.body
        guard body.count >= 5, body[0] == 0 else { throw CAError("malformed gRPC response body") }
        let length = Int(body[1]) << 24 | Int(body[2]) << 16 | Int(body[3]) << 8 | Int(body[4])
        guard length == body.count - 5 else { throw CAError("gRPC message length \(length) for \(body.count - 5) bytes") }
        let chain = try CAProtobuf.decodeResponse(Array(body[5...]))
        // The last element is the root bundle; a chain without it is an error (ISTIO_COMPAT §4.3).
        guard chain.count >= 2, let roots = chain.last else { throw CAError("no root certificate present") }
        return IssuedCertificate(chainPEM: Array(chain.dropLast()), rootsPEM: roots)
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: String) -> String {
        String(drop { set.contains($0) }.reversed().drop { set.contains($0) }.reversed())
    }
}
