import Testing
@testable import Mesh

/// The mesh model's sharded maps behave as a dictionary, copies included.
@Suite struct ShardedDictionaryTests {
    /// Random inserts, replacements and removals, each checked against a plain dictionary; a copy
    /// taken midway keeps its contents while the original changes (value semantics).
    @Test func itBehavesAsADictionary() {
        var sharded = ShardedDictionary<String, Int>()
        var plain: [String: Int] = [:]
        var generator = SeededGenerator(state: 7)  // a failure repeats
        var frozen: (ShardedDictionary<String, Int>, [String: Int])?
        for step in 0..<5000 {
            let key = "k\(Int.random(in: 0..<700, using: &generator))"
            switch Int.random(in: 0..<4, using: &generator) {
            case 0: #expect(sharded.removeValue(forKey: key) == plain.removeValue(forKey: key))
            case 1: sharded[key] = nil; plain[key] = nil
            case 2: #expect(sharded.updateValue(step, forKey: key) == plain.updateValue(step, forKey: key))
            default: sharded[key, default: 0] += 1; plain[key, default: 0] += 1
            }
            #expect(sharded.count == plain.count && sharded[key] == plain[key])
            if step == 2500 { frozen = (sharded, plain) }
        }
        #expect(Dictionary(uniqueKeysWithValues: sharded.map { ($0.key, $0.value) }) == plain)
        #expect(Set(sharded.keys) == Set(plain.keys) && sharded.values.sorted() == plain.values.sorted())
        #expect(sharded.isEmpty == plain.isEmpty)
        if let (copy, expected) = frozen {
            #expect(Dictionary(uniqueKeysWithValues: copy.map { ($0.key, $0.value) }) == expected)
            #expect(copy.count == expected.count)
        }
    }

    /// Keys that are one Swift string in two byte forms (the model's names come from istiod's
    /// bytes) are one entry, as in a Dictionary: a shard chosen from the bytes would split them.
    @Test func canonicallyEquivalentKeysAreOneEntry() {
        var sharded = ShardedDictionary<String, Int>()
        sharded["ns/\u{e9}"] = 1
        sharded["ns/e\u{301}"] = 2
        sharded["ns/K"] = 3
        sharded["ns/\u{212a}"] = 4
        #expect(sharded.count == 2 && sharded["ns/\u{e9}"] == 2 && sharded["ns/K"] == 4)
        #expect(sharded.removeValue(forKey: "ns/e\u{301}") == 2 && sharded.count == 1)
    }

    struct SeededGenerator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9e37_79b9_7f4a_7c15
            var z = state
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            return z ^ (z >> 31)
        }
    }

    /// Equal contents are equal whatever the order they were made in; a difference is not.
    @Test func equalityIsByContents() {
        var a = ShardedDictionary<String, Int>(), b = ShardedDictionary<String, Int>()
        for i in 0..<300 { a["k\(i)"] = i }
        for i in (0..<300).reversed() { b["k\(i)"] = i }
        #expect(a == b)
        b["k7"] = 8
        #expect(a != b)
        b["k7"] = 7
        b["extra"] = 0
        #expect(a != b)
        b["extra"] = nil
        #expect(a == b)
    }
}
