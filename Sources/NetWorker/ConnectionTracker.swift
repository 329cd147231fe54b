import NIOCore
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// The live proxied connections of this NetWorker, so a drain can wait for them to finish and
/// close what is left at the deadline.
final class ConnectionTracker: @unchecked Sendable {
    private let condition = MonotonicCondition()
    private var channels: [ObjectIdentifier: Channel] = [:]

    var count: Int { condition.withLock { channels.count } }

    func track(_ channel: Channel) {
        let key = ObjectIdentifier(channel)
        condition.withLock { channels[key] = channel }
        channel.closeFuture.whenComplete { _ in
            self.condition.withLock {
                self.channels[key] = nil
                self.condition.broadcast()
            }
        }
    }

    /// Tells every live connection that the NetWorker drains (HBONE connections send GOAWAY).
    func announceDrain() {
        let live = condition.withLock { Array(channels.values) }
        for channel in live { channel.pipeline.fireUserInboundEventTriggered(DrainRequested()) }
    }

    /// Blocks the calling (control) thread until no connection is left or `deadline` (monotonic
    /// ms) passes. Returns the connections still open.
    func waitUntilEmpty(deadline: Int64) -> [Channel] {
        condition.withLock {
            _ = condition.wait(until: deadline) { channels.isEmpty }
            return Array(channels.values)
        }
    }
}
