internal import CKeyHandle
internal import COpenSSL
internal import CShims
import IPC
import OpenSSLSupport
import Shared

/// An SSL_CTX for one identity on one side of HBONE (ISTIO_COMPAT §5.1): TLS 1.3 only, AES-GCM
/// suites, X25519 and P-256, ALPN h2, the peer's certificate required and verified against the
/// identity's roots, no session reuse, no SNI. Its private key is a key handle: every signature
/// is a round trip to the CertWorker through the CKeyHandle provider. The server side (15008)
/// requires a client certificate and selects h2; the client side (the outbound pool) offers h2
/// and presents the source workload's certificate. Which SPIFFE ids are acceptable is checked
/// by `TLSHandler` after the handshake.
final class TLSContext: @unchecked Sendable {
    enum Side: Sendable { case server, client }

    let context: OpaquePointer
    let spiffeId: SpiffeId
    let side: Side

    init(material: IdentityMaterial, side: Side) throws {
        guard let spiffeId = SpiffeId(material.spiffeId) else { throw OpenSSLError("identity \(material.spiffeId) is not SPIFFE") }
        self.spiffeId = spiffeId
        self.side = side
        guard let context = SSL_CTX_new(side == .server ? TLS_server_method() : TLS_client_method()) else {
            throw OpenSSLError("SSL_CTX_new")
        }
        self.context = context
        try configure(material)
    }

    deinit { SSL_CTX_free(context) }

    private func configure(_ material: IdentityMaterial) throws {
        guard CShims_SSL_CTX_set_min_proto_version(context, TLS1_3_VERSION) == 1,
              SSL_CTX_set_ciphersuites(context, "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256") == 1,
              CShims_SSL_CTX_set1_groups_list(context, "X25519:P-256") == 1 else {
            throw OpenSSLError("TLS parameters")
        }
        let chain = try Certificate.parseChain(pem: material.certificateChainPEM)
        let roots = try Certificate.parseChain(pem: material.rootsPEM)
        try chain[0].withUnsafeX509 { leaf in
            guard SSL_CTX_use_certificate(context, leaf) == 1 else { throw OpenSSLError("SSL_CTX_use_certificate") }
            guard let key = material.handle.withUnsafeBufferPointer({ CKeyHandle_make_key(leaf, $0.baseAddress) }) else {
                throw OpenSSLError("CKeyHandle_make_key")
            }
            defer { EVP_PKEY_free(key) }
            guard SSL_CTX_use_PrivateKey(context, key) == 1, SSL_CTX_check_private_key(context) == 1 else {
                throw OpenSSLError("key handle for \(material.spiffeId)")
            }
        }
        for intermediate in chain.dropFirst() {
            try intermediate.withUnsafeX509 { x509 in
                X509_up_ref(x509)  // add_extra_chain_cert takes the reference
                guard CShims_SSL_CTX_add_extra_chain_cert(context, x509) == 1 else {
                    X509_free(x509)
                    throw OpenSSLError("SSL_CTX_add_extra_chain_cert")
                }
            }
        }
        guard let store = SSL_CTX_get_cert_store(context) else { throw OpenSSLError("SSL_CTX_get_cert_store") }
        for root in roots {
            try root.withUnsafeX509 { guard X509_STORE_add_cert(store, $0) == 1 else { throw OpenSSLError("X509_STORE_add_cert") } }
        }
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nil)
        switch side {
        case .server:
            CShims_SSL_CTX_require_alpn_h2(context)
        case .client:
            let h2: [UInt8] = [2, 0x68, 0x32]  // "h2", length-prefixed
            guard SSL_CTX_set_alpn_protos(context, h2, UInt32(h2.count)) == 0 else { throw OpenSSLError("SSL_CTX_set_alpn_protos") }
        }
        // Handshakes run in ASYNC_JOBs so a signature round trip does not block the event loop.
        _ = CShims_SSL_CTX_set_mode(context, Int(SSL_MODE_ASYNC))
        guard CShims_SSL_CTX_disable_session_reuse(context) == 1 else { throw OpenSSLError("disabling session resumption") }
    }

    // MARK: - The provider's sign callback

    nonisolated(unsafe) private static var installedSigner: SignerClient?
    private static let installLock = Mutex()

    /// Initialises OpenSSL and installs the key-handle provider, with the signer channel as its
    /// oracle. Runs once, before the sandbox: OpenSSL's one-time set-up (configuration file,
    /// providers, DRBG seeding) makes syscalls a serving NetWorker never needs again.
    static func installProvider(_ signer: SignerClient) throws {
        try installLock.withLock {
            if installedSigner != nil { return }
            installedSigner = signer
            let arg = Unmanaged.passRetained(signer).toOpaque()
            let installed = CKeyHandle_install({ arg, handle, content, contentLength, signature, signatureLength, capacity in
                guard let arg, let handle, let content, let signature, let signatureLength else { return 0 }
                // Only a TLS 1.3 CertificateVerify input is ever sent; the CertWorker checks the
                // same shape and closes the channel of a NetWorker that sends anything else.
                guard contentLength <= CertificateVerifyContent.maxLength else { return 0 }
                let signer = Unmanaged<SignerClient>.fromOpaque(arg).takeUnretainedValue()
                let handleBytes = Array(UnsafeBufferPointer(start: handle, count: Int(CKEYHANDLE_ID_LEN)))
                let contentBytes = Array(UnsafeBufferPointer(start: content, count: contentLength))
                guard CertificateVerifyContent.side(of: contentBytes) != nil else { return 0 }
                // Inside an ASYNC_JOB the event loop does the round trip; elsewhere, block.
                let answer = AsyncSignSlot.signInsideJob(handle: handleBytes, content: contentBytes)
                    ?? signer.sign(handle: handleBytes, content: contentBytes)
                guard let answer, !answer.isEmpty, answer.count <= capacity else { return 0 }
                answer.withUnsafeBufferPointer { buffer in
                    if let base = buffer.baseAddress { signature.update(from: base, count: answer.count) }
                }
                signatureLength.pointee = answer.count
                return 1
            }, arg)
            if installed != 1 { throw OpenSSLError("installing the key-handle provider") }
            // Peer certificates decode through the built-in EC method, not 3.0's decoders: a
            // quarter of a server handshake's CPU. Required: the key-handle keymgmt's type name
            // is ZTKH-EC so that it stays out of that engine's way, and a certificate key made by
            // the default EC keymgmt would not compare equal to a handle key of that type.
            if CKeyHandle_decode_ec_public_keys_directly() != 1 {
                throw OpenSSLError("registering the EC public-key engine")
            }
            // Build and free one context so every lazy initialisation happens now.
            guard let probe = SSL_CTX_new(TLS_server_method()) else { throw OpenSSLError("SSL_CTX_new") }
            SSL_CTX_free(probe)
        }
    }
}
