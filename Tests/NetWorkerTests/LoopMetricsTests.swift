import NIOCore
import NIOPosix
import Testing
@testable import NetWorker

/// The event loops' counters, fed by NIO itself: a group with the delegate, work on each loop.
@Suite struct LoopMetricsTests {
    @Test func eachLoopThatWorkedIsCountedUnderItsNetWorker() throws {
        let metrics = LoopMetrics(netWorker: 3)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2, metricsDelegate: metrics)
        defer { try? group.syncShutdownGracefully() }
        for loop in group.makeIterator() {
            try loop.submit { (0..<1000).reduce(0, +) }.wait()
        }
        // NIO reports a tick after it ends, just after the task's future completed: wait (bounded)
        // until both loops have reported.
        var lines: [String] = []
        for _ in 0..<500 {
            lines = metrics.metricLines()
            if lines.contains("ztunnel_event_loops 2") { break }
            try group.next().submit {}.wait()
        }
        #expect(lines.contains("ztunnel_event_loops 2"))
        for index in 0..<2 {
            let labels = "{net_worker=\"3\",loop=\"\(index)\"}"
            let ticks = lines.first { $0.hasPrefix("ztunnel_event_loop_ticks_total\(labels) ") }
            let busy = lines.first { $0.hasPrefix("ztunnel_event_loop_busy_seconds_total\(labels) ") }
            #expect((ticks?.split(separator: " ").last).flatMap { Int($0) }.map { $0 > 0 } == true, "\(lines)")
            #expect(busy?.split(separator: " ").last?.contains(".") == true, "\(lines)")
        }
        #expect(lines.contains("# TYPE ztunnel_event_loop_busy_seconds counter"))
    }
}
