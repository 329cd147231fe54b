#if canImport(Glibc)
import Glibc
#endif

/// A mutex with a condition variable on CLOCK_MONOTONIC, for plain threads that wait for
/// something with a deadline (a drain, a signature): wall-clock jumps cannot stretch or cut a wait.
public final class MonotonicCondition: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()

    public init() {
        pthread_mutex_init(&mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(&condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(&condition)
        pthread_mutex_destroy(&mutex)
    }

    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }

    /// Wakes every waiter. Call with the lock held (inside `withLock`).
    public func broadcast() { pthread_cond_broadcast(&condition) }

    /// With the lock held: waits until `isDone()` holds or the monotonic `deadline` (ms) passes.
    /// Returns whether `isDone()` held.
    public func wait(until deadline: Int64, for isDone: () -> Bool) -> Bool {
        while !isDone() {
            let now = Clock.monotonicMilliseconds()
            if now >= deadline { return false }
            let target = deadline
            var wake = timespec(tv_sec: Int(target / 1000), tv_nsec: Int((target % 1000) * 1_000_000))
            pthread_cond_timedwait(&condition, &mutex, &wake)
        }
        return true
    }
}
