import OpenSSLSupport

/// What a CA backend returns for a CSR (ISTIO_COMPAT §4.3): the chain, leaf first, and the root
/// bundle that becomes the data-plane trust anchors.
struct IssuedCertificate {
    var chainPEM: [String]
    var rootsPEM: String
}

/// A CA the CertWorker can send CSRs to: the built-in CA, or (not yet) istiod. The seam the
/// certificate manager is tested through.
protocol CertificateAuthority: AnyObject {
    /// A short name for audit events ("builtin", "istiod").
    var name: String { get }
    /// Signs `csrPEM` for `identity` with a lifetime of `ttlSeconds`. Throws with the reason.
    func issue(csrPEM: String, identity: SpiffeId, ttlSeconds: Int) throws -> IssuedCertificate
    /// Why this CA will not issue for `identity` at all, before any key is made; nil if it may.
    func refusal(for identity: SpiffeId) -> String?
}

extension CertificateAuthority {
    /// istiod decides itself (its node authorization bounds impersonation).
    func refusal(for identity: SpiffeId) -> String? { nil }
}
