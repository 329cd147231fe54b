internal import COpenSSL
internal import CShims
import OpenSSLSupport
import Shared

/// Fresh keys and CSRs exactly as the Istio CA expects them (ISTIO_COMPAT §4.1): ECDSA P-256, a
/// new key for every CSR, an empty subject, one extension request with a critical URI SAN that
/// is the SPIFFE id, signed with ECDSA-SHA256.
enum KeyAndCSR {
    /// A new P-256 key; its secret is allocated in OpenSSL's secure heap.
    /// The curve by its short name, `prime256v1`, which the default provider and libcrypto's
    /// built-in EC method both know: where an ENGINE serves EC (the NetWorker's
    /// `CKeyHandle_decode_ec_public_keys_directly`, or a test process that installed it), the
    /// context is the built-in method's, which does not know the NIST name `P-256`.
    static func generateKey() throws -> PrivateKey {
        guard let context = EVP_PKEY_CTX_new_from_name(nil, "EC", nil) else { throw OpenSSLError("EVP_PKEY_CTX_new_from_name") }
        defer { EVP_PKEY_CTX_free(context) }
        guard EVP_PKEY_keygen_init(context) == 1, EVP_PKEY_CTX_set_group_name(context, "prime256v1") == 1 else {
            throw OpenSSLError("P-256 keygen init")
        }
        var key: OpaquePointer?
        guard EVP_PKEY_generate(context, &key) == 1, let key else { throw OpenSSLError("EVP_PKEY_generate") }
        return PrivateKey(takingOwnershipOf: key)
    }

    /// A CSR for `spiffeId` signed by `key`, as PEM.
    static func makeCSR(for spiffeId: SpiffeId, key: PrivateKey) throws -> String {
        guard let request = X509_REQ_new() else { throw OpenSSLError("X509_REQ_new") }
        defer { X509_REQ_free(request) }
        guard X509_REQ_set_version(request, 0) == 1, X509_REQ_set_pubkey(request, key.pkey) == 1 else {
            throw OpenSSLError("X509_REQ_set_pubkey")
        }
        guard let extensions = CShims_sk_X509_EXTENSION_new_null() else { throw OpenSSLError("extension stack") }
        defer { CShims_sk_X509_EXTENSION_pop_free(extensions) }
        guard let san = X509V3_EXT_nconf_nid(nil, nil, NID_subject_alt_name, "critical,URI:\(spiffeId)") else {
            throw OpenSSLError("subjectAltName extension")
        }
        guard CShims_sk_X509_EXTENSION_push(extensions, san) > 0 else {
            X509_EXTENSION_free(san)
            throw OpenSSLError("extension push")
        }
        guard CShims_X509_REQ_add_extensions(request, extensions) == 1 else { throw OpenSSLError("X509_REQ_add_extensions") }
        guard X509_REQ_sign(request, key.pkey, EVP_sha256()) > 0 else { throw OpenSSLError("X509_REQ_sign") }
        return try PEMText.write { PEM_write_bio_X509_REQ($0, request) }
    }
}

/// PEM output through a memory BIO.
enum PEMText {
    static func write(_ body: (OpaquePointer) -> Int32) throws -> String {
        guard let bio = BIO_new(BIO_s_mem()) else { throw OpenSSLError("BIO_new") }
        defer { BIO_free(bio) }
        guard body(bio) == 1 else { throw OpenSSLError("PEM write") }
        var pointer: UnsafeMutablePointer<CChar>?
        let length = BIO_ctrl(bio, BIO_CTRL_INFO, 0, &pointer)
        guard length > 0, let pointer else { throw OpenSSLError("BIO contents") }
        return String(decoding: UnsafeRawBufferPointer(start: pointer, count: length), as: UTF8.self)
    }
}
