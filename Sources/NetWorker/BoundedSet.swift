import Shared

/// A set that stops growing at `limit`: `admit` is true for a member, or a newcomer while there
/// is room.
final class BoundedSet: @unchecked Sendable {
    private let lock = Mutex()
    private var members: Set<String> = []
    private let limit: Int

    init(limit: Int) { self.limit = limit }

    func admit(_ member: String) -> Bool { lock.withLock { members.contains(member) || add(member) } }

    /// True only when `member` is new and there was room for it.
    func insertedNew(_ member: String) -> Bool { lock.withLock { !members.contains(member) && add(member) } }

    private func add(_ member: String) -> Bool {
        guard members.count < limit else { return false }
        members.insert(member)
        return true
    }
}
