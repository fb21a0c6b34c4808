import ArgumentParser
import Foundation
import Histogram
import RStream
import RStreamKernel
import Synchronization

/// What idle async readers cost, and how soon a wake-up reaches its task: the figures of issue 11,
/// measured in one process (both ends of every stream are idle async readers, so both keep up
/// their heartbeats and receive the peer's).
struct AsyncCost: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "async-cost",
        abstract: "Measure idle async readers' CPU (getrusage) and the wake-up latency of an awaiting task.")

    @Option(help: "Idle readers (both ends of readers/2 streams).") var readers = 1000
    @Option(help: "Seconds to measure the idle readers for.") var seconds = 10
    @Option(help: "Wake-ups to time.") var wakeups = 2000
    @Option(help: "shm or a core provider (default: the best core).") var provider: String?
    @Option(help: "Pin to this CPU.") var cpu: Int?
    @Flag(help: "iWarp mode (over tcp: the streams then share completion queues).") var iwarp = false

    func run() throws {
        try Pinning.apply(cpu: cpu, numaNode: nil)
        let done = DispatchSemaphore(value: 0)
        let outcome = Outcome()
        Task {
            let result: Result<Void, any Error>
            do { result = .success(try await measure()) } catch { result = .failure(error) }
            outcome.withLock { $0 = result }
            done.signal()
        }
        done.wait()
        try outcome.withLock { $0! }.get()
    }

    struct Usage {
        var cpu: Duration
        var voluntarySwitches: Int
        static func now() -> Usage {
            var usage = rusage()
            getrusage(RUSAGE_SELF.rawValue, &usage)
            func duration(_ t: timeval) -> Duration { .seconds(t.tv_sec) + .microseconds(t.tv_usec) }
            return Usage(cpu: duration(usage.ru_utime) + duration(usage.ru_stime), voluntarySwitches: usage.ru_nvcsw)
        }
    }

    /// Resident bytes of this process (`/proc/self/statm`).
    static func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        return fields.count > 1 ? (Int(fields[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE))) : 0
    }

    func measure() async throws {
        var options = StreamOptions()
        options.provider = provider
        options.iwarp = iwarp
        options.busyPollWindow = .zero // an idle reader goes straight to the reactor
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: options)
        let residentBefore = Self.residentBytes()
        var streams: [StreamConnection] = []
        for _ in 0..<max(1, readers / 2) {
            async let accepted = listener.accept(timeout: .seconds(10))
            streams.append(try await StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: options))
            streams.append(try await accepted)
        }
        let transport = streams[0].transport
        let perStream = Double(Self.residentBytes() - residentBefore) / Double(streams.count) / 1024
        print("resident memory: \(String(format: "%.0f", perStream)) KiB per stream (both ends in this process; rings of \(options.receiveRingSize / 1024) KiB)")
        let arrivals = Arrivals()
        let base = Reactor.shared.waiting
        let tasks = streams.enumerated().map { (i, stream) in
            Task {
                var buffer = [UInt8](repeating: 0, count: 16)
                while try await stream.receive(into: &buffer) > 0 {
                    let now = ContinuousClock.now
                    arrivals.withLock { $0[i] = now }
                }
            }
        }
        func suspended() -> Int { Reactor.shared.waiting - base }
        let settle = ContinuousClock.now + .seconds(10)
        while suspended() < streams.count && ContinuousClock.now < settle { try await Task.sleep(for: .milliseconds(10)) }
        try await Task.sleep(for: .seconds(1))
        print("\(streams.count) idle async readers over \(transport), \(suspended()) of them suspended on the reactor")

        let before = Usage.now(), start = ContinuousClock.now
        try await Task.sleep(for: .seconds(seconds))
        let after = Usage.now(), elapsed = ContinuousClock.now - start
        let share = (after.cpu - before.cpu) / elapsed * 100
        let switches = Double(after.voluntarySwitches - before.voluntarySwitches) / (elapsed / .seconds(1))
        print("idle: \(String(format: "%.3f", share)) % of one CPU over \(seconds) s (user + system, getrusage), \(String(format: "%.0f", switches)) voluntary context switches/s")

        // Wake-ups: a byte to one reader at a time, once every reader is suspended again.
        var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        for round in 0..<wakeups {
            let i = (round * 7919) % streams.count
            let peer = i ^ 1 // the other end of stream pair i / 2
            let wait = ContinuousClock.now + .seconds(5)
            while suspended() < streams.count && ContinuousClock.now < wait { await Task.yield() }
            let sent = ContinuousClock.now
            arrivals.withLock { $0[i] = nil }
            try await streams[peer].sendAll([1])
            while arrivals.withLock({ $0[i] }) == nil && ContinuousClock.now < wait { await Task.yield() }
            if let arrived = arrivals.withLock({ $0[i] }) { _ = histogram.record(UInt64((arrived - sent) / .nanoseconds(1))) }
        }
        func us(_ q: Double) -> String { String(format: "%.1f", Double(histogram.valueAtPercentile(q)) / 1000) }
        print("wake-up (a byte sent → the awaiting task has it): p50 \(us(50)) µs, p99 \(us(99)) µs over \(histogram.totalCount) wake-ups")

        for task in tasks { task.cancel() }
        for stream in streams { await stream.close(linger: .zero) }
        listener.close()
    }
}

/// When each reader last had a byte (the readers write, the measuring task reads).
final class Arrivals: Sendable {
    private let times = Mutex<[Int: ContinuousClock.Instant]>([:])
    func withLock<R>(_ body: (inout [Int: ContinuousClock.Instant]) -> R) -> R { times.withLock { body(&$0) } }
}

/// How the measuring task ended, for the command's thread.
final class Outcome: Sendable {
    private let result = Mutex<Result<Void, any Error>?>(nil)
    func withLock<R>(_ body: (inout Result<Void, any Error>?) -> R) -> R { result.withLock { body(&$0) } }
}
