import Testing
@testable import IPC
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// The wire itself, over a real socketpair in this process: fd passing, refusals, and that fds on
/// refused messages are closed rather than leaked.
@Suite struct IPCSocketTests {
    func isOpen(_ fd: Int32) -> Bool { fcntl(fd, F_GETFD) != -1 }

    @Test func listenerFdArrivesAndWorks() throws {
        let (supervisor, worker) = try IPCSocket.pair()
        let (left, right) = try Syscall.socketpair(type: Int32(SOCK_STREAM.rawValue))
        let passed = OwnedFD(takingOwnershipOf: left)
        let peer = OwnedFD(takingOwnershipOf: right)
        try supervisor.send(SupervisorMessage.listener(name: "socks5", fd: passed).frame())
        guard case .frame(let frame) = try worker.receive(),
              case .listener(let name, let fd) = try SupervisorMessage.decode(frame) else {
            Issue.record("no listener"); return
        }
        #expect(name == "socks5")
        #expect(fd.rawValue != passed.rawValue)
        #expect(fcntl(fd.rawValue, F_GETFD) & FD_CLOEXEC != 0)  // MSG_CMSG_CLOEXEC
        // The received fd is the same socket: bytes written to it arrive at the peer.
        try Syscall.writeAll(fd.rawValue, [1, 2, 3])
        var buffer = [UInt8](repeating: 0, count: 3)
        #expect(read(peer.rawValue, &buffer, 3) == 3)
        #expect(buffer == [1, 2, 3])
    }

    @Test func theSupervisorDefusesLingerOnEveryFdItReceives() throws {
        // A socket with SO_LINGER on would hold close(2) for its linger time if it had unsent
        // data: a worker could stall the Supervisor by sending one with a refused frame.
        func lingering(_ fd: Int32) -> Int32 {
            var value = linger()
            var length = socklen_t(MemoryLayout<linger>.size)
            getsockopt(fd, SOL_SOCKET, SO_LINGER, &value, &length)
            return value.l_onoff
        }
        for defusing in [false, true] {
            let (worker, supervisor) = try IPCSocket.pair()
            let tcp = OwnedFD(takingOwnershipOf: socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0))
            var on = linger(l_onoff: 1, l_linger: 30)
            setsockopt(tcp.rawValue, SOL_SOCKET, SO_LINGER, &on, socklen_t(MemoryLayout<linger>.size))
            try worker.send(WorkerMessage.meshSnapshot(generation: 1, fd: tcp).frame())
            guard case .frame(let frame) = try supervisor.receive(defusingFds: defusing) else { Issue.record("no frame"); return }
            #expect(lingering(frame.fds[0].rawValue) == (defusing ? 0 : 1))
        }
    }

    @Test func fdOnAMessageThatCarriesNoneIsRefusedAndClosed() throws {
        let (worker, supervisor) = try IPCSocket.pair()
        // Smuggle one end of a stream pair and keep no other copy of it: once the receiver closes
        // what arrived, the other end reads EOF; if the receiver leaked it, the read would block.
        let (smuggledRaw, witnessRaw) = try Syscall.socketpair(type: Int32(SOCK_STREAM.rawValue))
        let witness = OwnedFD(takingOwnershipOf: witnessRaw)
        do {
            let smuggled = OwnedFD(takingOwnershipOf: smuggledRaw)
            try worker.sendRaw(try WorkerMessage.ready.frame().encodedBytes(), fds: [smuggled.rawValue])
        }  // our copy is closed here; only the one in flight is left
        #expect(throws: IPCError.fdCountMismatch(declared: 0, received: 1)) { try supervisor.receive() }
        var byte: UInt8 = 0
        #expect(recv(witness.rawValue, &byte, 1, Int32(MSG_DONTWAIT)) == 0, "the refused frame's fd was not closed")
    }

    @Test func garbageIsRefusedNotTrapped() throws {
        let (worker, supervisor) = try IPCSocket.pair()
        try worker.sendRaw([0xde, 0xad, 0xbe, 0xef])
        #expect(throws: IPCError.self) { try supervisor.receive() }
        try worker.sendRaw([0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0, 0xff])
        #expect(throws: IPCError.lengthMismatch(declared: 0, actual: 1)) { try supervisor.receive() }
    }

    @Test func oversizePacketIsRefused() throws {
        let (worker, supervisor) = try IPCSocket.pair()
        var size = Int32(256 * 1024)
        setsockopt(worker.fd.rawValue, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(supervisor.fd.rawValue, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        try worker.sendRaw([UInt8](repeating: 7, count: IPCFrame.maxFrame + 100))
        #expect(throws: IPCError.oversize(length: IPCFrame.maxFrame + 1, max: IPCFrame.maxFrame)) { try supervisor.receive() }
    }

    @Test func closedPeerIsReported() throws {
        let (worker, supervisor) = try IPCSocket.pair()
        worker.fd.close()
        #expect(throws: IPCError.closed) { try supervisor.receive() }
    }

    @Test func nonBlockingReceiveReportsWouldBlock() throws {
        let (worker, supervisor) = try IPCSocket.pair()
        try withExtendedLifetime(worker) {
            guard case .wouldBlock = try supervisor.receive(blocking: false) else {
                Issue.record("expected wouldBlock"); return
            }
        }
    }
}
