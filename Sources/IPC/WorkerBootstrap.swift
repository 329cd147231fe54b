internal import CShims
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// The first steps of every worker, in order: read the setup message from the fixed IPC fd, set up
/// logging, enter the role's sandbox, arm the parent-death signal, say hello. Nothing else is read
/// before the sandbox is in place.
public enum WorkerBootstrap {
    public static let ipcFd: Int32 = 3

    public struct Started {
        public let channel: IPCSocket
        public let setup: WorkerSetup
        public let configuration: Configuration
    }

    /// Never returns on failure: a worker that cannot confine itself exits with status 78
    /// (EX_CONFIG), and the Supervisor's lost-child policy takes over.
    ///
    /// `beforeSandbox` runs with the configuration, still with the start-up credentials: the
    /// place to read what the role needs and the sandbox forbids (the CertWorker's key files,
    /// as sshd reads its host keys before privilege separation).
    public static func start(as role: WorkerRole, beforeSandbox: ((Configuration) throws -> Void)? = nil) -> Started {
        let channel = IPCSocket(OwnedFD(takingOwnershipOf: ipcFd))
        let setup: WorkerSetup
        do {
            guard case .frame(let frame) = try channel.receive(),
                  case .setup(let received) = try SupervisorMessage.decode(frame) else {
                die("first message was not setup")
            }
            setup = received
        } catch {
            die("cannot read setup: \(error)")
        }
        guard setup.role == role, setup.protocolVersion == IPCProtocol.version else {
            die("setup for \(setup.role) protocol \(setup.protocolVersion); this is \(role) protocol \(IPCProtocol.version)")
        }
        var resolved: [String: String] = [:]
        for (name, value) in setup.settings { resolved[name] = value }
        let configuration: Configuration
        do { configuration = try Configuration(resolved: resolved, onlyGiven: true) } catch { die("bad configuration: \(error)") }
        Log.configure(level: configuration.string("RUST_LOG"), format: configuration.string("LOG_FORMAT"),
                      component: "\(role)[\(setup.index)]")
        let parent = getppid()
        do { try beforeSandbox?(configuration) } catch { die("\(error)") }
        do {
            let report = try Sandbox.enter(setup.sandboxProfile)
            if !report.skippedSyscalls.isEmpty {
                Log.debug("seccomp: syscalls unknown on this architecture: \(report.skippedSyscalls.joined(separator: ","))")
            }
            switch report.landlock {
            case .enforced(let abi, let skipped)?:
                Log.info("landlock enforced", [("abi", "\(abi)"), ("not_enforced", skipped.isEmpty ? "none" : skipped.joined(separator: ","))])
            case .unsupported(let reason)?:
                // Logged once; seccomp still holds (issue #6).
                Log.warn("landlock unavailable; seccomp alone confines this worker", [("reason", reason)])
            case nil:
                break
            }
        } catch {
            die("\(error)")
        }
        // A write to a connection the peer reset must be an error, not a signal that ends the
        // worker (OpenSSL's socket BIO writes with write(2)).
        signal(SIGPIPE, SIG_IGN)
        // The parent-death signal is cleared by the credential change, so it is armed after it.
        // If the Supervisor is already gone, there is nobody to serve.
        _ = CShims_prctl(PR_SET_PDEATHSIG, UInt(SIGKILL), 0, 0, 0)
        if getppid() != parent { die("supervisor exited during setup") }
        do {
            try channel.send(WorkerMessage.hello(protocolVersion: IPCProtocol.version, role: role, pid: getpid()).frame())
        } catch {
            die("cannot send hello: \(error)")
        }
        return Started(channel: channel, setup: setup, configuration: configuration)
    }

    /// The next message from the Supervisor, or nil when nothing is queued (non-blocking).
    /// The channel closing means the Supervisor is gone: exit 0. Bad bytes from the trusted
    /// Supervisor mean a bug; a worker must not guess, so it exits and is restarted clean.
    public static func nextMessage(from channel: IPCSocket, blocking: Bool) -> SupervisorMessage? {
        do {
            guard case .frame(let frame) = try channel.receive(blocking: blocking) else { return nil }
            return try SupervisorMessage.decode(frame)
        } catch IPCError.closed {
            Log.info("supervisor closed the channel; exiting")
            exit(0)
        } catch {
            die("bad message from the supervisor: \(error)")
        }
    }

    /// Exit status 75 (EX_TEMPFAIL): the worker needs a file its sandbox no longer lets it read;
    /// the Supervisor restarts it like any exit, and the new worker reads the file first.
    public static func exitToReload(_ reason: String) -> Never {
        Log.warn(reason)
        exit(75)
    }

    public static func die(_ reason: String) -> Never {
        FileHandleStderr.write("ztunnel worker \(getpid()): \(reason)\n")
        exit(78)
    }
}
