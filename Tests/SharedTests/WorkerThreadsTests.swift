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

    @Test func badValuesAreRefused() {
        for bad in ["-1", "257", "0%", "101%", "%", "half", "2.5"] { #expect(WorkerThreads.problem(with: bad) != nil, "\(bad)") }
        for good in ["0", "1", "256", "1%", "100%"] { #expect(WorkerThreads.problem(with: good) == nil, "\(good)") }
    }
}
