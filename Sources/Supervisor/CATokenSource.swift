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

    private let setting: String
    /// Which roles send the token, and so receive it: the CertWorker to istiod's CA
    /// (`CA_ADDRESS`), the xDS worker to its xDS (`XDS_ADDRESS`). With the built-in CA the
    /// CertWorker has no use for it and does not get it.
    let recipients: Set<WorkerRole>
    /// How often the source is looked at again: projected tokens are replaced hours before they
    /// expire, and a token file may appear after start (a volume mounted late).
    static let refreshMilliseconds: Int64 = 10_000

    init(configuration: Configuration) {
        setting = configuration.string("AUTH_TOKEN")
        // The token is istiod's: for its CA and for its xDS.
        recipients = Set([configuration.string("CA_ADDRESS").isEmpty ? nil : WorkerRole.certWorker,
                          configuration.string("XDS_ADDRESS").isEmpty ? nil : WorkerRole.xdsWorker].compactMap { $0 })
    }

    /// Whether any role sends the token (istiod's CA or xDS is configured).
    private var usesCA: Bool { !recipients.isEmpty }

    /// Decided anew at each read, as upstream does per call: a path that exists is a file; one
    /// that does not, other than the default path, is the token itself.
    var kind: Kind {
        if !usesCA || setting.isEmpty { return .none }  // the built-in CA and local config need no token
        if access(setting, F_OK) == 0 { return .file(setting) }
        if setting != Configuration.defaultTokenPath { return .literal(setting) }
        return .none
    }

    /// Whether the source is looked at again periodically (a path, existing or not yet).
    var isRefreshed: Bool { usesCA && !setting.isEmpty && (setting.hasPrefix("/") || setting.hasPrefix(".")) }

    /// The current token, or why it cannot be used. `.success(nil)`: there is no token to send.
    func read() -> Result<String?, CATokenError> {
        let token: String
        switch kind {
        case .none: return .success(nil)
        case .literal(let value): token = CAToken.normalized(Array(value.utf8))
        case .file(let path):
            do { token = CAToken.normalized(try Syscall.readFile(path, limit: CAToken.maxBytes + 64, regularOnly: true)) } catch {
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
