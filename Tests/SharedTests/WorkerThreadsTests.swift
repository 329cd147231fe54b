import Testing
@testable import Shared

/// Data-plane threads as upstream sizes them (`WorkerThreads`, ISTIO_COMPAT §18).
@Suite struct WorkerThreadsTests {
    @Test func sizedAsUpstream() {
        // Explicit: a number, 0 = every CPU, N% rounded up.
        #expect(WorkerThreads.total(setting: "3", cpus: 64, limit: 2, request: nil) == 3)
        #expect(WorkerThreads.total(setting: "0", cpus: 64, limit: 2, request: nil) == 64)
        #expect(WorkerThreads.total(setting: "10%", cpus: 64, limit: nil, request: nil) == 7)
        #expect(WorkerThreads.total(setting: "1%", cpus: 2, limit: nil, request: nil) == 1)
        // Auto: the CPU limit wins, raised to the request; else max(ceil(cpus/4), request, 2).
        #expect(WorkerThreads.total(setting: "", cpus: 64, limit: 2, request: nil) == 2)
        #expect(WorkerThreads.total(setting: "", cpus: 64, limit: 2, request: 4) == 4)
        #expect(WorkerThreads.total(setting: "", cpus: 64, limit: nil, request: nil) == 16)
        #expect(WorkerThreads.total(setting: "", cpus: 64, limit: nil, request: 20) == 20)
        #expect(WorkerThreads.total(setting: "", cpus: 2, limit: nil, request: nil) == 2)
        #expect(WorkerThreads.total(setting: "", cpus: 4096, limit: nil, request: nil) == WorkerThreads.maxThreads)
        // ZTUNNEL_CPU_LIMIT caps the CPUs counted (a node's 64 when the pod has no limit: 16).
        #expect(WorkerThreads.total(setting: "", cpus: 64, cpuLimit: 2, limit: nil, request: nil) == 2)
        #expect(WorkerThreads.total(setting: "", cpus: 64, cpuLimit: 64, limit: nil, request: nil) == 16)
        #expect(WorkerThreads.total(setting: "0", cpus: 64, cpuLimit: 6, limit: nil, request: nil) == 6)
        #expect(WorkerThreads.total(setting: "50%", cpus: 8, cpuLimit: 100, limit: nil, request: nil) == 4)
        // Split among the NetWorkers, rounded up, one at least.
        #expect(WorkerThreads.perNetWorker(total: 3, netWorkers: 2) == 2)
        #expect(WorkerThreads.perNetWorker(total: 1, netWorkers: 4) == 1)
        #expect(WorkerThreads.perNetWorker(total: 16, netWorkers: 4) == 4)
    }

    /// CPU quantities as Kubernetes writes them, rounded up to whole CPUs.
    @Test func cpuQuantities() {
        #expect(WorkerThreads.cpus("2") == 2 && WorkerThreads.cpus("500m") == 1 && WorkerThreads.cpus("1500m") == 2)
        #expect(WorkerThreads.cpus("1.5") == 2 && WorkerThreads.cpus("0.25") == 1 && WorkerThreads.cpus(".5") == 1 && WorkerThreads.cpus("3.0") == 3)
        for bad in ["", "0", "0m", "-1", "1.", "1.2345", "2x", "m", "4097", "1e3", "9223372036854775807.5", "-0.5", "1.-5", "-9223372036854775808", "-9999999999999999"] { #expect(WorkerThreads.cpus(bad) == nil, "\(bad)") }
    }

    @Test func badValuesAreRefused() {
        for bad in ["-1", "257", "0%", "101%", "%", "half", "2.5"] { #expect(WorkerThreads.problem(with: bad) != nil, "\(bad)") }
        for good in ["0", "1", "256", "1%", "100%"] { #expect(WorkerThreads.problem(with: good) == nil, "\(good)") }
    }
}
