internal import COpenSSL
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// Asynchronous signing for one TLS connection (SSL_MODE_ASYNC, KEY_HANDLES.md). When OpenSSL
/// needs a signature inside an ASYNC_JOB, the provider's callback only records the request here
/// and pauses the job; SSL_do_handshake returns WANT_ASYNC to the event loop, which sends the
/// request to the CertWorker from its own stack. The reply is stored here and the handshake is
/// driven again on the same event-loop thread, which resumes the job; the job then finds the
/// signature. The job's small stack (32 KiB, no guard page in OpenSSL 3.0) only ever runs the
/// few lines in `signInsideJob`.
final class AsyncSignSlot {
    enum Outcome { case signature([UInt8]), failure }

    /// What the paused job asked for, until the event loop sends it.
    var request: (handle: [UInt8], content: [UInt8])?
    var outcome: Outcome?
    var isInFlight = false

    /// The slot of the connection whose handshake this thread is driving right now.
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    /// Runs `body` (a call into OpenSSL) with this slot as the thread's current one.
    func whileCurrent<R>(_ body: () -> R) -> R {
        pthread_setspecific(Self.key, Unmanaged.passUnretained(self).toOpaque())
        defer { pthread_setspecific(Self.key, nil) }
        return body()
    }

    /// Called by the provider's sign callback. Returns nil when not inside an ASYNC_JOB of a
    /// connection that has a slot (then the caller signs blocking).
    static func signInsideJob(handle: [UInt8], content: [UInt8]) -> [UInt8]?? {
        guard ASYNC_get_current_job() != nil, let raw = pthread_getspecific(key) else { return nil }
        let slot = Unmanaged<AsyncSignSlot>.fromOpaque(raw).takeUnretainedValue()
        slot.request = (handle, content)
        slot.outcome = nil
        while slot.outcome == nil {
            guard ASYNC_pause_job() == 1 else { return .some(nil) }
        }
        // After a resume the thread's current slot is set again by the driver: it is `slot`.
        if case .signature(let signature) = slot.outcome { return .some(signature) }
        return .some(nil)
    }
}
