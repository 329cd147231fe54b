internal import COpenSSL
import HTTP2Client
import OpenSSLSupport
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// The Istio CA backend (ISTIO_COMPAT §4.2-4.3): `CreateCertificate` over gRPC/HTTP/2/TLS to
/// CA_ADDRESS, trusting CA_ROOT_CA, with the bearer token the Supervisor hands over (it reads
/// AUTH_TOKEN; this process opens no file once confined), the cluster id header, and `ImpersonatedIdentity` metadata for every identity other than
/// ztunnel's own.
final class IstioCAClient: CertificateAuthority {
    let name = "istiod"
    let host: String
    let port: UInt16
    /// The name the CA's certificate must carry: ALT_CA_HOSTNAME, else the host dialled.
    let serverName: String
    private let roots: TrustRoots
    /// The bearer token, as the Supervisor last sent it (nil: none configured). Set on the
    /// CertWorker's loop, read on the CA thread.
    private var token: String?
    private let tokenLock = Mutex()
    private let clusterId: String
    /// CA_HEADER_<K>: gRPC metadata on every call, names lowercased.
    private let extraHeaders: [(String, String)]
    private let ownIdentity: String?
    static let path = "/istio.v1.auth.IstioCertificateService/CreateCertificate"

    struct CAError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    /// Reads CA_ROOT_CA (file, inline PEM or SYSTEM) before the sandbox.
    init(configuration: Configuration) throws {
        guard let (host, port) = CAAddress.parse(configuration.string("CA_ADDRESS")) else {
            throw CAError("invalid CA_ADDRESS \"\(configuration.string("CA_ADDRESS"))\": expected [https://]host:port")
        }
        self.host = host
        self.port = port
        let alternative = configuration.string("ALT_CA_HOSTNAME")
        serverName = alternative.isEmpty ? host : alternative
        roots = try TrustRoots(setting: "CA_ROOT_CA", value: configuration.string("CA_ROOT_CA"))
        clusterId = configuration.string("ISTIO_META_CLUSTER_ID")
        extraHeaders = configuration.headers("CA_HEADER_")
        let namespace = configuration.string("POD_NAMESPACE")
        let account = configuration.string("SERVICE_ACCOUNT")
        ownIdentity = namespace.isEmpty || account.isEmpty
            ? nil : "spiffe://\(configuration.string("TRUST_DOMAIN"))/ns/\(namespace)/sa/\(account)"
    }

    /// A new token from the Supervisor (already trimmed and checked to be a header value).
    func setToken(_ value: String) { tokenLock.withLock { token = value } }

    func issue(csrPEM: String, identity: SpiffeId, ttlSeconds: Int) throws -> IssuedCertificate {
        var headers = [("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "10S")]
        if let token = tokenLock.withLock({ token }) {
            headers += [("authorization", "Bearer \(token)"), ("clusterid", clusterId)]
        }
        headers += extraHeaders
        let impersonated = identity.description == ownIdentity ? nil : identity.description
        let message = CAProtobuf.encodeRequest(csrPEM: csrPEM, validitySeconds: Int64(ttlSeconds), impersonatedIdentity: impersonated)
        var body: [UInt8] = [0] + withUnsafeBytes(of: UInt32(message.count).bigEndian, Array.init)
        body += message
        let response = try HTTP2Call.post(host: host, port: port, serverName: serverName, roots: roots, path: Self.path,
                                          headers: headers, body: body, timeoutSeconds: 10)
        return try Self.result(of: response)
    }

    /// The certificate chain from a gRPC response, or the CA's error.
    static func result(of response: HTTP2Call.Response) throws -> IssuedCertificate {
        do {
            let (chain, roots) = try CAResponse.chain(status: response.status, headers: response.headers, body: response.body)
            return IssuedCertificate(chainPEM: chain, rootsPEM: roots)
        } catch let refusal as CAResponse.Refusal {
            throw CAError(refusal.description)
        }
    }
}
