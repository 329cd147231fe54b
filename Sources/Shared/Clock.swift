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

    /// Seconds since the epoch (wall clock).
    public static func epochSeconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec)
    }

    /// Now, as `2026-11-21T23:15:00.123Z`.
    public static func rfc3339Now() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return rfc3339(seconds: Int(ts.tv_sec), milliseconds: Int(ts.tv_nsec) / 1_000_000)
    }

    /// Seconds since the epoch as RFC 3339 UTC; with `milliseconds`, three fractional digits.
    /// Computed here rather than with gmtime_r, which makes glibc read /etc/localtime: a sandboxed
    /// worker has no business opening files to print a time.
    public static func rfc3339(seconds: Int, milliseconds: Int? = nil) -> String {
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let secondOfDay = seconds - days * 86_400
        let (year, month, day) = civilDate(daysSinceEpoch: days)
        func pad(_ value: Int, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        var text = "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))"
        text += "T\(pad(secondOfDay / 3600, 2)):\(pad(secondOfDay / 60 % 60, 2)):\(pad(secondOfDay % 60, 2))"
        if let milliseconds { text += "." + pad(milliseconds, 3) }
        return text + "Z"
    }

    /// The proleptic Gregorian date of a day count since 1970-01-01 (the days-from-civil inverse).
    static func civilDate(daysSinceEpoch: Int) -> (year: Int, month: Int, day: Int) {
        let z = daysSinceEpoch + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthIndex + 2) / 5 + 1
        let month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}
