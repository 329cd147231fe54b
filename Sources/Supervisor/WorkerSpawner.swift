internal import CShims
import IPC
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// Starts a worker binary with posix_spawn (never a bare fork of a multi-threaded Swift process).
///
/// The fd contract of a worker (documented in docs/ARCHITECTURE.md):
/// - 0: /dev/null
/// - 1, 2: the Supervisor's stderr (the debug log)
/// - 3: the worker's end of its IPC socket (SOCK_SEQPACKET)
/// - nothing else: every other fd is closed in the child before exec.
/// The environment is scrubbed to a fixed PATH and the runtime's backtrace switch; the worker's configuration arrives in its setup
/// message. The signal mask and dispositions are reset.
enum WorkerSpawner {
    static let ipcFd: Int32 = 3

    struct Spawned {
        let pid: pid_t
        let pidfd: OwnedFD
        let ipc: IPCSocket
    }

    static func spawn(executable path: String) throws -> Spawned {
        let (parentEnd, childEnd) = try IPCSocket.pair()
        // Room for a hand-over's burst (a node's pods, each with its listeners: hundreds of
        // frames) without a full channel, which the Supervisor treats as an unresponsive worker.
        // SO_SNDBUFFORCE passes the system's cap with CAP_NET_ADMIN; without it, the cap applies.
        var size: Int32 = 4 << 20
        if setsockopt(parentEnd.fd.rawValue, SOL_SOCKET, SO_SNDBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            _ = setsockopt(parentEnd.fd.rawValue, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        // Move the child's end above the fixed fds: dup2 onto itself would keep FD_CLOEXEC.
        let high = OwnedFD(takingOwnershipOf: try Syscall.retrying("fcntl(F_DUPFD_CLOEXEC)") {
            fcntl(childEnd.fd.rawValue, F_DUPFD_CLOEXEC, 10)
        })

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        try check("addopen") { posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0) }
        try check("adddup2(stderr)") { posix_spawn_file_actions_adddup2(&actions, 2, 1) }
        try check("adddup2(ipc)") { posix_spawn_file_actions_adddup2(&actions, high.rawValue, ipcFd) }
        try check("addclosefrom") { CShims_spawn_addclosefrom(&actions, ipcFd + 1) }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGCHLD, SIGPIPE, SIGHUP] { sigaddset(&defaults, signal) }
        try check("setsigmask") { posix_spawnattr_setsigmask(&attributes, &emptyMask) }
        try check("setsigdefault") { posix_spawnattr_setsigdefault(&attributes, &defaults) }
        try check("setflags") { posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)) }

        let argv: [UnsafeMutablePointer<CChar>?] = [strdup(path), nil]
        // SWIFT_BACKTRACE=enable=no: on a trap the runtime's backtracer would read /proc/self,
        // which the seccomp allowlist forbids, and the exit would read as a seccomp kill instead of
        // the crash it is.
        let envp: [UnsafeMutablePointer<CChar>?] = [
            strdup("PATH=/usr/sbin:/usr/bin:/sbin:/bin"), strdup("SWIFT_BACKTRACE=enable=no"), nil,
        ]
        defer { for pointer in argv + envp { free(pointer) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, &attributes, argv, envp)
        guard rc == 0 else { throw SyscallError(function: "posix_spawn(\(path))", errno: rc) }
        do {
            let pidfd = try Syscall.retrying("pidfd_open") { CShims_pidfd_open(pid, 0) }
            return Spawned(pid: pid, pidfd: OwnedFD(takingOwnershipOf: pidfd), ipc: parentEnd)
        } catch {
            // Without a pidfd the Supervisor cannot watch this child: end it and reap it now
            // rather than leave a worker nobody supervises, or a zombie (issue #6).
            kill(pid, SIGKILL)
            var status: Int32 = 0
            _ = waitpid(pid, &status, 0)
            throw error
        }
    }

    private static func check(_ step: String, _ body: () -> Int32) throws {
        let rc = body()
        if rc != 0 { throw SyscallError(function: "posix_spawn \(step)", errno: rc) }
    }
}
