internal import COpenSSL
import OpenSSLSupport
import Shared

/// The trust anchor of a connection to istiod (CA_ROOT_CA, XDS_ROOT_CA): a file, inline PEM, or
/// SYSTEM. Loaded whole before the sandbox: a hashed-directory lookup would open files during a
/// handshake, after the sandbox, where no path can be opened any more.
public final class TrustRoots: @unchecked Sendable {
    public struct Invalid: Error, CustomStringConvertible {
        public let description: String
    }

    /// The X509_STORE; owned by this object.
    let store: OpaquePointer

    /// `setting` names the setting in errors (`CA_ROOT_CA`); `value` is its value.
    public init(setting: String, value: String) throws {
        guard let store = X509_STORE_new() else { throw OpenSSLError("X509_STORE_new") }
        self.store = store
        if value == "SYSTEM" {
            guard let file = X509_get_default_cert_file(), X509_STORE_load_file(store, file) == 1 else {
                throw OpenSSLError("system trust store")
            }
            return
        }
        let pem: String
        if value.contains("-----BEGIN") {
            pem = value
        } else {
            do { pem = String(decoding: try Syscall.readFile(value, limit: 256 * 1024), as: UTF8.self) } catch {
                throw Invalid(description: "invalid \(setting) (\(value)): \(error)")
            }
        }
        for certificate in try Certificate.parseChain(pem: pem) {
            try certificate.withUnsafeX509 { guard X509_STORE_add_cert(store, $0) == 1 else { throw OpenSSLError("\(setting) root") } }
        }
    }

    deinit { X509_STORE_free(store) }
}
