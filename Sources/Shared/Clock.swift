#if canImport(Glibc)
import Glibc
#endif

/// Time as the daemon reports it: RFC 3339 UTC for humans and audit lines, a monotonic clock for
/// deadlines and backoff (wall time jumps; deadlines must not).
public enum Clock {
    /// Milliseconds on CLOCK_MONOTONIC.
    public static func monotonicMilliseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }

    /// Now, as `2026-11-21T23:15:00.123Z`.
    public static func rfc3339Now(fractional: Bool = true) -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return rfc3339(seconds: Int(ts.tv_sec), milliseconds: fractional ? Int(ts.tv_nsec) / 1_000_000 : nil)
    }

    /// Seconds since the epoch as RFC 3339 UTC; with `milliseconds`, three fractional digits.
    public static func rfc3339(seconds: Int, milliseconds: Int? = nil) -> String {
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        var text = "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))"
        text += "T\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2))"
        if let milliseconds { text += "." + pad(Int32(milliseconds), 3) }
        return text + "Z"
    }
}
