internal import COpenSSL
import IPC
import OpenSSLSupport
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// The static-files backend: `<dir>/<name>/cert-chain.pem` (leaf first), `key.pem` and
/// `root-cert.pem` per identity, for VMs, bare metal and tests. Read once, before the sandbox.
/// A directory that is wrong in any way stops the start with the reason; a half-loaded key set
/// would serve some identities and silently fail others.
enum StaticIdentityLoader {
    struct LoadError: Error, CustomStringConvertible {
        let description: String
        init(_ path: String, _ reason: String) { description = "invalid ZTUNNEL_STATIC_IDENTITY_DIR: \(path): \(reason)" }
    }

    static func load(directory: String, into store: KeyStore) throws {
        guard let dir = opendir(directory) else { throw LoadError(directory, String(cString: strerror(errno))) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if !name.hasPrefix(".") && entry.pointee.d_type == DT_DIR { names.append(name) }
        }
        closedir(dir)
        for name in names.sorted() {
            try store.insert(loadIdentity(at: directory + "/" + name))
        }
    }

    static func loadIdentity(at path: String) throws -> StoredIdentity {
        let chainPEM = try text(path + "/cert-chain.pem")
        let rootsPEM = try text(path + "/root-cert.pem")
        let chain: [Certificate]
        do { chain = try Certificate.parseChain(pem: chainPEM); _ = try Certificate.parseChain(pem: rootsPEM) } catch {
            throw LoadError(path, "\(error)")
        }
        let leaf = chain[0]
        guard let spiffeId = leaf.spiffeIds.first else { throw LoadError(path, "the leaf has no SPIFFE URI SAN") }
        let key = try privateKey(path + "/key.pem")
        let matches = leaf.withUnsafeX509 { X509_check_private_key($0, key.pkey) } == 1
        guard matches else { throw LoadError(path, "key.pem does not match the leaf certificate") }
        guard EVP_PKEY_is_a(key.pkey, "EC") == 1, EVP_PKEY_get_bits(key.pkey) == 256 else {
            throw LoadError(path, "only ECDSA P-256 keys are supported")
        }
        let material = IdentityMaterial(spiffeId: spiffeId, certificateChainPEM: chainPEM, rootsPEM: rootsPEM,
                                        handle: try leaf.publicKeyDigest())
        return StoredIdentity(material: material, leaf: leaf, key: key, source: "static:\(path)")
    }

    private static func text(_ path: String) throws -> String {
        do { return String(decoding: try Syscall.readFile(path, limit: 64 * 1024), as: UTF8.self) } catch {
            throw LoadError(path, "\(error)")
        }
    }

    /// Parses the key straight from a buffer that is cleared afterwards, so no copy of the PEM
    /// text outlives the load in this process's ordinary heap.
    static func privateKey(_ path: String) throws -> PrivateKey {
        var bytes: [UInt8]
        do { bytes = try Syscall.readFile(path, limit: 16 * 1024) } catch { throw LoadError(path, "\(error)") }
        defer { bytes.withUnsafeMutableBytes { _ = memset_s_portable($0.baseAddress, $0.count) } }
        let pkey: OpaquePointer? = bytes.withUnsafeMutableBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return PEM_read_bio_PrivateKey(bio, nil, nil, nil)
        }
        guard let pkey else { throw LoadError(path, "\(OpenSSLError("PEM_read_bio_PrivateKey"))") }
        return PrivateKey(takingOwnershipOf: pkey)
    }
}

/// Clears memory in a way the optimiser keeps (OPENSSL_cleanse).
@discardableResult
func memset_s_portable(_ pointer: UnsafeMutableRawPointer?, _ count: Int) -> Int {
    if let pointer { OPENSSL_cleanse(pointer, count) }
    return 0
}
