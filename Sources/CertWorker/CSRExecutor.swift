internal import CShims
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// Where CA requests run. The CertWorker's poll loop also answers sign requests, so a CA that is
/// slow or black-holes connections must not run on it: `ThreadCSRExecutor` runs each request on
/// a CA thread and hands the result back through an eventfd the loop polls. Tests use
/// `InlineCSRExecutor`. Private keys never go to the CA thread: it gets the CSR only.
protocol CSRExecutor: AnyObject {
    /// Runs `work` somewhere, then `completion` with its result on the CertWorker's loop.
    func submit(_ work: @escaping () -> Result<IssuedCertificate, Error>,
                completion: @escaping (Result<IssuedCertificate, Error>) -> Void)
}

final class InlineCSRExecutor: CSRExecutor {
    func submit(_ work: @escaping () -> Result<IssuedCertificate, Error>,
                completion: @escaping (Result<IssuedCertificate, Error>) -> Void) {
        completion(work())
    }
}

/// One CA thread working through a queue; results come back via `drainCompleted()`, which the
/// poll loop calls when `wakeFd` is readable.
final class ThreadCSRExecutor: CSRExecutor, @unchecked Sendable {
    typealias Work = () -> Result<IssuedCertificate, Error>
    typealias Completion = (Result<IssuedCertificate, Error>) -> Void

    let wakeFd: OwnedFD
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    private var queue: [(Work, Completion)] = []
    private var done: [(Result<IssuedCertificate, Error>, Completion)] = []

    init() throws {
        wakeFd = OwnedFD(takingOwnershipOf: try Syscall.retrying("eventfd") { eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK)) })
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
        var thread = pthread_t()
        let box = Unmanaged.passRetained(self)
        let rc = pthread_create(&thread, nil, { raw in
            guard let raw else { return nil }
            Unmanaged<ThreadCSRExecutor>.fromOpaque(raw).takeRetainedValue().serve()
            return nil
        }, box.toOpaque())
        guard rc == 0 else {
            box.release()
            throw SyscallError(function: "pthread_create(CA thread)", errno: rc)
        }
        pthread_detach(thread)
    }

    func submit(_ work: @escaping Work, completion: @escaping Completion) {
        pthread_mutex_lock(&mutex)
        queue.append((work, completion))
        pthread_cond_signal(&condition)
        pthread_mutex_unlock(&mutex)
    }

    /// Runs the completions of finished requests; call on the CertWorker's loop.
    func drainCompleted() {
        var counter: UInt64 = 0
        _ = read(wakeFd.rawValue, &counter, 8)
        pthread_mutex_lock(&mutex)
        let finished = done
        done.removeAll()
        pthread_mutex_unlock(&mutex)
        for (result, completion) in finished { completion(result) }
    }

    private func serve() {
        while true {
            pthread_mutex_lock(&mutex)
            while queue.isEmpty { pthread_cond_wait(&condition, &mutex) }
            let (work, completion) = queue.removeFirst()
            pthread_mutex_unlock(&mutex)
            let result = work()
            pthread_mutex_lock(&mutex)
            done.append((result, completion))
            pthread_mutex_unlock(&mutex)
            var one: UInt64 = 1
            _ = write(wakeFd.rawValue, &one, 8)
        }
    }
}
