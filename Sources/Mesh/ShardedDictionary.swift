/// A dictionary kept as 256 smaller ones, chosen by the key's hash. The mesh model is a value
/// that connections read while the next version is made from a copy of it: with one dictionary,
/// changing one workload of 20,000 copied all 20,000 (the old version is still referenced), and
/// freeing the old version released them all again. Here a change copies the array of shards
/// (256 references) and the one shard it touches (about 1/256 of the entries); the other shards
/// stay shared between the versions.
///
/// Iteration and `keys`/`values` follow the shards, not insertion or key order (as with
/// `Dictionary`, whose order is not defined either); callers that show or compare sort.
public struct ShardedDictionary<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private static var shardCount: Int { 256 }
    private var shards: [[Key: Value]]
    public private(set) var count = 0

    public init() { shards = Array(repeating: [:], count: Self.shardCount) }

    @inline(__always)
    private static func shard(of key: Key) -> Int { Int(UInt(bitPattern: key.hashValue) % UInt(shardCount)) }

    public var isEmpty: Bool { count == 0 }

    public subscript(key: Key) -> Value? {
        get { shards[Self.shard(of: key)][key] }
        set {
            if let newValue { updateValue(newValue, forKey: key) } else { removeValue(forKey: key) }
        }
    }

    public subscript(key: Key, default defaultValue: @autoclosure () -> Value) -> Value {
        get { self[key] ?? defaultValue() }
        set { updateValue(newValue, forKey: key) }
    }

    @discardableResult
    public mutating func updateValue(_ value: Value, forKey key: Key) -> Value? {
        let old = shards[Self.shard(of: key)].updateValue(value, forKey: key)
        if old == nil { count += 1 }
        return old
    }

    @discardableResult
    public mutating func removeValue(forKey key: Key) -> Value? {
        let old = shards[Self.shard(of: key)].removeValue(forKey: key)
        if old != nil { count -= 1 }
        return old
    }

    public var keys: [Key] { shards.flatMap(\.keys) }
    public var values: [Value] { shards.flatMap(\.values) }
}

extension ShardedDictionary: Sequence {
    public typealias Element = (key: Key, value: Value)

    public struct Iterator: IteratorProtocol {
        private let shards: [[Key: Value]]
        private var shard = 0
        private var inner: Dictionary<Key, Value>.Iterator?

        init(_ shards: [[Key: Value]]) { self.shards = shards }

        public mutating func next() -> (key: Key, value: Value)? {
            while shard < shards.count {
                if inner == nil { inner = shards[shard].makeIterator() }
                if let element = inner!.next() { return element }  // set just above
                inner = nil
                shard += 1
            }
            return nil
        }
    }

    public func makeIterator() -> Iterator { Iterator(shards) }
    public var underestimatedCount: Int { count }
}

/// Equal when they hold the same keys and values: the same key is in the same shard of both
/// (one process, one hash seed), so shards compare one by one.
extension ShardedDictionary: Equatable where Value: Equatable {
    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.count == rhs.count && lhs.shards == rhs.shards }
}
