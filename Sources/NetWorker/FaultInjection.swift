internal import CShims
import IPC
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// Faults the tests inject through the admin port (only with ZTUNNEL_DEBUG_FAULT_INJECTION=true)
/// to prove from inside a running worker that its walls hold: each forbidden operation fails or
/// kills the worker, as its seccomp profile and Landlock policy say. Every operation here is
/// harmless should a wall ever let it through, so a broken filter shows up as a survivor or a
/// success in the log, never as damage.
enum FaultInjection {
    enum Kind: String, Sendable, CaseIterable {
        /// A syscall outside every worker allowlist: vhangup(2). Killed (SIGSYS).
        case seccomp
        /// Bytes that are no valid frame, on the IPC socket: the Supervisor kills the worker.
        case ipcGarbage = "ipc-garbage"
        /// clone(2) with CLONE_NEWUSER: killed (the clone rule admits threads only).
        case cloneNamespace = "clone-namespace"
        /// socket(AF_NETLINK): killed (INET and INET6 only).
        case netlinkSocket = "netlink-socket"
        /// tgkill(2) of the parent: killed (own pid only).
        case signalOther = "signal-other"
        /// openat(2) of /etc/hostname: EACCES from seccomp, and from Landlock under it.
        case openFile = "open-file"
        /// mkdir(2) under /tmp: a kill under seccomp; EACCES from Landlock when seccomp only logs.
        case makeDirectory = "make-dir"
        /// socket(AF_INET, SOCK_DGRAM): killed (TCP only).
        case udpSocket = "udp-socket"
        /// socket(AF_UNIX, SOCK_STREAM): killed (so never the istio-cni socket).
        case unixSocket = "unix-socket"
        /// socket(AF_INET, SOCK_RAW, ICMP): killed.
        case rawSocket = "raw-socket"
        /// setns(2): killed (not in the profile; the NetWorker is never given a netns fd anyway).
        case setns
        /// unshare(CLONE_NEWNET): killed.
        case unshare
        /// ptrace(PTRACE_ATTACH) of the Supervisor: killed.
        case ptrace
        /// bind(2) of a TCP socket to 127.0.0.1:`port`: refused by Landlock (EACCES), which lets a
        /// NetWorker bind port 0 only, and only in in-pod mode with original source (the
        /// Supervisor binds every listener).
        case bindPort = "bind-port"
        /// setsockopt(SO_MARK, 0x539) on a TCP socket of its own: EPERM (CAP_NET_ADMIN, or
        /// CAP_NET_RAW since Linux 5.17, neither of which a worker has). The mark is istio-cni's bypass of the pods' traffic capture.
        case soMark = "so-mark"
        /// setsockopt(IP_TRANSPARENT) on a TCP socket of its own: EPERM (CAP_NET_ADMIN or
        /// CAP_NET_RAW): no binding of foreign source addresses on sockets it made itself.
        case ipTransparent = "ip-transparent"
        /// A datagram to 127.0.0.1:`port` through a nameserver socket the Supervisor connected
        /// (sendto with an address): the socket is connected, but the kernel sends it anyway and
        /// nothing filters the address. The known gap, pinned by a test.
        case dnsUpstreamElsewhere = "dns-upstream-elsewhere"
        /// listen(2) on a TCP socket never bound: the kernel binds it to an ephemeral port on
        /// every address, past Landlock (its bind rule does not see that bind) and seccomp (`listen`
        /// stays for the adopted listeners). The socket stays open; the known gap, pinned.
        case listenUnbound = "listen-unbound"
        /// bind(2) of the abstract unix name `ztunnel-wall-probe-<port>` to one end of a
        /// socketpair: killed where `bind` is not in the profile; in in-pod mode with original
        /// source (where it is) allowed, Landlock's abstract scope covering connect, not bind: a
        /// name squat in the node's namespace. The pair stays open; the known gap, pinned.
        case abstractBind = "abstract-bind"
        /// The CertWorker stats /etc/shadow (relayed): allowed, the known gap, pinned.
        case certStatFile = "cert-stat-file"
        /// The CertWorker opens /etc/hostname (relayed through the Supervisor).
        case certOpenFile = "cert-open-file"
        /// The CertWorker makes a directory under /tmp (relayed).
        case certMakeDirectory = "cert-make-dir"
        /// The CertWorker connects to 127.0.0.1:`port` (relayed): Landlock allows the CA's port only.
        case certConnect = "cert-connect"
        /// An `audit` frame, which only the CertWorker may send: the Supervisor kills the NetWorker.
        case sendAudit = "send-audit"
        /// Bytes that are no sign request, on the signer channel: the CertWorker closes the channel
        /// and reports a signer violation, and the Supervisor replaces the NetWorker.
        case badSign = "bad-sign"
        /// 64 well-formed sign requests for a handle that names no key: refused one by one, then
        /// the CertWorker closes the channel (its cutoff) and the Supervisor replaces the NetWorker.
        case refusedSigns = "refused-signs"
        /// podSocketsWanted for a pod that is not served: refused by the Supervisor (no sockets).
        case podSocketsUnserved = "pod-sockets-unserved"
        /// 100 podSocketsWanted of 64 at once: past the 4,096 a second budget (spent before the
        /// pod is looked up) the Supervisor refuses; the NetWorker is not killed for it.
        case podSocketsFlood = "pod-sockets-flood"
        /// 5,000 on-demand lookups at once (distinct keys, `/10.200.x.y`), then the xDS worker's
        /// open-file probe as a marker that they were all relayed or dropped: the Supervisor
        /// relays at most 1,024 a second and does not kill the NetWorker for the rest.
        case demandFlood = "demand-flood"
        /// `revocationsApplied(generation: port, accepted: true)`: a lie about CRL_PATH bytes the
        /// NetWorkers refused. The Supervisor believes it; the NetWorkers started later get those
        /// bytes, refuse them too, and so refuse every peer (fail closed).
        case crlAccept = "crl-accept"
        /// The same three in the xDS worker (relayed): Landlock allows XDS_ADDRESS's port only.
        case xdsOpenFile = "xds-open-file"
        case xdsMakeDirectory = "xds-make-dir"
        case xdsConnect = "xds-connect"
        /// The xDS worker publishes an unsealed memfd as its snapshot (relayed): it is killed.
        case xdsBadSnapshot = "xds-bad-snapshot"
        /// The CertWorker misuses its Supervisor channel (relayed; `FaultKind.certAuditReservedKey`
        /// and the next two): each gets it killed and replaced, and nothing it sent takes effect.
        case certAuditReservedKey = "cert-audit-reserved-key"
        case certAuditUnlistedEvent = "cert-audit-unlisted-event"
        case certShutdownRequest = "cert-shutdown-request"
        /// The CertWorker sends 2,000 audit events at once (relayed, `FaultKind.certAuditFlood`).
        case certAuditFlood = "cert-audit-flood"
        /// A UDP datagram to 127.0.0.1:`port` from the CertWorker or the xDS worker (relayed,
        /// `FaultKind.certUDPSocket`): a kill unless the worker looks names up.
        case certUDPSocket = "cert-udp-socket"
        case xdsUDPSocket = "xds-udp-socket"
        /// The CertWorker floods the NetWorkers' signer channels with status frames (relayed,
        /// `FaultKind.certSignerFlood`): they keep serving and are not killed.
        case certSignerFlood = "cert-signer-flood"
        case certIdentityFlood = "cert-identity-flood"
        /// The CertWorker signs client (or server) CertificateVerify inputs wrongly from now on
        /// (relayed, `FaultKind.certBadClientSignature`): the peer refuses the handshake.
        case certBadClientSignature = "cert-bad-client-signature"
        case certBadServerSignature = "cert-bad-server-signature"
        /// The xDS worker publishes 200 snapshots at once (relayed, `FaultKind.xdsSnapshotStorm`).
        case xdsSnapshotStorm = "xds-snapshot-storm"
        /// This NetWorker stops reading its signer channel, then sends sign requests (for a key it
        /// holds) until the channel is cut: the CertWorker, which never waits on a NetWorker,
        /// closes it (`signer_violation`) and the Supervisor replaces this NetWorker.
        case signerStall = "signer-stall"

        /// The faults another worker runs: relayed through the Supervisor as they are.
        var relayed: FaultKind? {
            switch self {
            case .certOpenFile: return .openFile
            case .certMakeDirectory: return .makeDirectory
            case .certConnect: return .connect
            case .xdsOpenFile: return .xdsOpenFile
            case .xdsMakeDirectory: return .xdsMakeDirectory
            case .xdsConnect: return .xdsConnect
            case .xdsBadSnapshot: return .xdsBadSnapshot
            case .xdsSnapshotStorm: return .xdsSnapshotStorm
            case .certAuditReservedKey: return .certAuditReservedKey
            case .certAuditUnlistedEvent: return .certAuditUnlistedEvent
            case .certShutdownRequest: return .certShutdownRequest
            case .certAuditFlood: return .certAuditFlood
            case .certUDPSocket: return .certUDPSocket
            case .xdsUDPSocket: return .xdsUDPSocket
            case .certSignerFlood: return .certSignerFlood
            case .certIdentityFlood: return .certIdentityFlood
            case .certBadClientSignature: return .certBadClientSignature
            case .certBadServerSignature: return .certBadServerSignature
            case .certStatFile: return .certStatFile
            default: return nil
            }
        }
    }

    /// Runs on the NetWorker's main (control) thread after the response is written.
    static func inject(_ kind: Kind, port: UInt16, channel: IPCSocket, signer: SignerClient, identities: IdentityTable) {
        if let relayed = kind.relayed {
            try? channel.send(WorkerMessage.faultRequest(relayed, port: port).frame())
            return
        }
        switch kind {
        case .seccomp:
            _ = CShims_forbidden_syscall()
        case .ipcGarbage:
            try? channel.sendRaw([0xde, 0xad, 0xbe, 0xef, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x01])
        case .cloneNamespace:
            report(kind, CShims_fault_clone_newuser())
        case .netlinkSocket:
            let fd = CShims_fault_netlink_socket()
            report(kind, fd)
            if fd >= 0 { close(Int32(fd)) }
        case .signalOther:
            report(kind, CShims_fault_signal_parent())
        case .udpSocket:
            closing(kind, CShims_fault_socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0))
        case .unixSocket:
            closing(kind, CShims_fault_socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0))
        case .rawSocket:
            closing(kind, CShims_fault_socket(AF_INET, Int32(SOCK_RAW.rawValue), Int32(IPPROTO_ICMP)))
        case .setns:
            report(kind, CShims_fault_setns())
        case .unshare:
            report(kind, CShims_fault_unshare())
        case .ptrace:
            report(kind, CShims_fault_ptrace_parent())
        case .bindPort:
            report(kind, CShims_fault_bind(port))
        case .abstractBind:
            var kept: [Int32] = [-1, -1]
            report(kind, CShims_fault_bind_abstract(port, &kept))  // the pair stays open (tests only)
        case .listenUnbound:
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { return report(kind, fd) }
            guard listen(fd, 1) == 0 else {
                report(kind, -1)
                close(fd)
                return
            }
            var address = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let named = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            report(kind, named == 0 ? Int(UInt16(bigEndian: address.sin_port)) : -1)
            // Left open (tests only): the test connects to it.
        case .dnsUpstreamElsewhere:
            let probe = Array("\(kind.rawValue) from pid \(getpid())".utf8)
            let found = DNSProxy.shared?.withUpstreamDescriptor { fd in
                report(kind, CShims_fault_sendto_loopback(fd, port, probe, probe.count))
            } ?? false
            if !found { Log.warn("fault \(kind.rawValue): no nameserver socket") }
        case .soMark, .ipTransparent:
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { return report(kind, fd) }
            defer { close(fd) }
            var value: Int32 = kind == .soMark ? 0x539 : 1
            let (level, option) = kind == .soMark ? (SOL_SOCKET, Int32(36) /* SO_MARK */) : (Int32(IPPROTO_IP), Int32(19) /* IP_TRANSPARENT */)
            report(kind, setsockopt(fd, level, option, &value, socklen_t(MemoryLayout<Int32>.size)))
        case .openFile:
            let fd = open("/etc/hostname", O_RDONLY | O_CLOEXEC)
            report(kind, Int(fd))
            if fd >= 0 { close(fd) }
        case .makeDirectory:
            report(kind, makeProbeDirectory())
        case .badSign:
            signer.sendRawForFaultInjection([0xde, 0xad, 0xbe, 0xef, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x01])
        case .refusedSigns:
            // A TLS 1.3 server CertificateVerify input over a 32-byte hash, as the oracle accepts.
            let content = [UInt8](repeating: 0x20, count: 64) + Array("TLS 1.3, server CertificateVerify".utf8) + [0]
                + [UInt8](repeating: 0xab, count: 32)
            for _ in 0..<64 {
                _ = signer.signAsync(handle: [UInt8](repeating: 0x5a, count: 32), content: content) { _ in }
            }
        case .sendAudit:
            try? channel.send(WorkerMessage.audit(event: "certificate_issued", fields: [("identity", "forged")]).frame())
        case .podSocketsUnserved, .podSocketsFlood:
            let request = WorkerMessage.podSocketsWanted(uid: "Kubernetes//Pod/nowhere/not-served", family: .ipv4,
                                                         count: PodSocketFamily.maxPerRequest).frame()
            // 200 requests of 64: over the 4,096 a second even when they straddle two or three of
            // the Supervisor's one-second windows (100 could split 50/50 on a slow machine).
            for _ in 0..<(kind == .podSocketsFlood ? 200 : 1) { try? channel.send(request) }
        case .crlAccept:
            try? channel.send(WorkerMessage.revocationsApplied(generation: UInt64(port), accepted: true).frame())
            Log.warn("fault crl-accept: sent generation \(port) as accepted")
        case .demandFlood:
            for index in 0..<5000 {
                try? channel.send(WorkerMessage.demand("/10.200.\(index / 256).\(index % 256)").frame())
            }
            try? channel.send(WorkerMessage.faultRequest(.xdsOpenFile, port: 0).frame())
        case .certOpenFile, .certMakeDirectory, .certConnect, .xdsOpenFile, .xdsMakeDirectory, .xdsConnect, .xdsBadSnapshot,
             .xdsSnapshotStorm, .certAuditReservedKey, .certAuditUnlistedEvent, .certShutdownRequest, .certAuditFlood,
             .certUDPSocket, .xdsUDPSocket, .certSignerFlood, .certIdentityFlood, .certBadClientSignature, .certBadServerSignature,
             .certStatFile:
            break  // relayed above
        case .signerStall:
            guard let handle = identities.anyHandle() else {
                return Log.error("fault signer-stall: no identity to sign with")
            }
            let content = [UInt8](repeating: 0x20, count: 64) + Array("TLS 1.3, server CertificateVerify".utf8) + [0]
                + [UInt8](repeating: 0xab, count: 32)
            let sent = signer.stallForFaultInjection(handle: handle, content: content, upTo: 20_000)
            Log.warn("fault signer-stall: \(sent) sign requests sent, none read")
        }
    }

    /// Makes (and, should that succeed, removes) /tmp/ztunnel-wall-probe-<pid>; returns mkdir's
    /// result with errno intact.
    static func makeProbeDirectory() -> Int32 {
        let path = "/tmp/ztunnel-wall-probe-\(getpid())"
        let rc = mkdir(path, 0o700)
        let error = errno
        if rc == 0 { rmdir(path) }
        errno = error
        return rc
    }

    /// Reports a socket fault, closing the socket should a wall have let it through.
    static func closing(_ kind: Kind, _ fd: Int) {
        report(kind, fd)
        if fd >= 0 { close(Int32(fd)) }
    }

    /// Says what a fault that was not killed did: the tests read this line.
    static func report<T: BinaryInteger>(_ kind: Kind, _ result: T) {
        let error = errno
        if result < 0 {
            Log.warn("fault \(kind.rawValue): refused: \(String(cString: strerror(error))) (errno \(error))")
        } else {
            Log.error("fault \(kind.rawValue): the wall let it through (result \(result))")
        }
    }
}
