internal import COpenSSL
import IPC
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// `ztunnel-cert-worker`: the only process that will hold workload private keys (issue #3). For
/// now it confines itself (not dumpable, no core file, its seccomp allowlist), completes the setup
/// handshake and follows the Supervisor's drain.
enum CertWorkerMain {
    static func run() -> Never {
        let started = WorkerBootstrap.start(as: .certWorker)
        let channel = started.channel
        Log.info("confined", [("pid", "\(getpid())"), ("openssl", String(cString: OpenSSL_version(OPENSSL_VERSION)))])
        while true {
            let message: SupervisorMessage
            do {
                guard case .frame(let frame) = try channel.receive() else { continue }
                message = try SupervisorMessage.decode(frame)
            } catch IPCError.closed {
                Log.info("supervisor closed the channel; exiting")
                exit(0)
            } catch {
                // The Supervisor is trusted; bad bytes from it mean a bug, and a key holder must
                // not guess. Exit and be restarted with a clean state.
                WorkerBootstrap.die("bad message from the supervisor: \(error)")
            }
            switch message {
            case .configured:
                do { try channel.send(WorkerMessage.ready.frame()) } catch { WorkerBootstrap.die("cannot send ready: \(error)") }
            case .drain:
                // Nothing in flight yet that must finish (no CSRs before issue #3).
                Log.info("drain requested; exiting")
                exit(0)
            case .setup, .listener, .processTable:
                WorkerBootstrap.die("unexpected \(message.code) from the supervisor")
            }
        }
    }
}

CertWorkerMain.run()
