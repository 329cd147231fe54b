import CKeyHandle
import COpenSSL
import Testing

/// `CKeyHandle_decode_ec_public_keys_directly` (installed by `TLSContext.installProvider`): a
/// certificate's P-256 key is decoded by libcrypto's built-in EC method, without OpenSSL 3.0's
/// decoder set-up (7x cheaper per certificate, ARCHITECTURE.md), and still verifies what it
/// signed and nothing else. The refusal of a bad signature through such a key in a handshake is
/// `test_outbound_hbone.py::test_a_certificate_verify_that_does_not_verify_fails_the_handshake`.
@Suite struct ECPublicKeyEngineTests {
    /// A self-signed P-256 certificate (`openssl req -x509`, key thrown away).
    static let pem = """
        -----BEGIN CERTIFICATE-----
        MIIBkTCCATegAwIBAgIUJp+wRrZ6RDVg4EJePBjII8wEvOYwCgYIKoZIzj0EAwIw
        HTEbMBkGA1UECgwSenR1bm5lbC1zd2lmdCB0ZXN0MCAXDTI2MTIwMjE4MjI1OVoY
        DzIxMjYxMTA4MTgyMjU5WjAdMRswGQYDVQQKDBJ6dHVubmVsLXN3aWZ0IHRlc3Qw
        WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQDu5qV7kunSDMfoFNPT2Okbf3mXyr1
        rcCnBugLOrCvkoN0gfXL4pAwPbx/dxs1BndZ/V71KEYPi7ngLEIj6nPZo1MwUTAd
        BgNVHQ4EFgQUhP6ZcZ6DNKL7ruMVrN6JXiDFxI4wHwYDVR0jBBgwFoAUhP6ZcZ6D
        NKL7ruMVrN6JXiDFxI4wDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBF
        AiEA+KfGS7rq+hVQFWrZZwj3u2nJ3qfIX3ak+VXXRd4cXD4CIE5VU39gtES/mC79
        2gI4elXS+wAQftU+P2nV+zZ3Nqu1
        -----END CERTIFICATE-----
        """

    /// The certificate's DER, with `change` applied.
    static func certificate(_ change: (inout [UInt8]) -> Void = { _ in }) -> OpaquePointer? {
        guard let bio = BIO_new_mem_buf(pem, Int32(pem.utf8.count)) else { return nil }
        defer { BIO_free(bio) }
        guard let parsed = PEM_read_bio_X509(bio, nil, nil, nil) else { return nil }
        defer { X509_free(parsed) }
        var der: UnsafeMutablePointer<UInt8>?
        let length = i2d_X509(parsed, &der)
        guard length > 0, let der else { return nil }
        var bytes = Array(UnsafeBufferPointer(start: der, count: Int(length)))
        CRYPTO_free(der, nil, 0)
        change(&bytes)
        return bytes.withUnsafeBufferPointer { buffer in
            var cursor: UnsafePointer<UInt8>? = buffer.baseAddress
            return d2i_X509(nil, &cursor, Int(length))
        }
    }

    @Test func aCertificatesKeyIsDecodedByTheEngineAndVerifiesOnlyWhatItSigned() throws {
        #expect(CKeyHandle_decode_ec_public_keys_directly() == 1)
        let x509 = try #require(Self.certificate())
        defer { X509_free(x509) }
        let key = try #require(X509_get0_pubkey(x509))
        // Decoded by a provider, the key would belong to one (OpenSSL 3.0's default path).
        #expect(EVP_PKEY_get0_provider(key) == nil)
        #expect(EVP_PKEY_get_base_id(key) == EVP_PKEY_EC)
        #expect(X509_verify(x509, key) == 1)

        // The last byte of the DER is the signature's: changed, the same key refuses it.
        let forged = try #require(Self.certificate { $0[$0.count - 1] ^= 0x01 })
        defer { X509_free(forged) }
        let forgedKey = try #require(X509_get0_pubkey(forged))
        #expect(EVP_PKEY_get0_provider(forgedKey) == nil)
        #expect(X509_verify(forged, forgedKey) != 1)
    }
}
