import FuzzDriver
import IPC
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// libFuzzer entry point for the IPC decoders: any bytes, as one received packet, with zero or
/// one fd attached. Nothing may trap; a message that decodes must encode back to the same bytes
/// (SupervisorMessage) or to a frame that decodes to the same message (WorkerMessage). A setup
/// message's settings go through the checks a worker makes of them (Configuration).
/// The same bytes are also a `POST /logging` query (`k=v&k=v`, values percent-encoded), which
/// reaches LogFilterChange from the admin port: a filter it puts in force is one the workers
/// accept (Log.Directives), within its length bound.
func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    fuzzLogging(String(decoding: bytes, as: UTF8.self))
    var fds: [OwnedFD] = []
    // The top bit of the request id's low byte (offset 9, free in every message) attaches a real
    // fd, as SCM_RIGHTS would.
    if bytes.count > 9, bytes[9] & 0x80 != 0 {
        let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
        if fd >= 0 { fds.append(OwnedFD(takingOwnershipOf: fd)) }
    }
    guard let frame = try? IPCFrame.decode(packet: bytes, fds: fds) else { return 0 }
    if let message = try? WorkerMessage.decode(frame) {
        let reframed = message.frame(requestId: frame.requestId)
        guard let again = try? WorkerMessage.decode(try IPCFrame.decode(packet: reframed.encodedBytes(), fds: reframed.fds)),
              again == message else {
            fatalError("WorkerMessage does not round-trip: \(message)")
        }
    }
    if let message = try? CertWorkerMessage.decode(frame) {
        guard (try? message.frame(requestId: frame.requestId).encodedBytes()) == bytes else {
            fatalError("CertWorkerMessage \(message.code) re-encodes differently")
        }
    }
    if let request = try? SignerRequest.decode(frame) {
        guard (try? request.frame(requestId: frame.requestId).encodedBytes()) == bytes else {
            fatalError("SignerRequest re-encodes differently")
        }
        // The CertWorker's shape check on what a NetWorker asks it to sign.
        if case .sign(_, _, let content) = request, let side = CertificateVerifyContent.side(of: content) {
            let hash = Array(content.suffix(content.count - 64 - side.rawValue.utf8.count - 1))
            guard CertificateVerifyContent.make(side, transcriptHash: hash) == content else {
                fatalError("accepted a content that is not padding, context, 0, hash")
            }
        }
    }
    if let message = try? SupervisorMessage.decode(frame) {
        if case .setup(let setup) = message {
            _ = try? Configuration(resolved: Dictionary(setup.settings, uniquingKeysWith: { $1 }), onlyGiven: true)
        }
        guard (try? message.frame(requestId: frame.requestId).encodedBytes()) == bytes else {
            fatalError("SupervisorMessage \(message.code) re-encodes differently")
        }
    }
    return 0
}

func fuzzLogging(_ text: String) {
    var query: [String: String] = [:]
    for pair in text.split(separator: "&").prefix(8) {
        let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        if query[String(parts[0])] == nil { query[String(parts[0])] = parts.count > 1 ? String(parts[1]) : "" }
    }
    if case .change(let filter) = LogFilterChange.outcome(current: "info,access=debug", initial: "info", query: query) {
        if filter.utf8.count > LogFilterChange.maxFilterBytes { fatalError("a filter of \(filter.utf8.count) bytes") }
        if let problem = Log.Directives.problem(with: filter) { fatalError("a filter the workers refuse: \(problem)") }
    }
}

runFuzzer { data, size in fuzzOneInput(data, size) }
