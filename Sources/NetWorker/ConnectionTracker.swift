import NIOCore
import Shared
#if canImport(Glibc)
import Glibc
#endif

/// The live proxied connections of this NetWorker, so a drain can wait for them to finish and
/// close what is left at the deadline.
final class ConnectionTracker: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    private var channels: [ObjectIdentifier: Channel] = [:]

    init() {
        pthread_mutex_init(&mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(&condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    var count: Int {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return channels.count
    }

    func track(_ channel: Channel) {
        let key = ObjectIdentifier(channel)
        pthread_mutex_lock(&mutex)
        channels[key] = channel
        pthread_mutex_unlock(&mutex)
        channel.closeFuture.whenComplete { _ in
            pthread_mutex_lock(&self.mutex)
            self.channels[key] = nil
            pthread_cond_broadcast(&self.condition)
            pthread_mutex_unlock(&self.mutex)
        }
    }

    /// Blocks the calling (control) thread until no connection is left or `deadline` (monotonic
    /// ms) passes. Returns the connections still open.
    func waitUntilEmpty(deadline: Int64) -> [Channel] {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        while !channels.isEmpty {
            let now = Clock.monotonicMilliseconds()
            if now >= deadline { break }
            var wake = timespec()
            clock_gettime(CLOCK_MONOTONIC, &wake)
            let target = Int64(wake.tv_sec) * 1000 + Int64(wake.tv_nsec) / 1_000_000 + (deadline - now)
            wake.tv_sec = Int(target / 1000)
            wake.tv_nsec = Int((target % 1000) * 1_000_000)
            pthread_cond_timedwait(&condition, &mutex, &wake)
        }
        return Array(channels.values)
    }
}
