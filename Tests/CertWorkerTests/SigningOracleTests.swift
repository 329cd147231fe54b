import COpenSSL
import IPC
import OpenSSLSupport
import Testing
@testable import CertWorker
#if canImport(Glibc)
import Glibc
#endif

/// The signing oracle against a real key: it signs only for a known handle, the allowed
/// algorithm and a TLS 1.3 CertificateVerify content; the signature verifies with the
/// certificate's key.
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
        let content = CertificateVerifyContent.make(.server, transcriptHash: [UInt8](repeating: 0x5a, count: 32))
        let handle = identity.material.handle

        #expect(oracle.answer(handle: [UInt8](repeating: 1, count: 32), algorithm: 1, content: content)
                == .refused("unknown key handle"))
        // Issue #6: a bare digest (what a general-purpose signer would take) is a violation.
        #expect(oracle.answer(handle: handle, algorithm: 1, content: [UInt8](repeating: 0x5a, count: 32))
                == .violation("content of 32 bytes is not a TLS 1.3 CertificateVerify input"))
        if case .signature = oracle.answer(handle: handle, algorithm: 9, content: content) {
            Issue.record("signed with an unknown algorithm")
        }
        #expect(identity.signatures == 0)

        guard case .signature(let signature) = oracle.answer(handle: handle, algorithm: 1, content: content) else {
            Issue.record("no signature"); return
        }
        #expect(identity.signatures == 1)
        // The signature is over SHA-256 of the content, made by the oracle, and verifies with the
        // certificate's key.
        let verified = identity.leaf.withUnsafeX509 { x509 -> Int32 in
            guard let key = X509_get0_pubkey(x509), let context = EVP_MD_CTX_new() else { return -1 }
            defer { EVP_MD_CTX_free(context) }
            guard EVP_DigestVerifyInit(context, nil, EVP_sha256(), nil, key) == 1 else { return -1 }
            return EVP_DigestVerify(context, signature, signature.count, content, content.count)
        }
        #expect(verified == 1)

        // A withdrawn handle is refused without blame (a handshake may race the withdrawal).
        store.remove(handle: handle)
        #expect(oracle.answer(handle: handle, algorithm: 1, content: content) == .retired("key handle was withdrawn"))
    }

    /// The fault `cert-bad-client-signature` (`badSignatures`, fault injection only): that side's
    /// signatures no longer verify, the other side's still do; none by default.
    @Test func badSignaturesSpoilOnlyTheSideAsked() throws {
        try KeyStore.enableSecureHeap()
        let identity = try StaticIdentityLoader.loadIdentity(at: try Self.makeIdentityDirectory())
        let store = KeyStore()
        store.insert(identity)
        #expect(SigningOracle(store: store).badSignatures.isEmpty)
        let oracle = SigningOracle(store: store, badSignatures: [.client])
        func verifies(_ side: CertificateVerifyContent.Side) -> Bool {
            let content = CertificateVerifyContent.make(side, transcriptHash: [UInt8](repeating: 0x33, count: 32))
            guard case .signature(let signature) = oracle.answer(handle: identity.material.handle, algorithm: 1, content: content) else {
                return false
            }
            return identity.leaf.withUnsafeX509 { x509 -> Bool in
                guard let key = X509_get0_pubkey(x509), let context = EVP_MD_CTX_new() else { return false }
                defer { EVP_MD_CTX_free(context) }
                guard EVP_DigestVerifyInit(context, nil, EVP_sha256(), nil, key) == 1 else { return false }
                return EVP_DigestVerify(context, signature, signature.count, content, content.count) == 1
            }
        }
        #expect(!verifies(.client))
        #expect(verifies(.server))
    }

    @Test func aKeyThatDoesNotMatchItsCertificateIsRefused() throws {
        let dir = try Self.makeIdentityDirectory()
        #expect(system("cd \(dir) && openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out key.pem") == 0)
        #expect(throws: StaticIdentityLoader.LoadError.self) { try StaticIdentityLoader.loadIdentity(at: dir) }
    }
}
