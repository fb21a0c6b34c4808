import ArgumentParser
import Foundation
import Histogram
import RStream
import RStreamKernel

struct Perf: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure RStream against the raw core and kernel TCP (latency, bandwidth, scale).",
        discussion: """
            By default starts its own server process on loopback. Across two machines run \
            `rstream perf --server --port P` on one and `rstream perf --client HOST --port P` on the other. \
            The server uses ports P to P+5 (or ephemeral ones with --port 0).
            """)

    @Flag(help: "Run the server side only.") var server = false
    @Option(help: "Run the client side only, against this server host.") var client: String?
    @Option(help: "The server's first port (P..P+5); 0 picks free ones.") var port: UInt16 = 0
    @Option(help: "Address the server listens on.") var host = "127.0.0.1"
    @Option(help: "Message sizes in bytes, comma-separated.") var sizes = "1,64,4096,65536,1048576"
    @Flag(help: "Fewer iterations: finishes within 30 seconds.") var quick = false
    @Option(name: .customLong("round-trips"), help: "Round trips per size (default: by size; --quick fewer).") var roundTrips: Int?
    @Option(help: "Streams for the scale test (0 skips it).") var connections = 64
    @Option(help: "Threads test: 1...N streams, each busy with 64 B round trips on a thread of its own (0 skips it).") var threads = 0
    @Option(name: .customLong("scale-ring"), help: "Send and receive rings of the scale test's client streams (default 32 KiB).") var scaleRing: Int?
    @Option(name: .customLong("scale-queue"), help: "Transmit queue and posted receives of the scale test's client streams (default 384, capped by the core).") var scaleQueue: Int?
    @Option(name: .customLong("scale-provider"), help: "What carries the scale test's streams: shm (shared memory), or a core (default: --provider's).") var scaleProvider: String?
    @Flag(name: .customLong("in-process"), help: "Instead: both ends of one stream in one thread, through the Swift API and through the provider from C (sizes up to 32768).")
    var inProcess = false
    @Option(help: "Transports to measure, comma-separated: rstream, rstream-tuned, rstream-zerocopy (tuned, no copies), rstream-busypoll, rstream-shm, rstream-shm-tuned, rstream-shm-busypoll, shm-floor, ucx-stream (loopback only), provider-c (loopback only), core-writedata, tcp-blocking, tcp-busypoll; or all.")
    var transports = "all"
    @Option(name: .customLong("send-ring"), help: "Send ring of rstream-tuned and rstream-shm-tuned.") var sendRing = 512 * 1024
    @Option(name: .customLong("recv-ring"), help: "Receive ring of rstream-tuned and rstream-shm-tuned.") var recvRing = 512 * 1024
    @Option(help: "Core provider.") var provider: String?
    @Option(help: "Write every figure to this JSON file.") var json: String?
    @Option(help: "Pin to this CPU (client; the server takes --server-cpu or the same).") var cpu: Int?
    @Option(name: .customLong("server-cpu"), help: "Pin the spawned server to this CPU.") var serverCPU: Int?
    @Option(name: .customLong("numa-node"), help: "Pin both processes to this NUMA node's CPUs.") var numaNode: Int?

    func validate() throws {
        if recvRing >= 1 << 20 || sendRing >= 1 << 20 {
            // 512 KiB is the default; the protocol's limit is 2^20 - 1.
            throw ValidationError("--send-ring and --recv-ring must be at most 1048575 (the protocol's limit)")
        }
        _ = try parsedSizes()
    }

    func parsedSizes() throws -> [Int] {
        let values = sizes.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !values.isEmpty, values.allSatisfy({ $0 != nil && $0! >= 1 && $0! <= 64 << 20 }) else {
            throw ValidationError("--sizes takes byte counts from 1 to 67108864, comma-separated")
        }
        return values.map { $0! }
    }

    /// The fabric rows name their core (the one asked for, else the best here): a local address
    /// would otherwise pick shared memory, which has rows of its own.
    var defaultOptions: StreamOptions {
        var options = StreamOptions()
        options.provider = provider ?? CoreProvider.available().first?.name
        return options
    }

    /// The scale test's streams: default options, in iWarp mode over a core that reports a remote
    /// write's data without a receive (tcp), so that they share completion queues (a word sent
    /// as a message names its stream; `StreamOptions.sharedCompletions`).
    /// Over shared memory (`--scale-provider shm`) they are the same-host transport's streams.
    var scaleOptions: StreamOptions {
        var options = defaultOptions
        if let scaleProvider { options.provider = scaleProvider }
        let core = CoreProvider.available().first { $0.name == options.provider }
        options.iwarp = options.provider != "shm" && !(core?.writeConsumesReceive ?? true)
        if let scaleRing { options.sendRingSize = scaleRing; options.receiveRingSize = scaleRing }
        if let scaleQueue { options.txQueueSize = scaleQueue; options.rxCredits = scaleQueue }
        return options
    }

    /// The same-host transport with default options, and busy-polling.
    var sameHostOptions: StreamOptions {
        var options = StreamOptions()
        options.provider = "shm"
        return options
    }

    /// The same-host transport with rstream-tuned's rings (placed up front).
    var sameHostTunedOptions: StreamOptions {
        var options = tunedOptions
        options.provider = "shm"
        return options
    }

    var sameHostBusyPollOptions: StreamOptions {
        var options = sameHostOptions
        options.waitDescriptor = false
        return options
    }

    /// Default rings without a wait descriptor: what a caller that only busy-polls gets.
    var busyPollOptions: StreamOptions {
        var options = defaultOptions
        options.waitDescriptor = false
        return options
    }

    var tunedOptions: StreamOptions {
        var options = defaultOptions
        options.sendRingSize = sendRing
        options.receiveRingSize = recvRing
        // Placed up front: the zero-copy row never writes its send ring, whose untouched pages
        // the kernel would otherwise send from its one shared zero page.
        options.prefaultRings = true
        return options
    }

    func run() throws {
        try Pinning.apply(cpu: cpu, numaNode: numaNode)
        if server { return try runServer() }
        if inProcess { return try runInProcess() }
        let maxMessage = try parsedSizes().max()!
        if let client {
            guard port != 0 else { throw ValidationError("--client needs the server's --port") }
            return try runClient(host: client, ports: (0..<6).map { port + UInt16($0) }, maxMessage: maxMessage)
        }
        // Start our own server on loopback and read the ports it bound.
        let child = Process()
        child.executableURL = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var arguments = ["perf", "--server", "--port", "0", "--host", "127.0.0.1",
                         "--send-ring", String(sendRing), "--recv-ring", String(recvRing)]
        if let provider { arguments += ["--provider", provider] }
        if let scaleProvider { arguments += ["--scale-provider", scaleProvider] }
        if let cpu = serverCPU ?? cpu { arguments += ["--cpu", String(cpu)] }
        if let numaNode { arguments += ["--numa-node", String(numaNode)] }
        child.arguments = arguments
        let out = Pipe(), input = Pipe()
        child.standardOutput = out
        child.standardInput = input
        try child.run()
        defer { try? input.fileHandleForWriting.close(); child.waitUntilExit() }
        var line = ""
        while !line.contains("\n") {
            let data = out.fileHandleForReading.availableData
            if data.isEmpty { throw PerfError(description: "the server process did not start") }
            line += String(decoding: data, as: UTF8.self)
        }
        let ports = line.split(separator: " ").compactMap { UInt16($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        guard ports.count == 6 else { throw PerfError(description: "unexpected server line: \(line)") }
        try runClient(host: "127.0.0.1", ports: ports, maxMessage: maxMessage)
    }

    // MARK: Server

    func runServer() throws {
        let streamDefault = try StreamListener(host: host, port: port, options: defaultOptions)
        let streamTuned = try StreamListener(host: host, port: port == 0 ? 0 : port + 1, options: tunedOptions)
        let core = try CoreBaselineListener(host: host, port: port == 0 ? 0 : port + 2, provider: provider)
        let tcp = try TCPSocket.listen(host: host, port: port == 0 ? 0 : port + 3)
        let scale = try StreamListener(host: host, port: port == 0 ? 0 : port + 4, backlog: 4096, options: scaleOptions)
        let streamBusy = try StreamListener(host: host, port: port == 0 ? 0 : port + 5, options: busyPollOptions)
        FileHandle.standardOutput.write(Data("\(streamDefault.port) \(streamTuned.port) \(core.port) \(tcp.port) \(scale.port) \(streamBusy.port)\n".utf8))
        func forever(_ body: @escaping @Sendable () throws -> Void) {
            Thread.detachNewThread {
                while true {
                    do { try body() } catch let error as RStreamError where error.kind == .connectionReset {
                        // a client that left without FIN (the core baseline has none)
                    } catch { FileHandle.standardError.write(Data("rstream perf server: \(error)\n".utf8)) }
                }
            }
        }
        forever {
            // A thread per stream: the threads test runs several at once.
            let stream = try streamDefault.accept()
            Thread.detachNewThread {
                var channel = StreamChannel(stream, maxMessage: 1 << 20)
                do { try serve(&channel) } catch let error as RStreamError where error.kind == .connectionReset {
                } catch { FileHandle.standardError.write(Data("rstream perf server: \(error)\n".utf8)) }
                channel.stream.close()
            }
        }
        forever {
            var channel = StreamChannel(try streamTuned.accept(), maxMessage: 1 << 20)
            try serve(&channel)
            channel.stream.close()
        }
        forever {
            var channel = CoreChannel(core: try core.accept(), window: 64)
            try serve(&channel)
        }
        forever {
            let fd = accept(tcp.fd, nil, nil)
            guard fd >= 0 else { throw PerfError(description: "TCP accept: errno \(errno)") }
            defer { close(fd) }
            // The client's first byte says whether it busy-polls; the server mirrors it.
            var mode: UInt8 = 0
            guard read(fd, &mode, 1) == 1 else { return }
            var channel = TCPChannel(fd: fd, busyPoll: mode == 1, maxMessage: 1 << 20)
            try serve(&channel)
        }
        forever { try serveScale(scale) }
        forever {
            var channel = StreamChannel(try streamBusy.accept(), maxMessage: 1 << 20)
            try serve(&channel)
            channel.stream.close()
        }
        // The server lives until its parent closes our standard input (or it is killed).
        while FileHandle.standardInput.availableData.count > 0 {}
    }

    /// Accepts the N streams a scale header announces, then echoes on all of them round-robin.
    func serveScale(_ listener: StreamListener) throws {
        let first = StreamChannel(try listener.accept(), maxMessage: 64)
        guard let header = try first.receiveHeader(), header.mode == .scale else { return }
        var streams = [first.stream]
        for _ in 1..<max(header.count, 1) { streams.append(try listener.accept()) }
        var buffer = [UInt8](repeating: 0, count: header.size)
        var pending = [Int](repeating: 0, count: streams.count)
        var open = streams.count
        while open > 0 {
            for (i, stream) in streams.enumerated() where pending[i] >= 0 {
                switch try stream.tryReceive(into: &buffer) {
                case .received(let n):
                    pending[i] += n
                    while pending[i] >= header.size {
                        try stream.sendAll(buffer[0..<header.size])
                        pending[i] -= header.size
                    }
                case .endOfStream:
                    pending[i] = -1
                    open -= 1
                case .wouldBlock: break
                }
            }
        }
        while let stream = streams.popLast() { stream.close() }
    }

    // MARK: Client

    struct Result {
        var transport: String
        var size: Int
        var rtt: Histogram<UInt64>?
        var bandwidthMBps: Double?
        var messagesPerSecond: Double?
    }

    func iterations(for size: Int) -> (warmup: Int, measured: Int) {
        if let roundTrips { return (max(10, roundTrips / 100), roundTrips) }
        let base = quick ? 1000 : 10000
        let scaled = max(20, min(base, (quick ? 64 : 512) * (1 << 20) / max(size, 1) / 4))
        return (max(10, scaled / 10), scaled)
    }

    func bandwidthCount(for size: Int) -> Int {
        let volume = (quick ? 64 : 512) << 20
        return max(8, min(volume / size, quick ? 100_000 : 1_000_000))
    }

    /// Round trips then one-way bandwidth for each size; `inPlace` goes through the zero-copy calls
    /// (the server mirrors it).
    func measure(_ channel: inout some PerfChannel & ~Copyable, transport: String, sizes: [Int], inPlace: Bool = false) throws -> [Result] {
        var results: [Result] = []
        for size in sizes {
            let (warmup, measured) = iterations(for: size)
            var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
            try channel.sendHeader(PerfHeader(mode: inPlace ? .echoInPlace : .echo, size: size, count: warmup + measured))
            for i in 0..<(warmup + measured) {
                let start = ContinuousClock.now
                if inPlace { try channel.sendInPlace(size); try channel.receiveInPlace(size) } else { try channel.send(size); try channel.receive(size) }
                if i >= warmup { _ = histogram.record(UInt64((ContinuousClock.now - start) / .nanoseconds(1))) }
            }
            let count = bandwidthCount(for: size)
            try channel.sendHeader(PerfHeader(mode: inPlace ? .sinkInPlace : .sink, size: size, count: count))
            let start = ContinuousClock.now
            for _ in 0..<count { if inPlace { try channel.sendInPlace(size) } else { try channel.send(size) } }
            try channel.receive(1)
            let seconds = Double((ContinuousClock.now - start) / .nanoseconds(1)) / 1e9
            results.append(Result(transport: transport, size: size, rtt: histogram,
                                  bandwidthMBps: Double(count * size) / seconds / 1e6,
                                  messagesPerSecond: Double(count) / seconds))
            FileHandle.standardError.write(Data("  \(transport) \(size) B done\n".utf8))
        }
        return results
    }

    func runClient(host: String, ports: [UInt16], maxMessage: Int) throws {
        let sizes = try parsedSizes()
        let wanted = Set(transports.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        func runs(_ name: String) -> Bool { transports == "all" || wanted.contains(name) }
        var results: [Result] = []
        // The same-host rows reach the same listeners (each serves shared memory too; the busy-poll
        // one has no wait descriptor on its side either).
        // The zero-copy rows are the tuned ones through `withSendBuffer` / `withReceivedBytes`.
        for (name, port, options, inPlace) in [("rstream", ports[0], defaultOptions, false), ("rstream-tuned", ports[1], tunedOptions, false),
                                               ("rstream-zerocopy", ports[1], tunedOptions, true),
                                               ("rstream-busypoll", ports[5], busyPollOptions, false),
                                               ("rstream-shm", ports[0], sameHostOptions, false),
                                               ("rstream-shm-tuned", ports[1], sameHostTunedOptions, false),
                                               ("rstream-shm-busypoll", ports[5], sameHostBusyPollOptions, false)]
            where runs(name) && (client == nil || !name.hasPrefix("rstream-shm")) {
            var channel = StreamChannel(try StreamConnection.connect(host: host, port: port, options: options), maxMessage: maxMessage)
            results += try measure(&channel, transport: name, sizes: sizes, inPlace: inPlace)
            channel.stream.close()
        }
        if client == nil && runs("provider-c") { results += try measureThroughProvider(sizes: sizes) }
        if client == nil && runs("shm-floor") { results += try measureFloor(sizes: sizes) }
        if client == nil && runs("ucx-stream") { results += measureUCX(sizes: sizes) }
        if runs("core-writedata") {
            var channel = CoreChannel(core: try CoreBaseline.connect(host: host, port: ports[2], provider: provider), window: 64)
            results += try measure(&channel, transport: "core-writedata", sizes: sizes)
            try channel.core.drain()
        }
        for busy in [false, true] where runs(busy ? "tcp-busypoll" : "tcp-blocking") {
            let fd = try TCPSocket.connect(host: host, port: ports[3])
            var mode: UInt8 = busy ? 1 : 0
            _ = write(fd, &mode, 1)
            var channel = TCPChannel(fd: fd, busyPoll: busy, maxMessage: maxMessage)
            results += try measure(&channel, transport: busy ? "tcp-busypoll" : "tcp-blocking", sizes: sizes)
            close(fd)
        }
        var scale: ScaleResult?
        if connections > 0 { scale = try measureScale(host: host, port: ports[4]) }
        if threads > 0 { try measureThreads(host: host, port: ports[0]) }
        report(results, scale: scale)
        if let json { try writeJSON(results, scale: scale, to: json) }
    }

    /// Both ends of one stream in this thread (no wake-up, no second core: the steadiest figure a
    /// two-core machine gives), through the Swift API and, in `rstream-cperf loop`, through the
    /// provider from C; the difference is what the C face costs a round trip.
    func runInProcess() throws {
        let sizes = try parsedSizes().filter { $0 <= 32768 }
        guard !sizes.isEmpty else { throw ValidationError("--in-process takes sizes up to 32768 (one ring)") }
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: defaultOptions)
        final class Accepted: @unchecked Sendable { var stream: Swift.Result<StreamConnection, RStreamError>? }
        let accepted = Accepted()
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            accepted.stream = Swift.Result { () throws(RStreamError) in try listener.accept(timeout: .seconds(10)) }
            done.signal()
        }
        let client = StreamChannel(try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: defaultOptions), maxMessage: 32768)
        done.wait()
        let server = StreamChannel(try accepted.stream!.get(), maxMessage: 32768)
        var results: [Result] = []
        for size in sizes {
            let (warmup, measured) = iterations(for: size)
            var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
            for i in 0..<(warmup + measured * 2) {
                let start = ContinuousClock.now
                try client.send(size)
                try server.receive(size)
                try server.send(size)
                try client.receive(size)
                if i >= warmup { _ = histogram.record(UInt64((ContinuousClock.now - start) / .nanoseconds(1))) }
            }
            results.append(Result(transport: "rstream-inproc", size: size, rtt: histogram))
        }
        client.stream.close(linger: .zero)
        server.stream.close(linger: .zero)
        results += try measureThroughProvider(sizes: sizes, inProcess: true)
        report(results, scale: nil)
        if let json { try writeJSON(results, scale: nil, to: json) }
    }

    /// The "rstream" row's round trips made through RStream's C face: `rstream-cperf` on both
    /// sides (C, busy-polling fi_send/fi_recv through librstream-fi.so, default options). Needs
    /// both files beside this binary; loopback only.
    func measureThroughProvider(sizes: [Int], inProcess: Bool = false) throws -> [Result] {
        let directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        let program = directory.appendingPathComponent("rstream-cperf")
        guard FileManager.default.isExecutableFile(atPath: program.path),
              FileManager.default.fileExists(atPath: directory.appendingPathComponent("librstream-fi.so").path) else {
            FileHandle.standardError.write(Data("  provider-c skipped: build the rstream-cperf and rstream-fi products\n".utf8))
            return []
        }
        var environment = ProcessInfo.processInfo.environment
        environment["FI_PROVIDER_PATH"] = directory.path
        if let provider { environment["RSTREAM_PROVIDER"] = provider }
        func start(_ arguments: [String], cpu: Int?) throws -> (Process, Pipe) {
            let process = Process()
            process.executableURL = program
            process.arguments = arguments + (cpu.map { ["--cpu", String($0)] } ?? [])
            process.environment = environment
            let out = Pipe()
            process.standardOutput = out
            try process.run()
            return (process, out)
        }
        let plan = sizes.map { size in
            let (warmup, measured) = iterations(for: size)
            return "\(size):\(warmup):\(inProcess ? measured * 2 : measured)"
        }.joined(separator: ",")
        let (client, clientOut): (Process, Pipe)
        if inProcess {
            (client, clientOut) = try start(["loop", plan], cpu: cpu)
        } else {
            let (server, serverOut) = try start(["server"], cpu: serverCPU ?? cpu)
            defer { server.waitUntilExit() }
            let port = try Self.readPort(serverOut)
            (client, clientOut) = try start(["client", "127.0.0.1", String(port), plan], cpu: cpu)
        }
        let text = String(decoding: clientOut.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        client.waitUntilExit()
        guard client.terminationStatus == 0 else { throw PerfError(description: "rstream-cperf failed") }
        let name = inProcess ? "provider-c-inproc" : "provider-c"
        var results: [Result] = []
        for line in text.split(separator: "\n") {
            if line.hasPrefix("size "), let size = Int(line.dropFirst(5)) {
                results.append(Result(transport: name, size: size,
                                      rtt: Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)))
            } else if let sample = UInt64(line), !results.isEmpty {
                _ = results[results.count - 1].rtt!.record(sample)
            }
        }
        FileHandle.standardError.write(Data("  \(name) done\n".utf8))
        return results
    }

    /// The same-host floor: `rstream-shmfloor` (beside this binary), a bare ping-pong of each size
    /// in a shared mapping between two processes pinned like the others. Round trips only.
    func measureFloor(sizes: [Int]) throws -> [Result] {
        let program = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent("rstream-shmfloor")
        guard FileManager.default.isExecutableFile(atPath: program.path) else {
            FileHandle.standardError.write(Data("  shm-floor skipped: build the rstream-shmfloor product\n".utf8))
            return []
        }
        var results: [Result] = []
        for size in sizes {
            let (warmup, measured) = iterations(for: size)
            let process = Process()
            process.executableURL = program
            process.arguments = [String(size), String(warmup), String(measured)]
                + (cpu.map { [String($0), String(serverCPU ?? $0)] } ?? [])
            let out = Pipe()
            process.standardOutput = out
            try process.run()
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
            for line in text.split(separator: "\n") { if let sample = UInt64(line) { _ = histogram.record(sample) } }
            results.append(Result(transport: "shm-floor", size: size, rtt: histogram))
        }
        FileHandle.standardError.write(Data("  shm-floor done\n".utf8))
        return results
    }

    /// UCX's stream API over shared memory (`ucx_perftest -t stream_lat` and `stream_bw`,
    /// UCX_TLS=posix,self, pinned like the others), when `ucx_perftest` is installed: its median
    /// one-way latency doubled into a round trip (the row's every percentile is that one figure),
    /// and its average bandwidth (MiB/s converted to MB/s).
    func measureUCX(sizes: [Int]) -> [Result] {
        guard let tool = ["/usr/bin/ucx_perftest", "/usr/local/bin/ucx_perftest"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            FileHandle.standardError.write(Data("  ucx-stream absent: ucx_perftest is not installed (Debian: ucx-utils)\n".utf8))
            return []
        }
        func run(_ test: String, size: Int, count: Int) -> (p50: Double, bandwidth: Double)? {
            let port = String(20_000 + Int(getpid() % 20_000))
            func start(_ extra: [String], cpu: Int?) -> (Process, Pipe)? {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: "/usr/bin/taskset")
                let arguments = extra + ["-t", test, "-s", String(size), "-n", String(count), "-p", port]
                if let cpu { process.arguments = ["-c", String(cpu), tool] + arguments } else {
                    process.executableURL = URL(fileURLWithPath: tool)
                    process.arguments = arguments
                }
                var environment = ProcessInfo.processInfo.environment
                environment["UCX_TLS"] = "posix,self"
                process.environment = environment
                let out = Pipe()
                process.standardOutput = out
                process.standardError = FileHandle.nullDevice
                guard (try? process.run()) != nil else { return nil }
                return (process, out)
            }
            guard let (server, _) = start([], cpu: serverCPU ?? cpu) else { return nil }
            defer { server.waitUntilExit() }
            usleep(300_000)
            guard let (client, out) = start(["127.0.0.1"], cpu: cpu) else { kill(server.processIdentifier, SIGKILL); return nil }
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            client.waitUntilExit()
            guard let final = text.split(separator: "\n").first(where: { $0.hasPrefix("Final:") }) else {
                kill(server.processIdentifier, SIGKILL)
                return nil
            }
            let fields = final.split(separator: " ").compactMap { Double($0) }
            // iterations, p50, average, overall (µs); bandwidth average, overall (MiB/s); rates
            guard fields.count >= 6 else { return nil }
            return (fields[1], fields[4] * 1.048576)
        }
        var results: [Result] = []
        for size in sizes {
            let (_, measured) = iterations(for: size)
            guard let latency = run("stream_lat", size: size, count: measured),
                  let bandwidth = run("stream_bw", size: size, count: max(1000, bandwidthCount(for: size) / 4)) else {
                FileHandle.standardError.write(Data("  ucx-stream \(size) B failed\n".utf8))
                continue
            }
            var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
            _ = histogram.record(UInt64(latency.p50 * 2 * 1000))
            results.append(Result(transport: "ucx-stream", size: size, rtt: histogram, bandwidthMBps: bandwidth.bandwidth))
        }
        FileHandle.standardError.write(Data("  ucx-stream done\n".utf8))
        return results
    }

    private static func readPort(_ serverOut: Pipe) throws -> Int {
        var line = ""
        while !line.contains("\n") {
            let data = serverOut.fileHandleForReading.availableData
            if data.isEmpty { throw PerfError(description: "rstream-cperf server did not start") }
            line += String(decoding: data, as: UTF8.self)
        }
        guard line.hasPrefix("port "), let port = Int(line.dropFirst(5).trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw PerfError(description: "rstream-cperf server said \(line)")
        }
        return port
    }

    struct ScaleResult {
        var connections: Int
        var roundTripsPerSecond: Double
        var residentBytesPerConnection: Double
        var ringBytesPerConnection: Int
        var descriptorsPerConnection: Double
        var iwarp: Bool
        var transport: String
    }

    func measureScale(host: String, port: UInt16) throws -> ScaleResult {
        let before = Pinning.residentBytes()
        let descriptorsBefore = Self.openDescriptors()
        var streams: [StreamConnection] = []
        let options = scaleOptions // asks the core once (fi_getinfo)
        for i in 0..<connections {
            streams.append(try StreamConnection.connect(host: host, port: port, options: options))
            if i == 0 { // tells the server how many streams to accept
                try streams[0].sendAll(PerfHeader(mode: .scale, size: 64, count: connections).bytes)
            }
        }
        let after = Pinning.residentBytes()
        let descriptors = Double(Self.openDescriptors() - descriptorsBefore) / Double(connections)
        let message = [UInt8](repeating: 1, count: 64)
        var buffer = [UInt8](repeating: 0, count: 64)
        let rounds = max(10, (quick ? 20_000 : 200_000) / connections)
        let start = ContinuousClock.now
        for _ in 0..<rounds {
            for stream in streams { try stream.sendAll(message) }
            for stream in streams {
                var got = 0
                while got < 64 {
                    if case .received(let n) = try stream.tryReceive(into: &buffer[0..<(64 - got)]) { got += n }
                }
            }
        }
        let seconds = Double((ContinuousClock.now - start) / .nanoseconds(1)) / 1e9
        let transport = streams.first?.transport ?? "?"
        // Each released once closed: a close that sleeps gives its stream an eventfd, and 10,000
        // of them beside 10,000 sockets would not fit the descriptor limit.
        while let stream = streams.popLast() { stream.close() }
        return ScaleResult(connections: connections, roundTripsPerSecond: Double(rounds * connections) / seconds,
                           residentBytesPerConnection: Double(after - before) / Double(connections),
                           ringBytesPerConnection: options.sendRingSize + options.receiveRingSize,
                           descriptorsPerConnection: descriptors, iwarp: options.iwarp, transport: transport)
    }

    /// Descriptors open in this process now.
    static func openDescriptors() -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).count
    }

    /// 1...`threads` streams at once, each on a thread of its own doing 64 B round trips through
    /// the blocking calls against a server thread of its own: round trips per second in all.
    func measureThreads(host: String, port: UInt16) throws {
        let rounds = quick ? 20_000 : 200_000
        for count in 1...threads {
            var channels: [StreamChannel] = []
            for _ in 0..<count {
                channels.append(StreamChannel(try StreamConnection.connect(host: host, port: port, options: defaultOptions), maxMessage: 64))
            }
            final class Outcome: @unchecked Sendable { var errors: [String] = []; let lock = NSLock() }
            let outcome = Outcome()
            let ready = DispatchSemaphore(value: 0), go = DispatchSemaphore(value: 0), done = DispatchGroup()
            for channel in channels {
                done.enter()
                let box = UncheckedBox(channel)
                Thread.detachNewThread {
                    defer { done.leave() }
                    let channel = box.value
                    do {
                        try channel.sendHeader(PerfHeader(mode: .echoBlocking, size: 64, count: rounds))
                        ready.signal()
                        go.wait()
                        for _ in 0..<rounds {
                            try channel.sendBlocking(64)
                            try channel.receiveBlocking(64)
                        }
                    } catch {
                        outcome.lock.lock(); outcome.errors.append("\(error)"); outcome.lock.unlock()
                    }
                }
            }
            for _ in 0..<count { ready.wait() }
            let start = ContinuousClock.now
            for _ in 0..<count { go.signal() }
            done.wait()
            let seconds = Double((ContinuousClock.now - start) / .nanoseconds(1)) / 1e9
            for channel in channels { channel.stream.close() }
            if let first = outcome.errors.first { throw PerfError(description: "threads test: \(first)") }
            print("threads: \(count) stream\(count == 1 ? "" : "s") on \(count) thread\(count == 1 ? "" : "s"): "
                  + String(format: "%.0f round trips/s of 64 B in all", Double(count * rounds) / seconds))
        }
    }

    // MARK: Output

    static func microseconds(_ ns: UInt64) -> Double { Double(ns) / 1000 }

    func report(_ results: [Result], scale: ScaleResult?) {
        func pad(_ s: String, _ n: Int) -> String { String(repeating: " ", count: max(0, n - s.count)) + s }
        func fmt(_ x: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", x) }
        print("RTT in µs (one-way = RTT/2); bandwidth one-way in MB/s (10^6 B/s)")
        print(["transport", "size", "min", "p50", "p99", "p99.9", "max", "MB/s", "msg/s"].enumerated()
            .map { $0.offset == 0 ? $0.element.padding(toLength: 22, withPad: " ", startingAt: 0) : pad($0.element, 10) }.joined())
        for r in results {
            let h = r.rtt!
            let cells = [h.min, h.valueAtPercentile(50), h.valueAtPercentile(99), h.valueAtPercentile(99.9), h.max].map { fmt(Self.microseconds($0)) }
            print(r.transport.padding(toLength: 22, withPad: " ", startingAt: 0) + pad("\(r.size)", 10)
                  + cells.map { pad($0, 10) }.joined() + pad(r.bandwidthMBps.map { fmt($0) } ?? "-", 10)
                  + pad(r.messagesPerSecond.map { fmt($0, 0) } ?? "-", 10))
        }
        print("\nratios (p50 RTT; bandwidth)")
        func find(_ t: String, _ size: Int) -> Result? { results.first { $0.transport == t && $0.size == size } }
        for size in Set(results.map(\.size)).sorted() {
            guard let rs = find("rstream", size), let tuned = find("rstream-tuned", size), let core = find("core-writedata", size),
                  let tcp = find("tcp-blocking", size), let busy = find("rstream-busypoll", size) else { continue }
            let p50 = { (r: Result) in Double(r.rtt!.valueAtPercentile(50)) }
            print(pad("\(size)", 8) + " B: rstream/core RTT \(fmt(p50(rs) / p50(core), 2))x (busy-poll \(fmt(p50(busy) / p50(core), 2))x), rstream/tcp-blocking RTT \(fmt(p50(rs) / p50(tcp), 2))x, "
                  + "bandwidth rstream/core \(fmt(rs.bandwidthMBps! / core.bandwidthMBps!, 2))x, rstream-tuned/core \(fmt(tuned.bandwidthMBps! / core.bandwidthMBps!, 2))x")
        }
        for size in Set(results.map(\.size)).sorted() {
            guard let shm = find("rstream-shm", size) else { continue }
            let p50 = { (r: Result) in Double(r.rtt!.valueAtPercentile(50)) }
            var line = pad("\(size)", 8) + " B: rstream-shm RTT \(fmt(p50(shm) / 1000, 2)) µs"
            if let busy = find("rstream-shm-busypoll", size) { line += " (busy-poll \(fmt(p50(busy) / 1000, 2)) µs)" }
            if let floor = find("shm-floor", size) { line += ", /floor \(fmt(p50(shm) / p50(floor), 2))x" }
            if let ucx = find("ucx-stream", size) {
                line += ", /ucx RTT \(fmt(p50(shm) / p50(ucx), 2))x, bandwidth /ucx \(fmt(shm.bandwidthMBps! / ucx.bandwidthMBps!, 2))x"
                if let busy = find("rstream-shm-busypoll", size) { line += " (busy-poll \(fmt(busy.bandwidthMBps! / ucx.bandwidthMBps!, 2))x)" }
            }
            print(line)
        }
        for size in Set(results.map(\.size)).sorted() {
            guard let swift = find("rstream", size) ?? find("rstream-inproc", size),
                  let c = find("provider-c", size) ?? find("provider-c-inproc", size) else { continue }
            let difference = Self.microseconds(c.rtt!.valueAtPercentile(50)) - Self.microseconds(swift.rtt!.valueAtPercentile(50))
            print(pad("\(size)", 8) + " B: the C face (provider-c - rstream, p50 RTT, both ends through it) \(fmt(difference, 2)) µs")
        }
        if let scale {
            print("\nscale: \(scale.connections) rstream connections over \(scale.transport): \(fmt(scale.roundTripsPerSecond, 0)) round trips/s (64 B), "
                  + "resident \(fmt(scale.residentBytesPerConnection / 1024)) KiB per connection (client side; rings of \(scale.ringBytesPerConnection / 1024) KiB, their pages resident as used), "
                  + "\(fmt(scale.descriptorsPerConnection, 2)) descriptors per connection"
                  + (scale.iwarp ? " (iWarp mode: words as messages, so the streams share completion queues)" : ""))
        }
    }

    func writeJSON(_ results: [Result], scale: ScaleResult?, to path: String) throws {
        var rows: [[String: Any]] = []
        for r in results {
            let h = r.rtt!
            rows.append([
                "transport": r.transport, "size": r.size,
                "rtt_us": ["min": Self.microseconds(h.min), "p50": Self.microseconds(h.valueAtPercentile(50)),
                           "p99": Self.microseconds(h.valueAtPercentile(99)), "p999": Self.microseconds(h.valueAtPercentile(99.9)),
                           "max": Self.microseconds(h.max)],
                "one_way_us_p50": Self.microseconds(h.valueAtPercentile(50)) / 2,
            ].merging(r.bandwidthMBps.map { ["bandwidth_MBps": $0, "messages_per_s": r.messagesPerSecond ?? 0] } ?? [:]) { $1 })
        }
        var document: [String: Any] = ["results": rows]
        if let scale {
            document["scale"] = ["connections": scale.connections, "round_trips_per_s": scale.roundTripsPerSecond,
                                 "resident_bytes_per_connection": scale.residentBytesPerConnection,
                                 "ring_bytes_per_connection": scale.ringBytesPerConnection,
                                 "descriptors_per_connection": scale.descriptorsPerConnection, "transport": scale.transport]
        }
        let data = try JSONSerialization.data(withJSONObject: document, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: path))
    }
}

enum Pinning {
    static func apply(cpu: Int?, numaNode: Int?) throws {
        do {
            if let cpu { try NUMAPlacement.pinCurrentThread(toCPU: cpu) } else if let numaNode { try NUMAPlacement.pinCurrentThread(toNode: numaNode) }
        } catch { throw ValidationError(error.context) }
    }

    static func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        return (Int(text.split(separator: " ")[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}

/// A value handed to another thread once (the threads test's channels).
private final class UncheckedBox<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
