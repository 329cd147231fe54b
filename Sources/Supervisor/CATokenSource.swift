import IPC
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// Where the Istio CA's bearer token comes from (ISTIO_COMPAT §4.3): AUTH_TOKEN names a file
/// (the projected service-account token, which rotates), or, when no such file exists and the
/// value is not the default path, it is the token itself. The Supervisor reads it, so the
/// CertWorker needs no file access and the NetWorkers never see it.
struct CATokenSource {
    enum Kind: Equatable {
        case none
        case file(String)
        case literal(String)
    }

    let kind: Kind
    /// How often the file is read again: projected tokens are replaced hours before they expire.
    static let refreshMilliseconds: Int64 = 10_000

    init(configuration: Configuration) {
        let setting = configuration.string("AUTH_TOKEN")
        if configuration.string("CA_ADDRESS").isEmpty {
            kind = .none  // the built-in CA needs no token
        } else if !setting.isEmpty && access(setting, F_OK) == 0 {
            kind = .file(setting)
        } else if setting != Configuration.defaultTokenPath && !setting.isEmpty {
            kind = .literal(setting)
        } else {
            kind = .none
        }
    }

    /// The current token, or why it cannot be used. `.success(nil)`: there is no token to send.
    func read() -> Result<String?, CATokenError> {
        let token: String
        switch kind {
        case .none: return .success(nil)
        case .literal(let value): token = CAToken.normalized(Array(value.utf8))
        case .file(let path):
            do { token = CAToken.normalized(try Syscall.readFile(path, limit: CAToken.maxBytes + 64)) } catch {
                return .failure(CATokenError(description: "cannot read the CA token \(path): \(error)"))
            }
        }
        if let problem = CAToken.problem(with: token) { return .failure(CATokenError(description: "invalid CA token: \(problem)")) }
        return .success(token)
    }
}

struct CATokenError: Error, Equatable, CustomStringConvertible {
    let description: String
}
