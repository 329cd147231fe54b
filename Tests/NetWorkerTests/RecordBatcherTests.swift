import Testing
@testable import NetWorker

/// nghttp2's output grouped into TLS records: small frames share one, a large frame has its
/// own, and nothing ever overtakes what came before it.
@Suite struct RecordBatcherTests {
    /// Feeds chunks (each filled with its own index) and returns the records sealed.
    static func records(_ sizes: [Int], failAt: Int? = nil) -> (ok: Bool, records: [[UInt8]]) {
        var batcher = RecordBatcher()
        var sealed: [[UInt8]] = []
        let seal: (UnsafeRawBufferPointer) -> Bool = { bytes in
            if sealed.count == failAt { return false }
            sealed.append(Array(bytes))
            return true
        }
        for (index, size) in sizes.enumerated() {
            let chunk = [UInt8](repeating: UInt8(index), count: size)
            guard chunk.withUnsafeBytes({ batcher.add($0, seal: seal) }) else { return (false, sealed) }
        }
        return (batcher.finish(seal: seal), sealed)
    }

    /// The bytes of every record, in order, are the bytes fed, in order.
    static func inOrder(_ sizes: [Int]) -> Bool {
        let fed = sizes.enumerated().flatMap { [UInt8](repeating: UInt8($0.offset), count: $0.element) }
        return records(sizes).records.flatMap { $0 } == fed
    }

    @Test func smallFramesShareOneRecord() {
        let (ok, records) = Self.records([9 + 4, 13, 17, 9 + 100])
        #expect(ok && records.map(\.count) == [152])
    }

    /// A response's HEADERS then 10 KB of DATA in one flush: the HEADERS first (the bug this
    /// type exists to prevent sent the DATA ahead of it).
    @Test func aLargeFrameNeverOvertakesTheSmallOnesBeforeIt() {
        let (ok, records) = Self.records([40, 10_009])
        #expect(ok && records.map(\.count) == [40, 10_009])
        #expect(records.first?.allSatisfy { $0 == 0 } == true)
    }

    @Test func aFullDataFrameIsARecordOfItsOwn() {
        let (ok, records) = Self.records([13, 16_384, 16_384, 13, 13])
        #expect(ok && records.map(\.count) == [13, 16_384, 16_384, 26])
    }

    @Test func gatheringStopsAtARecordsPlaintext() {
        let (ok, records) = Self.records(Array(repeating: 8_000, count: 5))
        #expect(ok && records.map(\.count) == [16_000, 16_000, 8_000])
        #expect(records.allSatisfy { $0.count <= RecordBatcher.recordPlaintext })
    }

    @Test(arguments: [[1], [8_191, 8_192], [8_192, 1, 8_191, 16_384], [5_000, 5_000, 5_000, 9_000, 1], [16_384, 16_384]])
    func outputOrderIsInputOrder(sizes: [Int]) {
        #expect(Self.inOrder(sizes))
    }

    @Test func aFailedSealIsReported() {
        #expect(!Self.records([40, 10_009], failAt: 0).ok)  // the gathered HEADERS
        #expect(!Self.records([40, 10_009], failAt: 1).ok)  // the large frame
        #expect(!Self.records([40], failAt: 0).ok)          // at the end
    }
}
