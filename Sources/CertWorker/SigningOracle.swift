internal import COpenSSL
import IPC
import OpenSSLSupport
import Shared

/// Answers sign requests from NetWorkers. Every request is checked against the CertWorker's own
/// state before any key is touched (openssh `mm_answer_sign`): the handle must name a current
/// key, the algorithm must be the one that key supports, the digest must have that algorithm's
/// length. Anything else is refused, never guessed at.
struct SigningOracle {
    enum Outcome: Equatable {
        case signature([UInt8])
        case refused(String)
    }

    let store: KeyStore

    func answer(handle: [UInt8], algorithm rawAlgorithm: UInt8, digest: [UInt8]) -> Outcome {
        guard let identity = store.byHandle[handle] else { return .refused("unknown key handle") }
        guard let algorithm = SignatureAlgorithm(rawValue: rawAlgorithm), algorithm == .ecdsaP256SHA256 else {
            return .refused("algorithm \(rawAlgorithm) is not allowed for \(identity.material.spiffeId)")
        }
        guard digest.count == algorithm.digestLength else {
            return .refused("digest of \(digest.count) bytes, \(algorithm) needs \(algorithm.digestLength)")
        }
        do {
            let signature = try sign(digest: digest, with: identity.key)
            identity.signatures += 1
            return .signature(signature)
        } catch {
            return .refused("signing failed: \(error)")
        }
    }

    /// ECDSA over the digest as given (EVP_PKEY_sign with no message digest set).
    private func sign(digest: [UInt8], with key: PrivateKey) throws -> [UInt8] {
        guard let context = EVP_PKEY_CTX_new(key.pkey, nil) else { throw OpenSSLError("EVP_PKEY_CTX_new") }
        defer { EVP_PKEY_CTX_free(context) }
        guard EVP_PKEY_sign_init(context) == 1 else { throw OpenSSLError("EVP_PKEY_sign_init") }
        var length = 0
        guard EVP_PKEY_sign(context, nil, &length, digest, digest.count) == 1 else { throw OpenSSLError("EVP_PKEY_sign (size)") }
        var signature = [UInt8](repeating: 0, count: length)
        guard EVP_PKEY_sign(context, &signature, &length, digest, digest.count) == 1 else { throw OpenSSLError("EVP_PKEY_sign") }
        return Array(signature.prefix(length))
    }
}
