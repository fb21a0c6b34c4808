import ArgumentParser
import RStream
#if canImport(Glibc)
import Glibc
#endif

@main
struct RStreamCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rstream",
        abstract: "Byte streams over libfabric RMA (the rstream protocol, version 4).",
        subcommands: [Info.self, Listen.self, Connect.self, Perf.self, AsyncCost.self]
    )
}

/// The stream options both ends take.
struct StreamFlags: ParsableArguments {
    @Option(help: "shm (shared memory, same host only) or a core provider (default: RSTREAM_PROVIDER, else shared memory to a local listener that serves it, else the best core: verbs, tcp, sockets, then any other).")
    var provider: String?
    @Option(name: .customLong("send-ring"), help: "Send ring bytes (4096...1048575).")
    var sendRing: Int = 32 * 1024
    @Option(name: .customLong("recv-ring"), help: "Receive ring bytes (4096...1048575).")
    var recvRing: Int = 32 * 1024
    @Option(name: .customLong("tx-size"), help: "Transmit queue slots (8...65536, capped by the core).")
    var txSize: Int = 384
    @Option(name: .customLong("rx-credits"), help: "Receives kept posted (4...511, capped by the core).")
    var rxCredits: Int = 384
    @Flag(help: "iWarp mode: words travel as 4-byte sends, not remote CQ data.")
    var iwarp = false
    @Option(name: .customLong("numa-node"), help: "Place the rings on this NUMA node and run on its CPUs.")
    var numaNode: Int?
    @Flag(name: .customLong("prefault-rings"), help: "Place every ring page when the stream is made (default: on first use).")
    var prefaultRings = false
    @Option(help: "Run on this CPU.")
    var cpu: Int?
    @Option(name: .customLong("peer-timeout"), help: "Seconds the peer may send nothing (not even a heartbeat) before the stream fails; 0: never.")
    var peerTimeout: Double = 30

    /// Pins the process's threads (those made from here on) to `--cpu` or `--numa-node`.
    func pin() throws {
        do {
            if let cpu { try NUMAPlacement.pinCurrentThread(toCPU: cpu) } else if let numaNode { try NUMAPlacement.pinCurrentThread(toNode: numaNode) }
        } catch { throw ValidationError(error.context) }
    }

    func options() throws -> StreamOptions {
        var options = StreamOptions()
        options.provider = provider
        options.sendRingSize = sendRing
        options.receiveRingSize = recvRing
        options.txQueueSize = txSize
        options.rxCredits = rxCredits
        options.iwarp = iwarp
        options.numaNode = numaNode
        options.prefaultRings = prefaultRings
        guard peerTimeout.isFinite, peerTimeout >= 0 else { throw ValidationError("peer timeout \(peerTimeout) is not a number of seconds") }
        options.peerTimeout = peerTimeout == 0 ? nil : .milliseconds(Int64(peerTimeout * 1000))
        do { try options.validate() } catch { throw ValidationError(error.context) }
        return options
    }
}

func printError(_ message: String) {
    var line = "rstream: \(message)\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

/// Writes all of `bytes` to a file descriptor; false when the reader has gone.
func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
    var done = 0
    while done < bytes.count {
        let n = write(fd, bytes.baseAddress! + done, bytes.count - done)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return false }
        done += n
    }
    return true
}

/// Copies the stream to stdout until end of stream; returns the bytes copied.
func drain(_ stream: StreamConnection, to fd: Int32) throws(RStreamError) -> Int {
    var buffer = [UInt8](repeating: 0, count: 1 << 20)
    var total = 0
    while true {
        let n = try stream.receive(into: &buffer)
        if n == 0 { return total }
        total += n
        let ok = buffer.withUnsafeBytes { writeAll(fd, UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        if !ok { throw RStreamError(.closed, code: EPIPE, "standard output closed") }
    }
}

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the transports here that can carry a stream: the core providers, and shm.")

    func run() throws {
        let cores = CoreProvider.available()
        guard !cores.isEmpty else {
            printError("no core provider on this machine offers FI_EP_MSG with FI_MSG and FI_RMA")
            throw ExitCode(1)
        }
        let header = ["provider", "fabric", "domain", "address", "rx-cq-data", "mr", "cq-data", "tx-max", "rx-max", "inject", "progress"]
        let rows = cores.map { c in
            [c.name, c.fabric, c.domain, c.addressFormat, c.writeConsumesReceive ? "consumes" : "no",
             c.virtualAddressing ? "virt-addr" : "offset", "\(c.cqDataSize)", "\(c.maxTxQueueSize)",
             "\(c.maxRxQueueSize)", "\(c.injectSize)", c.dataProgress]
        }
        let widths = header.indices.map { i in ([header[i]] + rows.map { $0[i] }).map(\.count).max()! }
        for row in [header] + rows {
            print(row.indices.map { row[$0] + String(repeating: " ", count: widths[$0] - row[$0].count) }.joined(separator: "  "))
        }
        print("shm: shared memory between processes of this host (--provider shm; chosen by itself for a local address whose listener serves it)")
    }
}

struct Listen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve connections one after another, writing what each sends to standard output (or echoing it).")

    @Option(help: "Address to listen on.") var host = "0.0.0.0"
    @Option(help: "Port to listen on (0: any; the real one is printed).") var port: UInt16
    @Flag(help: "Serve one connection, then exit.") var once = false
    @Flag(help: "Send what arrives back to the peer instead of writing it to standard output.") var echo = false
    @OptionGroup var flags: StreamFlags

    func run() throws {
        try flags.pin()
        let listener: StreamListener
        do {
            listener = try StreamListener(host: host, port: port, options: try flags.options())
        } catch let error as RStreamError {
            printError("cannot listen on \(host):\(port): \(error)")
            throw ExitCode(1)
        }
        printError("listening on \(listener.host):\(listener.port)")
        while true {
            do {
                let stream = try listener.accept()
                defer { stream.close() }
                if echo { try echoBack(stream) } else { _ = try drain(stream, to: 1) }
                do {
                    try stream.shutdown()
                    try stream.flush(timeout: .seconds(10))
                } catch where !echo && error.kind == .connectionReset {
                    // The peer sent FIN and left without waiting for ours (a C client that
                    // closes at once): every byte arrived and none was owed to it.
                }
                if once { return }
            } catch {
                printError("connection failed: \(error)")
                if once { throw ExitCode(1) }
            }
        }
    }
}

/// Sends every byte of the stream back until end of stream.
func echoBack(_ stream: StreamConnection) throws(RStreamError) {
    var buffer = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = try stream.receive(into: &buffer)
        if n == 0 { return }
        try stream.sendAll(buffer[0..<n])
    }
}

struct Connect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send standard input then FIN, writing what the peer sends to standard output.")

    @Argument(help: "Host to connect to.") var host: String
    @Argument(help: "Port to connect to.") var port: UInt16
    @Option(help: "Seconds to wait for the connection.") var timeout: Double = 10
    @OptionGroup var flags: StreamFlags

    func run() throws {
        try flags.pin()
        let stream: StreamConnection
        do {
            stream = try StreamConnection.connect(host: host, port: port, options: try flags.options(),
                                                  timeout: .milliseconds(Int64(timeout * 1000)))
        } catch let error as RStreamError {
            printError("cannot connect to \(host):\(port): \(error)")
            throw ExitCode(1)
        }
        defer { stream.close() }
        printError("connected to \(host):\(port) over \(stream.transport)")
        let sender = SenderThread(stream)
        do {
            _ = try drain(stream, to: 1)
        } catch {
            printError("receiving failed: \(error)")
            throw ExitCode(1)
        }
        if let failure = sender.join() {
            printError("sending failed: \(failure)")
            throw ExitCode(1)
        }
    }
}

/// Sends standard input, then FIN, and waits until every byte has left; on its own thread so
/// that receiving goes on meanwhile.
final class SenderThread: @unchecked Sendable {
    private var thread = pthread_t()
    private let stream: StreamConnection
    private var failure: String?

    init(_ stream: StreamConnection) {
        self.stream = stream
        let box = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&thread, nil, { raw in
            let me = Unmanaged<SenderThread>.fromOpaque(raw!).takeRetainedValue()
            me.run()
            return nil
        }, box)
    }

    private func run() {
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        do {
            while true {
                let n = buffer.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n < 0 { failure = "reading standard input: errno \(errno)"; return }
                if n == 0 { break }
                try stream.sendAll(buffer[0..<n])
            }
            try stream.shutdown()
            try stream.flush()
        } catch {
            failure = "\(error)"
        }
    }

    func join() -> String? {
        pthread_join(thread, nil)
        return failure
    }
}
