import IPC
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// libFuzzer entry point for the IPC decoders: any bytes, as one received packet, with zero or
/// one fd attached. Nothing may trap; a message that decodes must encode back to the same bytes
/// (SupervisorMessage) or to a frame that decodes to the same message (WorkerMessage).
func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    var fds: [OwnedFD] = []
    // The last byte's top bit attaches a real fd, as SCM_RIGHTS would.
    if let last = bytes.last, last & 0x80 != 0 {
        let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
        if fd >= 0 { fds.append(OwnedFD(takingOwnershipOf: fd)) }
    }
    guard let frame = try? IPCFrame.decode(packet: bytes, fds: fds) else { return 0 }
    if let message = try? WorkerMessage.decode(frame) {
        guard let again = try? WorkerMessage.decode(try IPCFrame.decode(packet: message.frame().encodedBytes(), fds: [])),
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
        guard (try? message.frame(requestId: frame.requestId).encodedBytes()) == bytes else {
            fatalError("SupervisorMessage \(message.code) re-encodes differently")
        }
    }
    return 0
}

/// libFuzzer's entry for programs that keep their own main (SwiftPM gives every executable one).
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<Int32>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
) -> Int32

var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzOneInput(data, size) })
