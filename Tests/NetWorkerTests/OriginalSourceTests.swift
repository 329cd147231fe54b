import NIOCore
import Testing
@testable import NetWorker

/// Which address a connection to an application is bound to in in-pod mode (original source).
@Suite struct OriginalSourceTests {
    private func address(_ ip: String, _ port: Int = 0) throws -> SocketAddress { try SocketAddress(ipAddress: ip, port: port) }

    @Test func theClientsAddressWithPortZeroInTheDestinationsFamily() throws {
        let bound = OriginalSource.bindAddress(client: try address("10.250.0.2", 41234), destination: try address("10.250.0.3", 8080))
        #expect(bound?.ipAddress == "10.250.0.2" && bound?.port == 0)
        // A dual-stack listener sees an IPv4 client as ::ffff:a.b.c.d.
        let mapped = OriginalSource.bindAddress(client: try address("::ffff:10.250.0.2", 41234), destination: try address("10.250.0.3", 8080))
        #expect(mapped?.ipAddress == "10.250.0.2" && mapped?.protocol == .inet)
        let v6 = OriginalSource.bindAddress(client: try address("fd00::2", 1), destination: try address("fd00::3", 80))
        #expect(v6?.ipAddress == "fd00::2" && v6?.port == 0)
    }

    /// Not bound: the pod calling itself, a loopback application tunnel, families that differ.
    @Test func noBindWhereUpstreamMakesNone() throws {
        #expect(OriginalSource.bindAddress(client: try address("10.250.0.3", 5), destination: try address("10.250.0.3", 8080)) == nil)
        #expect(OriginalSource.bindAddress(client: try address("10.250.0.2", 5), destination: try address("127.0.0.1", 8080)) == nil)
        #expect(OriginalSource.bindAddress(client: try address("fd00::2", 5), destination: try address("::1", 8080)) == nil)
        #expect(OriginalSource.bindAddress(client: try address("fd00::2", 5), destination: try address("10.250.0.3", 8080)) == nil)
        #expect(OriginalSource.bindAddress(client: try address("10.250.0.2", 5), destination: try address("fd00::3", 8080)) == nil)
    }
}
