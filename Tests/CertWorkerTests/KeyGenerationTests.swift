import CKeyHandle
import Testing
import OpenSSLSupport
@testable import CertWorker

/// Keys are made the same whether or not an ENGINE serves EC in the process: the unit tests run
/// in one process with the NetWorker's (`ECPublicKeyEngineTests` installs it), and a NIST curve
/// name that only the default provider knows made every key generation after it fail.
@Suite struct KeyGenerationTests {
    @Test func aP256KeyIsMadeWhereTheECEngineIsInstalled() throws {
        #expect(CKeyHandle_decode_ec_public_keys_directly() == 1)
        let key = try KeyAndCSR.generateKey()
        let csr = try KeyAndCSR.makeCSR(for: try #require(SpiffeId("spiffe://cluster.local/ns/a/sa/b")), key: key)
        #expect(csr.hasPrefix("-----BEGIN CERTIFICATE REQUEST-----"))
    }
}
