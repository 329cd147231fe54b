internal import COpenSSL
internal import CShims
import OpenSSLSupport
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// The local mode's CA, inside the CertWorker: a self-signed P-256 root made at start, or a
/// plugged-in CA directory in Istio's `cacerts` layout (ca-cert.pem, ca-key.pem, root-cert.pem,
/// cert-chain.pem). Its key, like every key, never leaves this process.
///
/// It signs only what it checked: the CSR's signature, and that the CSR asks for exactly the
/// identity being issued. The certificate it writes carries that identity as its only SAN
/// (critical), digitalSignature, and both serverAuth and clientAuth, like istiod's.
final class BuiltinCA: CertificateAuthority {
    let name = "builtin"
    private let caCertificate: Certificate
    private let caKey: PrivateKey
    /// Intermediates between the CA certificate and the root, PEM, appended to each chain.
    private let intermediatesPEM: [String]
    let rootsPEM: String
    /// The only trust domain a self-signed root issues for; nil for a plugged-in CA, whose
    /// certificate says nothing machine-checkable about it.
    private let trustDomain: String?
    /// The wall clock in seconds; tests move it.
    var now: () -> Int = { Int(Clock.epochSeconds()) }

    struct CAError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    /// A new self-signed root for `trustDomain`, valid ten years.
    init(selfSignedFor trustDomain: String) throws {
        caKey = try KeyAndCSR.generateKey()
        guard let x509 = X509_new() else { throw OpenSSLError("X509_new") }
        let certificate = Certificate(adopting: x509)
        guard let name = X509_NAME_new() else { throw OpenSSLError("X509_NAME_new") }
        defer { X509_NAME_free(name) }
        guard X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, trustDomain, -1, -1, 0) == 1 else {
            throw OpenSSLError("CA name")
        }
        try Self.fill(x509, subject: name, issuer: name, publicKey: caKey.pkey, lifetimeSeconds: 10 * 365 * 86_400,
                      backdateSeconds: 60, at: Int(Clock.epochSeconds()))
        try Self.addExtension(x509, issuer: x509, NID_basic_constraints, "critical,CA:TRUE")
        try Self.addExtension(x509, issuer: x509, NID_key_usage, "critical,keyCertSign,cRLSign")
        try Self.addExtension(x509, issuer: x509, NID_subject_key_identifier, "hash")
        guard X509_sign(x509, caKey.pkey, EVP_sha256()) > 0 else { throw OpenSSLError("X509_sign (root)") }
        caCertificate = certificate
        intermediatesPEM = []
        rootsPEM = try certificate.pem()
        self.trustDomain = trustDomain
    }

    /// The NetWorker names the identities it needs; a compromised one must not obtain a
    /// certificate for another trust domain from our self-signed root.
    func refusal(for identity: SpiffeId) -> String? {
        guard let trustDomain, identity.trustDomain != trustDomain else { return nil }
        return "trust domain \(identity.trustDomain) is not this CA's (\(trustDomain))"
    }

    /// A plugged-in CA (Istio `cacerts` layout), read before the sandbox.
    init(directory: String) throws {
        func text(_ file: String) throws -> String {
            do { return String(decoding: try Syscall.readFile(directory + "/" + file, limit: 64 * 1024), as: UTF8.self) } catch {
                throw CAError("invalid ZTUNNEL_CA_DIR: \(directory)/\(file): \(error)")
            }
        }
        let certificate = try Certificate.parseChain(pem: try text("ca-cert.pem"))[0]
        let key = try StaticIdentityLoader.privateKey(directory + "/ca-key.pem")
        guard certificate.withUnsafeX509({ X509_check_private_key($0, key.pkey) }) == 1 else {
            throw CAError("invalid ZTUNNEL_CA_DIR: ca-key.pem does not match ca-cert.pem")
        }
        let roots = try text("root-cert.pem")
        _ = try Certificate.parseChain(pem: roots)
        // cert-chain.pem is the CA certificate followed by its intermediates up to the root.
        let chain = try Certificate.parseChain(pem: try text("cert-chain.pem"))
        let caPEM = try certificate.pem()
        caCertificate = certificate
        caKey = key
        rootsPEM = roots
        trustDomain = nil
        intermediatesPEM = try chain.map { try $0.pem() }.filter { !roots.contains($0) && $0 != caPEM }
    }

    func issue(csrPEM: String, identity: SpiffeId, ttlSeconds: Int) throws -> IssuedCertificate {
        let request = try Self.parseCSR(csrPEM)
        defer { X509_REQ_free(request) }
        guard let publicKey = X509_REQ_get0_pubkey(request), X509_REQ_verify(request, publicKey) == 1 else {
            throw CAError("the CSR's signature does not verify")
        }
        let requested = try Self.requestedURIs(request)
        guard requested == [identity.description] else {
            throw CAError("the CSR asks for \(requested), not \(identity)")
        }
        guard let x509 = X509_new() else { throw OpenSSLError("X509_new") }
        let leaf = Certificate(adopting: x509)
        guard let empty = X509_NAME_new() else { throw OpenSSLError("X509_NAME_new") }
        defer { X509_NAME_free(empty) }
        let caNotAfter = caCertificate.validity.notAfter
        let issuedAt = now()
        let lifetime = max(1, min(ttlSeconds, caNotAfter - issuedAt))
        try caCertificate.withUnsafeX509 { ca in
            // Backdated a little for clock skew between nodes, but never by a large part of a short
            // lifetime: renewal is due at half the lifetime counted from notBefore.
            try Self.fill(x509, subject: empty, issuer: X509_get_subject_name(ca), publicKey: publicKey,
                          lifetimeSeconds: lifetime, backdateSeconds: min(60, lifetime / 10), at: issuedAt)
            try Self.addExtension(x509, issuer: ca, NID_subject_alt_name, "critical,URI:\(identity)")
            try Self.addExtension(x509, issuer: ca, NID_key_usage, "critical,digitalSignature,keyEncipherment")
            try Self.addExtension(x509, issuer: ca, NID_ext_key_usage, "serverAuth,clientAuth")
            try Self.addExtension(x509, issuer: ca, NID_basic_constraints, "critical,CA:FALSE")
            // OpenSSL cannot name the issuer's key when a plugged-in CA certificate has no SKI.
            if X509_get0_subject_key_id(ca) != nil {
                try Self.addExtension(x509, issuer: ca, NID_authority_key_identifier, "keyid")
            }
        }
        guard X509_sign(x509, caKey.pkey, EVP_sha256()) > 0 else { throw OpenSSLError("X509_sign") }
        let caPEM = try caCertificate.pem()
        let chain = [try leaf.pem()] + (rootsPEM.contains(caPEM) ? [] : [caPEM]) + intermediatesPEM
        return IssuedCertificate(chainPEM: chain, rootsPEM: rootsPEM)
    }

    // MARK: - OpenSSL plumbing

    private static func fill(_ x509: OpaquePointer, subject: OpaquePointer?, issuer: OpaquePointer?,
                             publicKey: OpaquePointer, lifetimeSeconds: Int, backdateSeconds: Int, at issuedAt: Int) throws {
        var base = time_t(issuedAt)
        guard X509_set_version(x509, 2) == 1 else { throw OpenSSLError("X509_set_version") }
        // A random 127-bit serial, positive.
        guard let serial = BN_new() else { throw OpenSSLError("BN_new") }
        defer { BN_free(serial) }
        guard BN_rand(serial, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) == 1,
              let integer = BN_to_ASN1_INTEGER(serial, nil) else { throw OpenSSLError("serial") }
        defer { ASN1_INTEGER_free(integer) }
        guard X509_set_serialNumber(x509, integer) == 1,
              X509_set_subject_name(x509, subject) == 1, X509_set_issuer_name(x509, issuer) == 1,
              X509_time_adj_ex(X509_getm_notBefore(x509), 0, -backdateSeconds, &base) != nil,
              X509_time_adj_ex(X509_getm_notAfter(x509), 0, lifetimeSeconds, &base) != nil,
              X509_set_pubkey(x509, publicKey) == 1 else {
            throw OpenSSLError("certificate fields")
        }
    }

    private static func addExtension(_ x509: OpaquePointer, issuer: OpaquePointer, _ nid: Int32, _ value: String) throws {
        var context = v3_ext_ctx()
        X509V3_set_ctx(&context, issuer, x509, nil, nil, 0)
        guard let ext = X509V3_EXT_nconf_nid(nil, &context, nid, value) else { throw OpenSSLError("extension \(value)") }
        defer { X509_EXTENSION_free(ext) }
        guard X509_add_ext(x509, ext, -1) == 1 else { throw OpenSSLError("X509_add_ext") }
    }

    private static func parseCSR(_ pem: String) throws -> OpaquePointer {
        var bytes = Array(pem.utf8)
        guard let bio = bytes.withUnsafeMutableBytes({ BIO_new_mem_buf($0.baseAddress, Int32($0.count)) }) else {
            throw OpenSSLError("BIO_new_mem_buf")
        }
        defer { BIO_free(bio) }
        guard let request = PEM_read_bio_X509_REQ(bio, nil, nil, nil) else { throw OpenSSLError("parsing the CSR") }
        return request
    }

    /// The URIs of the CSR's requested subjectAltName.
    private static func requestedURIs(_ request: OpaquePointer) throws -> [String] {
        guard let extensions = CShims_X509_REQ_get_extensions(request) else { return [] }
        defer { CShims_sk_X509_EXTENSION_pop_free(extensions) }
        var uris: [String] = []
        for index in 0..<CShims_sk_X509_EXTENSION_num(extensions) {
            guard let ext = CShims_sk_X509_EXTENSION_value(extensions, index),
                  OBJ_obj2nid(X509_EXTENSION_get_object(ext)) == NID_subject_alt_name else { continue }
            uris += Certificate.uris(inSubjectAltName: ext)
        }
        return uris
    }
}
