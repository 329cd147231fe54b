import FuzzDriver
import OpenSSLSupport

/// libFuzzer entry point for CRL_PATH's parser (`RevocationList`): any bytes, as the file. Nothing
/// may trap; lists that parse are asked about a fixed chain (a root and a leaf it issued), which
/// must not trap either, and parsing the same bytes again gives the same answer.
let chain: [Certificate] = {
    // A fixed root and leaf (scripts/make-crl-fixtures.sh's), so a list of that root can match.
    (try? Certificate.parseChain(pem: leafPEM + "\n" + rootPEM)) ?? []
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
