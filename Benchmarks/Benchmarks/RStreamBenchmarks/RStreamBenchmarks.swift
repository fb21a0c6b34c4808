import Benchmark
import Foundation
import RStream
@_spi(Benchmarks) import RStreamKernel

/// A connected loopback pair over the tcp core (or, with `provider: "shm"`, over shared memory);
/// both ends driven from the benchmark's thread.
final class LoopbackPair: @unchecked Sendable {
    let client: StreamConnection
    let server: StreamConnection

    init(ring: Int, provider: String? = nil) throws {
        var options = StreamOptions()
        options.provider = provider ?? ProcessInfo.processInfo.environment["RSTREAM_PROVIDER"] ?? "tcp"
        options.sendRingSize = ring
        options.receiveRingSize = ring
        // Steady state: a ring page first touched inside the measurement would add a page fault
        // (ring pages otherwise come in on first use).
        options.prefaultRings = true
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: options)
        nonisolated(unsafe) var accepted: StreamConnection?
        let thread = Thread { accepted = try? listener.accept(timeout: .seconds(10)) }
        thread.start()
        client = try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: options)
        while accepted == nil { usleep(100) }
        server = accepted!
    }

    /// One message client -> server, received whole.
    func roundOneWay(_ message: [UInt8], into buffer: inout [UInt8]) throws {
        var sent = 0, received = 0
        while received < message.count {
            if sent < message.count, case .sent(let n) = try client.trySend(message[sent...]) { sent += n }
            if case .received(let n) = try server.tryReceive(into: &buffer) { received += n }
        }
    }
}

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal, .instructions],
        maxDuration: .seconds(3),
        maxIterations: 1_000_000,
        // Per sample of 1,000 operations; the harness itself allocates 16-18 per sample (the pure
        // ring copy shows the same), so one allocation per operation would add 1,000 and fail.
        thresholds: [.mallocCountTotal: .init(absolute: [.p90: 4])]
    )

    // Names without spaces: benchmark 1.38 writes threshold files with sanitised names but looks
    // them up unsanitised, so a name with spaces never finds its committed threshold.
    Benchmark("WordCodec.encodeDecode", configuration: .init(scalingFactor: .kilo)) { benchmark in
        for i in benchmark.scaledIterations {
            let word = NotificationWord.data(length: (i & 0xFFFF) + 1).encoded
            blackHole(try NotificationWord.decode(word))
            let control = NotificationWord.control(freed: i & 0xFFFFF, credits: (i >> 3) & 0x1FF, fin: true).encoded
            blackHole(try NotificationWord.decode(control))
        }
    }

    for size in [64, 65536] {
        Benchmark("RingCopy.\(size)B", configuration: .init(scalingFactor: .kilo)) { benchmark in
            let capacity = (1 << 20) - 1
            let ring = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 4096)
            defer { ring.deallocate() }
            let source = [UInt8](repeating: 7, count: size)
            var sink = [UInt8](repeating: 0, count: size)
            var cursor = RingCursor(capacity: capacity)
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                var left = size
                source.withUnsafeBytes { src in
                    while left > 0 {
                        let n = min(left, cursor.contiguousFree)
                        (ring.baseAddress! + cursor.writeOffset).copyMemory(from: src.baseAddress! + (size - left), byteCount: n)
                        cursor.produce(n)
                        left -= n
                    }
                }
                sink.withUnsafeMutableBytes { dst in
                    var taken = 0
                    while taken < size {
                        let n = min(size - taken, cursor.contiguousUsed)
                        (dst.baseAddress! + taken).copyMemory(from: ring.baseAddress! + cursor.readOffset, byteCount: n)
                        cursor.consume(n)
                        taken += n
                    }
                }
            }
            blackHole(sink)
        }
    }

    // The same two calls over the tcp core and over shared memory (one copy in, one out; no
    // system call while busy).
    for (prefix, provider) in [("SendReceive", nil), ("SharedMemorySendReceive", "shm")] as [(String, String?)] {
        for size in [64, 65536] {
            Benchmark("\(prefix).\(size)B", configuration: .init(scalingFactor: .kilo)) { benchmark in
                let pair = try LoopbackPair(ring: size == 64 ? 32 * 1024 : 512 * 1024, provider: provider)
                let message = [UInt8](repeating: 1, count: size)
                var buffer = [UInt8](repeating: 0, count: size)
                for _ in 0..<100 { try pair.roundOneWay(message, into: &buffer) } // steady state
                benchmark.startMeasurement()
                for _ in benchmark.scaledIterations { try pair.roundOneWay(message, into: &buffer) }
                benchmark.stopMeasurement()
                pair.client.close(linger: .zero)
                pair.server.close(linger: .zero)
            }
        }
    }
}
