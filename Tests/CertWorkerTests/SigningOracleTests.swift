import COpenSSL
import IPC
import OpenSSLSupport
import Testing
@testable import CertWorker
#if canImport(Glibc)
import Glibc
#endif

/// The signing oracle against a real key: it signs only for a known handle, the allowed
/// algorithm and a digest of the right length; the signature verifies with the certificate's key.
@Suite struct SigningOracleTests {
    /// A throwaway CA and a leaf for spiffe://cluster.local/ns/test/sa/oracle, made with the
    /// openssl CLI in a fresh directory.
    static func makeIdentityDirectory() throws -> String {
        var template = Array("/tmp/ztunnel-oracle-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw SigningTestError("mkdtemp") }
        let dir = String(cString: made)
        let script = """
        set -e; cd \(dir); mkdir id
        openssl ecparam -name prime256v1 -genkey -noout -out ca.key
        openssl req -x509 -new -key ca.key -subj /O=test -days 1 -out id/root-cert.pem 2>/dev/null
        openssl ecparam -name prime256v1 -genkey -noout -out leaf.key
        openssl pkcs8 -topk8 -nocrypt -in leaf.key -out id/key.pem
        openssl req -new -key leaf.key -subj / -out leaf.csr 2>/dev/null
        printf 'subjectAltName=critical,URI:spiffe://cluster.local/ns/test/sa/oracle\\n' > ext
        openssl x509 -req -in leaf.csr -CA id/root-cert.pem -CAkey ca.key -CAcreateserial -days 1 -extfile ext -out id/cert-chain.pem 2>/dev/null
        """
        guard system(script) == 0 else { throw SigningTestError("openssl CLI failed") }
        return dir + "/id"
    }

    struct SigningTestError: Error { let what: String; init(_ what: String) { self.what = what } }

    @Test func signsOnlyWhatItShould() throws {
        try KeyStore.enableSecureHeap()
        let identity = try StaticIdentityLoader.loadIdentity(at: try Self.makeIdentityDirectory())
        #expect(identity.material.spiffeId == "spiffe://cluster.local/ns/test/sa/oracle")
        #expect(!identity.material.certificateChainPEM.contains("PRIVATE KEY"))
        let store = KeyStore()
        store.insert(identity)
        let oracle = SigningOracle(store: store)
        let digest = [UInt8](repeating: 0x5a, count: 32)
        let handle = identity.material.handle

        #expect(oracle.answer(handle: [UInt8](repeating: 1, count: 32), algorithm: 1, digest: digest)
                == .refused("unknown key handle"))
        #expect(oracle.answer(handle: handle, algorithm: 1, digest: Array(digest.prefix(20)))
                == .refused("digest of 20 bytes, ecdsaP256SHA256 needs 32"))
        if case .signature = oracle.answer(handle: handle, algorithm: 9, digest: digest) {
            Issue.record("signed with an unknown algorithm")
        }
        #expect(identity.signatures == 0)

        guard case .signature(let signature) = oracle.answer(handle: handle, algorithm: 1, digest: digest) else {
            Issue.record("no signature"); return
        }
        #expect(identity.signatures == 1)
        let verified = identity.leaf.withUnsafeX509 { x509 -> Int32 in
            guard let key = X509_get0_pubkey(x509), let context = EVP_PKEY_CTX_new(key, nil) else { return -1 }
            defer { EVP_PKEY_CTX_free(context) }
            guard EVP_PKEY_verify_init(context) == 1 else { return -1 }
            return EVP_PKEY_verify(context, signature, signature.count, digest, digest.count)
        }
        #expect(verified == 1)
    }

    @Test func aKeyThatDoesNotMatchItsCertificateIsRefused() throws {
        let dir = try Self.makeIdentityDirectory()
        #expect(system("cd \(dir) && openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out key.pem") == 0)
        #expect(throws: StaticIdentityLoader.LoadError.self) { try StaticIdentityLoader.loadIdentity(at: dir) }
    }
}
