/// Sums the counters of several NetWorkers (what each published in its counter region) into
/// the one set a scrape must show wherever it lands. This worker's own lines are trusted and
/// define the families, their comments and their order; a peer's text is another process's bytes,
/// so from it only samples are taken, and only those of a family we have, with labels of the
/// strict `{name="value",...}` shape and a non-negative value: an integer, or a decimal with at
/// most 9 fractional digits (a histogram's `_sum`), added exactly in nanounits. Sums saturate. A
/// histogram family's samples are its `_bucket`, `_count` and `_sum` series. The output keeps
/// each family together: its comments, then its series in first-seen order.
/// Pure Swift, no imports (fuzzed as `metrics_merge`).
enum MetricsMerge {
    /// The most lines taken from one peer and the longest line.
    static let maxLinesPerText = 200_000
    static let maxLineBytes = 4096

    struct Sample {
        let series: Substring
        let name: Substring
        /// The integer part.
        let value: UInt64
        /// The fraction in billionths, for a decimal value; nil for an integer.
        var nanos: UInt64? = nil
    }

    /// A series' sum: integer part, billionths, and whether it is written as a decimal.
    struct Sum {
        var value: UInt64 = 0
        var nanos: UInt64 = 0
        var isDecimal = false

        mutating func add(_ sample: Sample) {
            let (total, overflow) = value.addingReportingOverflow(sample.value)
            value = overflow ? .max : total
            if let fraction = sample.nanos {
                isDecimal = true
                nanos += fraction
                if nanos >= 1_000_000_000 {
                    nanos -= 1_000_000_000
                    value = value == .max ? .max : value + 1
                }
            }
        }

        var text: String { isDecimal ? MetricsMerge.decimal(value, billionths: nanos) : String(value) }
    }

    /// `whole.billionths` with 9 fractional digits, as sums of seconds are written (and read back
    /// exactly by `parseSample`).
    static func decimal(_ whole: UInt64, billionths: UInt64) -> String {
        let digits = String(billionths % 1_000_000_000)
        return "\(whole).\(String(repeating: "0", count: 9 - digits.count))\(digits)"
    }

    /// Nanoseconds as decimal seconds.
    static func seconds(nanoseconds: UInt64) -> String {
        decimal(nanoseconds / 1_000_000_000, billionths: nanoseconds % 1_000_000_000)
    }

    static func merge(own: [String], peers: [[UInt8]]) -> [String] {
        var families: [String] = []
        var comments: [String: [String]] = [:]
        var series: [String: [String]] = [:]
        var sums: [String: Sum] = [:]
        /// Family → its TYPE: a counter's samples are `<family>_total`, anything else's `<family>`.
        var types: [String: Substring] = [:]

        func family(of name: Substring) -> String? {
            if name.hasSuffix("_total"), types[String(name.dropLast(6))] == "counter" { return String(name.dropLast(6)) }
            for suffix in ["_bucket", "_count", "_sum"] where name.hasSuffix(suffix) {
                let base = String(name.dropLast(suffix.count))
                if types[base] == "histogram" { return base }
            }
            if let type = types[String(name)], type != "counter", type != "histogram" { return String(name) }
            return nil
        }
        func add(_ sample: Sample, family: String) {
            let key = String(sample.series)
            if sums[key] != nil {
                sums[key]!.add(sample)
            } else {
                var sum = Sum()
                sum.add(sample)
                sums[key] = sum
                if series[family] == nil && comments[family] == nil { families.append(family) }
                series[family, default: []].append(key)
            }
        }

        // Our own lines: comments name the families; samples are ours, taken as they are.
        for line in own where line.hasPrefix("# ") {
            let words = line.split(separator: " ", maxSplits: 3)
            guard words.count >= 3, words[1] == "HELP" || words[1] == "TYPE" else { continue }
            let name = String(words[2])
            if comments[name] == nil && series[name] == nil { families.append(name) }
            comments[name, default: []].append(line)
            if words[1] == "TYPE", words.count >= 4 { types[name] = words[3] }
        }
        for line in own where !line.hasPrefix("#") {
            guard let sample = parseSample(Substring(line)) else { continue }
            add(sample, family: family(of: sample.name) ?? String(sample.name))
        }
        // Peers: samples of our families only; their comments are not taken.
        for text in peers {
            var taken = 0
            for line in String(decoding: text, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true) {
                taken += 1
                if taken > maxLinesPerText { break }
                guard !line.hasPrefix("#"), let sample = parseSample(line), let family = family(of: sample.name) else { continue }
                add(sample, family: family)
            }
        }
        var out: [String] = []
        for family in families {
            out += comments[family] ?? []
            for key in series[family] ?? [] { out.append("\(key) \((sums[key] ?? Sum()).text)") }
        }
        return out
    }

    /// `name{label="value",...} 123` or `... 0.000123` (labels optional), strictly; nil for
    /// anything else.
    static func parseSample(_ line: Substring) -> Sample? {
        guard !line.isEmpty, line.utf8.count <= maxLineBytes else { return nil }
        let bytes = Array(line.utf8)
        var index = 0
        func isNameStart(_ byte: UInt8) -> Bool { (byte | 0x20 >= 0x61 && byte | 0x20 <= 0x7a) || byte == 0x5f || byte == 0x3a }
        func isNameByte(_ byte: UInt8) -> Bool { isNameStart(byte) || (byte >= 0x30 && byte <= 0x39) }
        guard isNameStart(bytes[0]) else { return nil }
        while index < bytes.count && isNameByte(bytes[index]) { index += 1 }
        let nameEnd = index
        if index < bytes.count && bytes[index] == 0x7b {  // {
            index += 1
            var first = true
            while true {
                guard index < bytes.count else { return nil }
                if bytes[index] == 0x7d { index += 1; break }  // }
                if !first {
                    guard bytes[index] == 0x2c else { return nil }  // ,
                    index += 1
                }
                first = false
                guard index < bytes.count, isNameStart(bytes[index]), bytes[index] != 0x3a else { return nil }
                while index < bytes.count && isNameByte(bytes[index]) && bytes[index] != 0x3a { index += 1 }
                guard index + 1 < bytes.count, bytes[index] == 0x3d, bytes[index + 1] == 0x22 else { return nil }  // ="
                index += 2
                var closed = false
                while index < bytes.count {
                    let byte = bytes[index]
                    if byte == 0x22 { closed = true; index += 1; break }
                    if byte < 0x20 || byte == 0x7f { return nil }
                    if byte == 0x5c {  // \ escapes \, " and n only
                        guard index + 1 < bytes.count, [0x5c, 0x22, 0x6e].contains(bytes[index + 1]) else { return nil }
                        index += 2
                        continue
                    }
                    index += 1
                }
                guard closed else { return nil }
            }
        }
        guard index < bytes.count, bytes[index] == 0x20 else { return nil }
        let seriesEnd = index
        var digits = bytes[(index + 1)...]
        var nanos: UInt64?
        if let point = digits.firstIndex(of: 0x2e) {  // .
            let fraction = digits[(point + 1)...]
            guard !fraction.isEmpty, fraction.count <= 9, fraction.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
            nanos = fraction.reduce(0) { $0 * 10 + UInt64($1 - 0x30) }
            for _ in fraction.count..<9 { nanos! *= 10 }
            digits = digits[..<point]
        }
        guard !digits.isEmpty, digits.count <= 20, digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let value = UInt64(String(decoding: digits, as: UTF8.self)) else { return nil }
        let utf8 = line.utf8
        let seriesText = Substring(utf8[utf8.startIndex..<utf8.index(utf8.startIndex, offsetBy: seriesEnd)])
        let nameText = Substring(utf8[utf8.startIndex..<utf8.index(utf8.startIndex, offsetBy: nameEnd)])
        return Sample(series: seriesText, name: nameText, value: value, nanos: nanos)
    }
}
