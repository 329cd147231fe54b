internal import COpenSSL
import IPC
import OpenSSLSupport
import Shared

/// A private key (owns its EVP_PKEY*). The key's secret lives in OpenSSL's secure heap (locked,
/// excluded from core dumps, cleared on free) once `KeyStore.enableSecureHeap()` has run.
final class PrivateKey {
    let pkey: OpaquePointer

    init(takingOwnershipOf pkey: OpaquePointer) { self.pkey = pkey }

    deinit { EVP_PKEY_free(pkey) }
}

/// One identity the CertWorker can sign for.
final class StoredIdentity {
    let material: IdentityMaterial
    let leaf: Certificate
    let key: PrivateKey
    let source: String
    var signatures = 0

    init(material: IdentityMaterial, leaf: Certificate, key: PrivateKey, source: String) {
        self.material = material
        self.leaf = leaf
        self.key = key
        self.source = source
    }
}

/// The CertWorker's identities by key handle. Only this process ever holds these keys.
final class KeyStore {
    private(set) var byHandle: [[UInt8]: StoredIdentity] = [:]

    var identities: [StoredIdentity] { byHandle.values.sorted { $0.material.spiffeId < $1.material.spiffeId } }

    func insert(_ identity: StoredIdentity) { byHandle[identity.material.handle] = identity }

    /// Handles dropped recently, oldest first (bounded): a sign request for one of them is a race
    /// with the withdrawal, not a NetWorker probing the oracle.
    private var withdrawn: [[UInt8]] = []
    static let withdrawnMemory = 256

    /// Drops a key: its handle signs nothing from now on, and its memory is cleared on free.
    func remove(handle: [UInt8]) {
        guard byHandle.removeValue(forKey: handle) != nil else { return }
        withdrawn.append(handle)
        if withdrawn.count > Self.withdrawnMemory { withdrawn.removeFirst(withdrawn.count - Self.withdrawnMemory) }
    }

    func wasWithdrawn(_ handle: [UInt8]) -> Bool { withdrawn.contains(handle) }

    /// OpenSSL's secure heap: mmap'd, mlock'd, MADV_DONTDUMP, cleared on free. Private key
    /// numbers are allocated there. Must run before any key is loaded.
    static func enableSecureHeap(bytes: Int = 256 * 1024) throws {
        try secureHeapLock.withLock {
            if CRYPTO_secure_malloc_initialized() == 1 { return }
            guard CRYPTO_secure_malloc_init(bytes, 32) == 1 else { throw OpenSSLError("CRYPTO_secure_malloc_init") }
        }
    }

    private static let secureHeapLock = Mutex()
}
