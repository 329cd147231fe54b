internal import COpenSSL
import IPC
import OpenSSLSupport
import Shared

/// Answers sign requests from NetWorkers. Every request is checked against the CertWorker's own
/// state before any key is touched (openssh `mm_answer_sign`): the handle must name a current
/// key, the algorithm must be the one that key supports, and the content must be exactly a TLS 1.3
/// CertificateVerify input (`CertificateVerifyContent`), which the oracle hashes itself. So a
/// NetWorker, even a compromised one, obtains signatures over handshake transcripts only, never
/// over a digest of its choosing.
struct SigningOracle {
    enum Outcome: Equatable {
        case signature([UInt8])
        /// Refused, and counted against the NetWorker: it asked for something it should know it
        /// cannot have.
        case refused(String)
        /// Refused without blame: the handle was withdrawn recently, so a handshake that began
        /// before the NetWorker learnt of it may still ask (issue #6: the race with a withdrawal
        /// is not a violation).
        case retired(String)
        /// The request cannot come from a NetWorker that only does TLS: its channel is closed.
        case violation(String)
    }

    let store: KeyStore
    /// Fault injection only (`FaultKind.certBadClientSignature`, `.certBadServerSignature`): the
    /// side whose CertificateVerify is signed over a changed content, so that it does not verify.
    var badSignatures: Set<CertificateVerifyContent.Side> = []

    func answer(handle: [UInt8], algorithm rawAlgorithm: UInt8, content: [UInt8]) -> Outcome {
        guard let identity = store.byHandle[handle] else {
            return store.wasWithdrawn(handle) ? .retired("key handle was withdrawn") : .refused("unknown key handle")
        }
        guard let algorithm = SignatureAlgorithm(rawValue: rawAlgorithm), algorithm == .ecdsaP256SHA256 else {
            return .refused("algorithm \(rawAlgorithm) is not allowed for \(identity.material.spiffeId)")
        }
        guard let side = CertificateVerifyContent.side(of: content) else {
            return .violation("content of \(content.count) bytes is not a TLS 1.3 CertificateVerify input")
        }
        var signed = content
        if badSignatures.contains(side) { signed[signed.count - 1] ^= 0x01 }
        do {
            let signature = try sign(content: signed, with: identity.key)
            identity.signatures += 1
            return .signature(signature)
        } catch {
            return .refused("signing failed: \(error)")
        }
    }

    /// ECDSA over SHA-256 of `content` (the digest is made here, not taken from the requester).
    private func sign(content: [UInt8], with key: PrivateKey) throws -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var digestLength: UInt32 = 0
        guard EVP_Digest(content, content.count, &digest, &digestLength, EVP_sha256(), nil) == 1, digestLength == 32 else {
            throw OpenSSLError("EVP_Digest(SHA-256)")
        }
        guard let context = EVP_PKEY_CTX_new(key.pkey, nil) else { throw OpenSSLError("EVP_PKEY_CTX_new") }
        defer { EVP_PKEY_CTX_free(context) }
        guard EVP_PKEY_sign_init(context) == 1 else { throw OpenSSLError("EVP_PKEY_sign_init") }
        var length = 0
        guard EVP_PKEY_sign(context, nil, &length, digest, 32) == 1 else { throw OpenSSLError("EVP_PKEY_sign (size)") }
        var signature = [UInt8](repeating: 0, count: length)
        guard EVP_PKEY_sign(context, &signature, &length, digest, 32) == 1 else { throw OpenSSLError("EVP_PKEY_sign") }
        return Array(signature.prefix(length))
    }
}
