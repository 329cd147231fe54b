import FuzzDriver
import OpenSSLSupport
#if canImport(Glibc)
import Glibc
#endif

/// libFuzzer entry point for CRL_PATH's parser (`RevocationList`): any bytes, as the file. Nothing
/// may trap; lists that parse are asked about a fixed chain (a root and a leaf it issued), which
/// must not trap either, and parsing the same bytes again gives the same answer.
let chain: [Certificate] = {
    // A fixed root and leaf (Tests/fixtures/crl, read from the repository's root, where
    // Fuzz/run.sh runs), so a list of that root can match.
    func read(_ name: String) -> String {
        guard let file = fopen("Tests/fixtures/crl/\(name).pem", "r") else { fatalError("run from the repository's root") }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while case let count = fread(&buffer, 1, buffer.count, file), count > 0 { bytes += buffer.prefix(count) }
        return String(decoding: bytes, as: UTF8.self)
    }
    guard let chain = try? Certificate.parseChain(pem: read("leaf1") + read("root")) else { fatalError("the fixture chain does not parse") }
    return chain
}()

func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let list = try? RevocationList(parsing: bytes) else { return 0 }
    precondition(list.count <= RevocationList.maxLists, "more lists than the bound")
    let answer = list.revoked(in: chain)
    let again = try? RevocationList(parsing: bytes)
    precondition(again?.revoked(in: chain) == answer, "the same bytes gave another answer")
    _ = list.revoked(in: Array(chain.prefix(1)))
    return 0
}

runFuzzer { data, size in fuzzOneInput(data, size) }
