/// How many data-plane (event-loop) threads, sized as upstream ztunnel sizes its workers
/// (ISTIO_COMPAT §18), then split among the NetWorkers, each getting at least one.
///
/// `ZTUNNEL_WORKER_THREADS` is a number (0: one per CPU) or `N%` of the CPUs. Unset, an explicit
/// CPU limit (`ZTUNNEL_RESOURCE_CPU_LIMIT`) wins, raised to the CPU request; without one,
/// `max(ceil(CPUs / 4), request, 2)`. The CPUs are those the process may run on, capped by
/// `ZTUNNEL_CPU_LIMIT` (the upstream chart sets it from `limits.cpu`, which is the node's
/// allocatable CPUs when the pod has no limit): a pod limited to 2 CPUs on a 64-CPU node runs
/// 2 threads, not 16 or 64 that the kernel would throttle.
public enum WorkerThreads {
    public static let maxThreads = 256

    public static func problem(with value: String) -> String? {
        if value.hasSuffix("%") {
            guard let percent = Int(value.dropLast()), (1...100).contains(percent) else {
                return "expected a percentage of the CPUs from 1% to 100%, got \"\(value)\""
            }
            return nil
        }
        guard let count = Int(value), (0...maxThreads).contains(count) else {
            return "expected a number of threads from 0 (one per CPU) to \(maxThreads), or N%, got \"\(value)\""
        }
        return nil
    }

    /// The threads in all: `setting` is ZTUNNEL_WORKER_THREADS ("" when unset), `cpus` those the
    /// process may run on, `cpuLimit` ZTUNNEL_CPU_LIMIT, `limit` and `request` the pod's explicit
    /// CPU limit and request (ZTUNNEL_RESOURCE_CPU_*), all in whole CPUs.
    public static func total(setting: String, cpus: Int, cpuLimit: Int? = nil, limit: Int?, request: Int?) -> Int {
        let cpus = max(1, min(cpus, cpuLimit ?? cpus))
        let total: Int
        if setting.hasSuffix("%"), let percent = Int(setting.dropLast()) {
            total = (cpus * percent + 99) / 100
        } else if let count = Int(setting) {
            total = count == 0 ? cpus : count
        } else if let limit, limit > 0 {
            total = max(limit, request ?? 0)
        } else {
            total = max((cpus + 3) / 4, request ?? 0, 2)
        }
        return min(max(1, total), maxThreads)
    }

    /// A Kubernetes CPU quantity as whole CPUs, rounded up: `2`, `1.5` (2), `500m` (1); nil when
    /// it is none (or not between 1 m and 4096 CPUs).
    public static func cpus(_ quantity: String) -> Int? {
        var millis: Int
        if quantity.hasSuffix("m") {
            guard let value = Int(quantity.dropLast()) else { return nil }
            millis = value
        } else if let dot = quantity.firstIndex(of: ".") {
            let whole = quantity[..<dot], fraction = quantity[quantity.index(after: dot)...]
            guard whole.allSatisfy({ $0.isASCII && $0.isNumber }), let units = whole.isEmpty ? 0 : Int(whole), units <= 4096, !fraction.isEmpty, fraction.count <= 3,
                  fraction.allSatisfy({ $0.isASCII && $0.isNumber }), let part = Int(fraction) else { return nil }
            millis = units * 1000 + part * [100, 10, 1][fraction.count - 1]
        } else {
            guard let units = Int(quantity), (0...4096).contains(units) else { return nil }
            millis = units * 1000
        }
        guard millis >= 1, millis <= 4096 * 1000 else { return nil }
        return (millis + 999) / 1000
    }

    /// One NetWorker's share of `total` (rounded up, at least one).
    public static func perNetWorker(total: Int, netWorkers: Int) -> Int {
        max(1, (total + max(1, netWorkers) - 1) / max(1, netWorkers))
    }
}
