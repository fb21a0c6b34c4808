import Foundation
import RStream
import Testing

/// The `rstream` executable built beside the test bundle.
let rstreamBinary: URL = {
    let here = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
    for candidate in [here, here.deletingLastPathComponent(), Bundle.main.bundleURL.deletingLastPathComponent()] {
        let url = candidate.appendingPathComponent("rstream")
        if FileManager.default.isExecutableFile(atPath: url.path) { return url }
    }
    return here.appendingPathComponent("rstream")
}()

func rstream(_ arguments: [String]) -> Process {
    let process = Process()
    process.executableURL = rstreamBinary
    process.arguments = arguments
    var environment = ProcessInfo.processInfo.environment
    environment["SWIFT_BACKTRACE"] = "enable=no"
    process.environment = environment
    return process
}

/// Runs `rstream` to completion; returns its exit status and what it wrote on stderr.
func runToCompletion(_ arguments: [String]) throws -> (status: Int32, errors: String) {
    let process = rstream(arguments)
    let errors = Pipe()
    process.standardError = errors
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    return (process.terminationStatus, text)
}

/// Starts `rstream listen --once` on an ephemeral port; returns it with the port it printed.
func startListener(stdout: FileHandle, extra: [String] = []) throws -> (Process, UInt16, Pipe) {
    let listen = rstream(["listen", "--host", "127.0.0.1", "--port", "0", "--once", "--provider", "tcp"] + extra)
    let errors = Pipe()
    listen.standardOutput = stdout
    listen.standardError = errors
    try listen.run()
    var text = ""
    while !text.contains("\n") {
        let data = errors.fileHandleForReading.availableData
        if data.isEmpty { break }
        text += String(decoding: data, as: UTF8.self)
    }
    let port = UInt16(text.split(separator: ":").last.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) } ?? "") ?? 0
    #expect(text.hasPrefix("rstream: listening on 127.0.0.1:"), "\(text)")
    return (listen, port, errors)
}

@Suite(.serialized) struct CommandTests {
    /// iWarp mode too: before the DATA word of a write was posted only by the send shard, this
    /// pipe trapped after its first 64 KiB ("more transmit completions than operations posted").
    @Test(arguments: [[], ["--iwarp"]])
    func sixtyFourMiBThroughListenAndConnectArriveIdentical(mode: [String]) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("rstream-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let input = dir.appendingPathComponent("in"), output = dir.appendingPathComponent("out")
        var bytes = [UInt8](repeating: 0, count: 64 << 20)
        PatternStream(seed: 77).fill(&bytes, count: bytes.count, from: 0)
        try Data(bytes).write(to: input)
        #expect(FileManager.default.createFile(atPath: output.path, contents: nil))

        let (listen, port, _) = try startListener(stdout: try FileHandle(forWritingTo: output), extra: mode)
        let connect = rstream(["connect", "127.0.0.1", String(port), "--provider", "tcp"] + mode)
        connect.standardInput = try FileHandle(forReadingFrom: input)
        try connect.run()
        connect.waitUntilExit()
        listen.waitUntilExit()
        #expect(connect.terminationStatus == 0)
        #expect(listen.terminationStatus == 0)
        let received = try Data(contentsOf: output)
        #expect(received.count == bytes.count)
        #expect(received == Data(bytes))
    }

    @Test func connectToNothingFailsWithAMessage() throws {
        let port = try StreamListener(host: "127.0.0.1", port: 0, options: loopbackOptions()).port
        let (status, text) = try runToCompletion(["connect", "127.0.0.1", String(port), "--provider", "tcp"])
        #expect(status != 0)
        #expect(text.contains("nothing is listening"), "\(text)")
    }

    @Test(arguments: [
        (["--send-ring", "100"], "send ring size 100 is outside 4096...1048575"),
        (["--rx-credits", "600"], "rx credits 600 is outside 4...511"),
        (["--tx-size", "0"], "tx queue size 0 is outside 8...65536"),
    ])
    func badOptionsAreNamed(arguments: [String], message: String) throws {
        let (status, text) = try runToCompletion(["listen", "--port", "0"] + arguments)
        #expect(status != 0)
        #expect(text.contains(message), "\(text)")
    }

    @Test func theListenerReportsABadPeerAndGoesOnServing() throws {
        let listen = rstream(["listen", "--host", "127.0.0.1", "--port", "0", "--provider", "tcp", "--iwarp"])
        let errors = Pipe(), output = Pipe()
        listen.standardError = errors
        listen.standardOutput = output
        try listen.run()
        // SIGKILL: a child spawned from the test runner may inherit a mask that blocks SIGTERM.
        defer { kill(listen.processIdentifier, SIGKILL); listen.waitUntilExit() }
        var text = ""
        while !text.contains("\n") { text += String(decoding: errors.fileHandleForReading.availableData, as: UTF8.self) }
        let port = UInt16(text.split(separator: ":").last!.trimmingCharacters(in: .whitespacesAndNewlines))!
        expectError(.rejected, containing: "asks for normal mode") {
            _ = try StreamConnection.connect(host: "127.0.0.1", port: port, options: loopbackOptions())
        }
        text = ""
        while !text.contains("connection failed") { text += String(decoding: errors.fileHandleForReading.availableData, as: UTF8.self) }
        #expect(text.contains("protocolViolation"), "\(text)")
        let good = try StreamConnection.connect(host: "127.0.0.1", port: port, options: loopbackOptions { $0.iwarp = true })
        try good.sendAll(Array("still serving".utf8))
        try good.shutdown()
        var buffer = [UInt8](repeating: 0, count: 16)
        #expect(try good.receive(into: &buffer) == 0)
        good.close()
        #expect(String(decoding: output.fileHandleForReading.availableData, as: UTF8.self) == "still serving")
    }
}

@Suite(.serialized) struct KilledPeerTests {
    /// A peer process killed mid-stream: the survivor reports a reset after the bytes that arrived,
    /// and never hangs.
    /// Over shared memory the set-up socket's end tells the survivor at once.
    @Test(arguments: ["tcp", "shm"])
    func aKilledPeerIsAResetAfterTheBytesThatArrived(transport: String) throws {
        signal(SIGPIPE, SIG_IGN)
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: loopbackOptions())
        let connect = rstream(["connect", "127.0.0.1", String(listener.port), "--provider", transport])
        let feed = Pipe()
        connect.standardInput = feed
        connect.standardOutput = FileHandle.nullDevice
        try connect.run()
        let writer = Background { () -> Void in
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            var offset: UInt64 = 0
            let fd = feed.fileHandleForWriting.fileDescriptor
            while true {
                PatternStream(seed: 5).fill(&chunk, count: chunk.count, from: offset)
                let n = chunk.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                if n <= 0 { return }
                offset += UInt64(n)
                if n < chunk.count { return } // keep stream offsets simple: stop at a short write
            }
        }
        let stream = try listener.accept(timeout: .seconds(10))
        #expect(stream.transport == transport)
        var received = 0
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var outcome = "no reset within 30 s"
        let deadline = ContinuousClock.now + .seconds(30)
        loop: while ContinuousClock.now < deadline {
            do {
                switch try stream.tryReceive(into: &buffer) {
                case .received(let n):
                    if let bad = PatternStream(seed: 5).firstMismatch(buffer, count: n, from: UInt64(received)) {
                        outcome = "byte \(received + bad) wrong"
                        break loop
                    }
                    received += n
                    if received >= 8 << 20 && connect.isRunning { kill(connect.processIdentifier, SIGKILL) }
                case .endOfStream:
                    outcome = "end of stream: a killed peer must not look like a FIN"
                    break loop
                case .wouldBlock:
                    usleep(100)
                }
            } catch {
                outcome = "\(error.kind)"
                break
            }
        }
        connect.waitUntilExit()
        try? feed.fileHandleForWriting.close()
        try writer.value()
        #expect(outcome == "connectionReset")
        #expect(received >= 8 << 20)
        stream.close()
    }
}

/// True where this process may make network namespaces (root, and `ip` from iproute2 present).
let namespacesAvailable: Bool = {
    let probe = "rs-probe-\(getpid())"
    func ip(_ arguments: [String]) -> Bool {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        process.arguments = arguments
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return false }
        process.waitUntilExit()
        return process.terminationStatus == 0
    }
    guard ip(["netns", "add", probe]) else {
        print("NamespaceTests: skipped, network namespaces cannot be made here (needs root and iproute2)")
        return false
    }
    return ip(["netns", "del", probe])
}()

/// Scripts run in network namespaces they make and remove: protocol v4 liveness across a real
/// link that the test cuts (two namespaces joined by a veth pair), and the dual-stack rule of the
/// same-host names (a namespace of its own, whose `bindv6only` it sets).
@Suite(.serialized, .enabled(if: namespacesAvailable)) struct NamespaceTests {
    static let scripts = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("scripts")

    /// Runs `scripts/<name>` with the command's path and `arguments`; nil when it says (exit 77)
    /// that namespaces or a veth pair cannot be made here.
    static func run(_ name: String, _ arguments: [String] = []) throws -> (status: Int32, text: String)? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [scripts.appendingPathComponent(name).path, rstreamBinary.path] + arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        if process.terminationStatus == 77 {
            print("NamespaceTests: skipped: \(text)")
            return nil
        }
        return (process.terminationStatus, text)
    }

    @Test(arguments: ["cut-transfer", "cut-idle", "outage"])
    func aCutLinkEndsBothSidesAndAShortOutageLosesNothing(scenario: String) throws {
        guard let (status, text) = try Self.run("netns-liveness.sh", [scenario]) else { return }
        #expect(status == 0, "\(text)")
        #expect(text.contains("netns liveness: 0 failed"), "\(text)")
    }

    /// An IPv6 wildcard listener takes an IPv4 client over shared memory only where its TCP twin
    /// would (`scripts/netns-dual-stack.sh`: a namespace with `net.ipv6.bindv6only` 0; 1; and 1
    /// when the listener is made, 0 when the client connects).
    @Test func anIPv6WildcardTakesIPv4ClientsOverSharedMemoryOnlyWhenDualStack() throws {
        guard let (status, text) = try Self.run("netns-dual-stack.sh") else { return }
        #expect(status == 0, "\(text)")
        #expect(text.contains("netns dual-stack: 0 failed"), "\(text)")
    }
}
