import Shared
#if canImport(Glibc)
import Glibc
#endif

/// A file the Supervisor looks at again every so often (LOCAL_XDS_PATH, CRL_PATH) and hands to
/// the NetWorkers, which parse it (the Supervisor parses nothing). New bytes count only once they
/// were seen the same on two looks in a row, so a file caught half written is never sent.
struct SettledFile {
    enum Look: Equatable {
        /// The same bytes as last settled (or still settling).
        case unchanged
        /// Different bytes, seen once: the next look decides.
        case settling
        /// New bytes, seen the same twice in a row.
        case changed([UInt8])
        /// The file could not be read; `firstTime` on the first failure after a success,
        /// `missing` when it does not exist (ENOENT).
        case unreadable(String, firstTime: Bool, missing: Bool)
    }

    let path: String
    let limit: Int
    /// The last settled bytes (at first: as read at start).
    private(set) var settled: [UInt8]
    private var candidate: [UInt8]?
    private var unreadable = false

    init(path: String, limit: Int, settled: [UInt8]) {
        self.path = path
        self.limit = limit
        self.settled = settled
    }

    typealias Reader = (String, Int) throws -> [UInt8]
    static let readFile: Reader = { try Syscall.readFile($0, limit: $1, regularOnly: true) }

    /// Reads the file and takes its bytes as settled at once (at start, when nothing is in force
    /// that a half-written file could replace).
    mutating func readNow(read: Reader = SettledFile.readFile) throws -> [UInt8] {
        let bytes = try read(path, limit)
        settled = bytes
        candidate = nil
        unreadable = false
        return bytes
    }

    /// Whether `error` (from reading) says the file does not exist.
    static func isMissing(_ error: Error) -> Bool { (error as? SyscallError)?.errno == ENOENT }

    /// Reads the file and says what changed; `read` stands in for the file in tests.
    mutating func look(read: Reader = SettledFile.readFile) -> Look {
        let bytes: [UInt8]
        do { bytes = try read(path, limit) } catch {
            defer { unreadable = true }
            candidate = nil
            return .unreadable("\(error)", firstTime: !unreadable, missing: Self.isMissing(error))
        }
        unreadable = false
        guard bytes != settled else {
            candidate = nil
            return .unchanged
        }
        guard bytes == candidate else {
            candidate = bytes
            return .settling
        }
        candidate = nil
        settled = bytes
        return .changed(bytes)
    }
}
