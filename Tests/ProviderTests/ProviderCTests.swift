import Foundation
import RStreamKernel
import Testing

/// The directory the package's products are built into (the `rstream` command and
/// `librstream-fi.so` sit beside the test bundle).
let productsDirectory: URL = {
    let here = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
    for candidate in [here, here.deletingLastPathComponent(), Bundle.main.bundleURL.deletingLastPathComponent()]
    where FileManager.default.isExecutableFile(atPath: candidate.appendingPathComponent("rstream").path) {
        return candidate
    }
    return here
}()

/// A C compiler: the system's `cc`, else the Swift toolchain's own `clang` (a Debian machine set
/// up only for Swift may have no gcc).
let cCompiler: String = {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin"
    for name in ["cc", "clang"] {
        for directory in path.split(separator: ":") where FileManager.default.isExecutableFile(atPath: "\(directory)/\(name)") {
            return "\(directory)/\(name)"
        }
    }
    return "/usr/bin/cc"
}()

/// The C test program, compiled once per run against the system's libfabric headers.
let cProgram: Result<URL, CProgramError> = {
    let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("C/provider_test.c")
    let output = FileManager.default.temporaryDirectory.appendingPathComponent("rstream-provider-test-\(getpid())")
    let flags = (try? run("/usr/bin/pkg-config", ["--cflags", "--libs", "libfabric"]).output) ?? "-lfabric"
    let arguments = ["-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-o", output.path, source.path]
        + flags.split(separator: " ").map { String($0).trimmingCharacters(in: .whitespacesAndNewlines) }.filter { !$0.isEmpty } + ["-lpthread", "-ldl"]
    guard let compiled = try? run(cCompiler, arguments), compiled.status == 0 else {
        return .failure(CProgramError(message: "\(cCompiler) failed: \((try? run(cCompiler, arguments).errors) ?? "")"))
    }
    return .success(output)
}()

struct CProgramError: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

/// Runs a program to completion (stdin from /dev/null); its status, stdout and stderr.
@discardableResult
func run(_ path: String, _ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, output: String, errors: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = FileHandle.nullDevice
    try process.run()
    // Read both pipes to the end before waiting, so a chatty program cannot fill one and stall.
    final class Collected: @unchecked Sendable { var data = Data() }
    let errors = Collected()
    let done = DispatchSemaphore(value: 0)
    Thread {
        errors.data = err.fileHandleForReading.readDataToEndOfFile()
        done.signal()
    }.start()
    let output = out.fileHandleForReading.readDataToEndOfFile()
    done.wait()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: output, as: UTF8.self), String(decoding: errors.data, as: UTF8.self))
}

/// What a C side needs in its environment: the provider's directory, and the core to use.
func providerEnvironment(core: String? = "tcp", iwarp: Bool = false, listen: String? = nil) -> [String: String] {
    var environment = ["FI_PROVIDER_PATH": productsDirectory.path, "SWIFT_BACKTRACE": "enable=no"]
    if let listen { environment["RSTREAM_C_LISTEN"] = listen }
    if let core { environment["RSTREAM_PROVIDER"] = core }
    if iwarp { environment["RSTREAM_C_IWARP"] = "1" }
    return environment
}

/// A running server side: started, its port read from the "port N" line it prints first.
final class ServerSide {
    let process = Process()
    let output = Pipe(), errors = Pipe()
    private(set) var port = 0

    init(_ arguments: [String], executable: URL, environment: [String: String], portLine: (String) -> Int?) throws {
        process.executableURL = executable
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        process.standardOutput = output
        process.standardError = errors
        process.standardInput = FileHandle.nullDevice
        try process.run()
        var text = ""
        let source = arguments.first == "listen" ? errors : output
        while port == 0 {
            let data = source.fileHandleForReading.availableData
            if data.isEmpty { break }
            text += String(decoding: data, as: UTF8.self)
            if let line = text.split(separator: "\n").first, text.contains("\n") { port = portLine(String(line)) ?? -1 }
        }
    }

    /// Waits for the server to exit; its status and everything it printed.
    func finish() -> (status: Int32, output: String, errors: String) {
        let out = output.fileHandleForReading.readDataToEndOfFile()
        let err = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
    }
}

@Suite(.serialized) struct ProviderCTests {
    let program: URL
    let provider = productsDirectory.appendingPathComponent("librstream-fi.so")

    init() throws {
        program = try cProgram.get()
        #expect(FileManager.default.fileExists(atPath: provider.path),
                "\(provider.path) is missing: build it with `swift build --product rstream-fi` (make provider)")
    }

    /// Runs a C server and a C client against each other; both must succeed. Returns their output.
    @discardableResult
    func pair(_ server: [String], _ client: (Int) -> [String], environment: [String: String] = providerEnvironment()) throws -> (server: String, client: String) {
        let side = try ServerSide(server, executable: program, environment: environment) { line in
            line.hasPrefix("port ") ? Int(line.dropFirst(5)) : nil
        }
        #expect(side.port > 0, "the server printed its port")
        let c = try run(program.path, client(side.port), environment: environment)
        let s = side.finish()
        #expect(c.status == 0, "client: \(c.errors)")
        #expect(s.status == 0, "server: \(s.errors)")
        return (s.output, c.output)
    }

    @Test func fiInfoListsTheProviderOverEveryCore() throws {
        let listed = try run("/usr/bin/fi_info", ["-l"], environment: providerEnvironment(core: nil))
        #expect(listed.output.contains("rstream:"), "\(listed.output)")
        let streams = try run("/usr/bin/fi_info", ["-t", "FI_EP_SOCK_STREAM"], environment: providerEnvironment(core: nil))
        #expect(streams.status == 0, "\(streams.errors)")
        #expect(streams.output.contains("provider: rstream"))
        // Every core libfabric has for a connected endpoint with FI_MSG | FI_RMA (utility
        // providers aside) carries an entry.
        let cores = try run("/usr/bin/fi_info", ["-t", "FI_EP_MSG", "-c", "FI_RMA"], environment: providerEnvironment(core: nil)).output
            .split(separator: "\n").filter { $0.hasPrefix("provider: ") }.map { String($0.dropFirst(10)) }
            .filter { !$0.hasPrefix("ofi_") && !$0.contains(";") }
        #expect(Set(cores).isSuperset(of: ["tcp", "sockets"]), "\(cores)")
        for core in Set(cores) {
            #expect(streams.output.contains("fabric: \(core):"), "over \(core): \(streams.output)")
        }
        #expect(!streams.output.contains("provider: tcp"), "only rstream answers FI_EP_SOCK_STREAM here")
        // The same-host transport has entries of its own, after the cores' (and only those when asked).
        #expect(streams.output.contains("fabric: shm:"), "\(streams.output)")
        let sameHost = try run("/usr/bin/fi_info", ["-t", "FI_EP_SOCK_STREAM"], environment: providerEnvironment(core: "shm")).output
        let fabrics = sameHost.split(separator: "\n").filter { $0.contains("fabric: ") }
        #expect(!fabrics.isEmpty && fabrics.allSatisfy { $0.contains("fabric: shm:") }, "\(sameHost)")
        let iwarp = try run("/usr/bin/fi_info", ["-p", "rstream", "-v"], environment: providerEnvironment(core: "tcp"))
        #expect(iwarp.output.contains("FI_PROTO_RSTREAM") && iwarp.output.contains("FI_THREAD_SAFE")
                && iwarp.output.contains("FI_PROGRESS_MANUAL"), "\(iwarp.output)")
    }

    @Test(arguments: [("tcp", false, nil), ("tcp", true, nil), ("sockets", false, nil), ("net", false, nil),
                      ("tcp", false, "wildcard"), ("tcp", false, "0.0.0.0"), ("shm", false, nil), ("shm", false, "wildcard")])
    func greetingBothWays(core: String, iwarp: Bool, listen: String?) throws {
        let (server, client) = try pair(["greeting-server"], { ["greeting-client", "127.0.0.1", String($0)] },
                                        environment: providerEnvironment(core: core, iwarp: iwarp, listen: listen))
        #expect(server.contains("server ok") && client.contains("client ok"))
    }

    /// Over the core and over shared memory (`shm`: the same-host entries).
    @Test(arguments: ["plain", "vector", "msg"], ["tcp", "shm"])
    func twoHundredFiftySixMiBEachWayWithChecksums(mode: String, core: String) throws {
        let (server, client) = try pair(["bulk-server", mode, "256"], { ["bulk-client", "127.0.0.1", String($0), mode, "256"] },
                                        environment: providerEnvironment(core: core))
        // Each side checked every byte; the checksums must also cross over exactly.
        let s = server.split(separator: " "), c = client.split(separator: " ")
        #expect(s.count >= 10 && c.count >= 10, "\(server) / \(client)")
        guard s.count >= 10, c.count >= 10 else { return }
        #expect(s[1] == "268435456" && s[6] == "268435456" && c[1] == "268435456" && c[6] == "268435456")
        #expect(s[4].dropLast() == c[9].trimmingCharacters(in: .whitespacesAndNewlines), "server's sent = client's received")
        #expect(c[4].dropLast() == s[9].trimmingCharacters(in: .whitespacesAndNewlines), "client's sent = server's received")
    }

    @Test(arguments: ["tcp", "shm"])
    func pollOnTheWaitDescriptorThenPeek(core: String) throws {
        let (_, client) = try pair(["peek-server"], { ["peek-client", "127.0.0.1", String($0)] }, environment: providerEnvironment(core: core))
        #expect(client.contains("peek ok"))
    }

    @Test func everyOptionAtAndBeyondItsLimitsAndCallsThatDoNotApply() throws {
        let result = try run(program.path, ["options"], environment: providerEnvironment())
        #expect(result.status == 0, "\(result.errors)")
        #expect(result.output.contains("options ok"))
    }

    @Test(arguments: ["tcp", "shm"])
    func refusedAndRejectedConnectionsAreErrorEntries(core: String) throws {
        let unused = try run(program.path, ["refused", "127.0.0.1", "1"], environment: providerEnvironment(core: core))
        #expect(unused.status == 0 && unused.output.contains("refused ok"), "\(unused.errors)")
        let (_, client) = try pair(["reject-server"], { ["reject-client", "127.0.0.1", String($0)] }, environment: providerEnvironment(core: core))
        #expect(client.contains("reject ok"))
    }

    // Before the purge at close the refusal stayed queued, fi_eq_read answered -FI_EAVAIL and
    // fi_eq_readerr read the freed fid. (valgrind 3.19 cannot read the Swift toolchain's DWARF 5,
    // so the provider is not run under it here; NOTES.md.)
    @Test(arguments: ["tcp", "shm"])
    func aClosedEndpointsQueuedEventsGoWithIt(core: String) throws {
        let result = try run(program.path, ["closed-with-events", "127.0.0.1", "1"], environment: providerEnvironment(core: core))
        #expect(result.status == 0 && result.output.contains("closed with events ok"), "\(result.output) \(result.errors)")
    }

    // libfabric 1.17's fabtests `stream_msg`, the one upstream test of FI_EP_SOCK_STREAM, asks for
    // automatic control progress; the provider used to answer -FI_ENODATA.
    @Test(arguments: ["tcp", "shm"])
    func fabtestsStreamMsgHintsAndShape(core: String) throws {
        let (server, client) = try pair(["stream-msg-server"], { ["stream-msg-client", "127.0.0.1", String($0)] }, environment: providerEnvironment(core: core))
        #expect(server.contains("stream_msg server ok") && client.contains("stream_msg client ok"))
    }

    // Protocol v4 through the provider: a peer that stops calling ends the stream with
    // -FI_ETIMEDOUT and an error entry; RSTREAM_PEER_TIMEOUT is checked where endpoints are made.
    @Test(arguments: ["tcp", "shm"])
    func aSilentPeerIsATimeoutForC(core: String) throws {
        let (_, client) = try pair(["silent-server"], { ["timeout-client", "127.0.0.1", String($0)] }, environment: providerEnvironment(core: core))
        #expect(client.contains("timeout ok"), "\(client)")
    }

    @Test(arguments: ["tcp", "shm"])
    func sixtyFourConnectionsOnOneEventQueue(core: String) throws {
        let (server, client) = try pair(["echo-server", "64"], { ["echo-clients", "127.0.0.1", String($0), "64", "1048576"] },
                                        environment: providerEnvironment(core: core))
        #expect(server.contains("echoed 64 connections") && client.contains("64 connections echoed"))
    }

    /// A C server written the usual way: one epoll over the event queue's and every endpoint's
    /// `FI_GETWAIT` descriptor, `fi_trywait` before `epoll_wait`, echoing 1,000 connections whose
    /// client checks every byte. In iWarp mode over tcp the streams share completion queues and
    /// each descriptor is a flat eventfd; before, `EPOLL_CTL_ADD` of the 50th to 92nd endpoint's
    /// nested epoll set failed with EINVAL. Over shared memory each descriptor is an epoll set of
    /// the endpoint's set-up socket and eventfd; before, the listener kept 64 connections whose
    /// request it had not read and dropped the oldest, so a burst of a thousand clients was reset.
    @Test(arguments: ["tcp", "shm"])
    func aThousandConnectionsServedFromOneEpoll(transport: String) throws {
        // Each side needs about 2,100 descriptors over tcp, 3,100 over shared memory (a socket, an
        // eventfd and the epoll set of the two per endpoint); children inherit the limit.
        var saved = rlimit()
        let known = getrlimit(Int32(RLIMIT_NOFILE.rawValue), &saved) == 0
        if known, saved.rlim_cur < 4096, saved.rlim_max > saved.rlim_cur {
            var raised = saved
            raised.rlim_cur = min(saved.rlim_max, 4096)
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised)
        }
        defer { if known { _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &saved) } }
        let (server, client) = try pair(["epoll-echo-server", "1000"], { ["echo-clients", "127.0.0.1", String($0), "1000", "65536"] },
                                        environment: transport == "shm" ? providerEnvironment(core: "shm") : providerEnvironment(iwarp: true))
        #expect(server.contains("echoed 1000 connections") && client.contains("1000 connections echoed 65536 bytes each"),
                "\(server) \(client)")
    }

    /// C programs that leave with the reactor busy reading their shared queues (iWarp mode: the
    /// streams share queues). libfabric's destructor cleans up each provider and unloads the
    /// ones it loaded (`cleanup`, then `dlclose`); the client does that itself and lives on
    /// 300 ms ("unload"), or calls `exit` ("exit"); the server, its client gone, exits on its
    /// failed check, which must name a reset code. Before, the reactor's thread ran on in the
    /// unloaded library: the "unload" client crashed with SIGSEGV in 3 of 4 runs, and a server
    /// now and then; and the server's receive failed with -FI_ECANCELED in 2 of 4. The unload
    /// case also calls `setuid`, whose signal to every thread (SIGSETXID) no thread can block:
    /// a thread parked in `pause()` returned from it into the unloaded code.
    @Test(arguments: ["unload", "exit"], 1...2)
    func leavingWithTheReactorBusyDoesNotCrash(leave: String, round: Int) throws {
        let environment = providerEnvironment(iwarp: true)
        let side = try ServerSide(["epoll-echo-server", "4"], executable: program, environment: environment) { line in
            line.hasPrefix("port ") ? Int(line.dropFirst(5)) : nil
        }
        #expect(side.port > 0, "the server printed its port")
        let client = try run(program.path, ["echo-clients", "127.0.0.1", String(side.port), "4", "100000000", leave, "4000000"],
                             environment: environment)
        let server = side.finish()
        #expect(client.status == 0 && client.output.contains("leaving with"), "client: \(client.status) \(client.output) \(client.errors)")
        if leave == "unload" { #expect(client.output.contains("lived on 300 ms after the provider's unload"), "\(client.output)") }
        // A reset code, not the core's flushed entry (-FI_ECANCELED came first at times).
        let resets = [ECONNRESET, EPIPE, ENOTCONN, ECONNABORTED, ESHUTDOWN].map { "= -\($0) (" }
        #expect(server.status == 1 && resets.contains { server.errors.contains($0) }, "server: \(server.status) \(server.errors)")
    }

    /// A hostile peer's bad connection blocks never reach the C server as FI_CONNREQ: each is
    /// refused with its reason, and the server goes on to serve a good client.
    @Test func badConnectionBlocksAreRefusedBeforeTheCServerSeesThem() throws {
        let server = try ServerSide(["echo-server", "1"], executable: program, environment: providerEnvironment()) { line in
            line.hasPrefix("port ") ? Int(line.dropFirst(5)) : nil
        }
        let good = ConnectionBlock(baseAddress: 0, key: 1, ringSize: 4096, rxCredits: 8, iwarp: false).encoded
        var version = good; version[22] = 2
        var flags = good; flags[23] = 0x80
        var ring = good; ring[16...19] = [0, 0, 0, 1]
        let shape = EndpointShape(sendRingSize: 4096, receiveRingSize: 4096, txQueueSize: 64, rxCredits: 64, iwarp: false)
        for (name, block, reason) in [("short", Array(good.prefix(10)), "10 bytes"), ("version 2", version, "version 2"),
                                      ("unknown flags", flags, "unknown flags"), ("ring of 1 byte", ring, "ring size 1")] {
            let offered = try ActiveConnector.offer(host: "127.0.0.1", port: UInt16(server.port), shape: shape,
                                                    requirements: CoreRequirements(provider: "tcp", iwarp: false),
                                                    block: block, deadline: .now + .seconds(10))
            guard case .failed(let code, let data) = offered.event else {
                Issue.record("\(name): expected a rejection, got \(offered.event)")
                continue
            }
            #expect(code == ECONNREFUSED, "\(name)")
            #expect(String(decoding: data, as: UTF8.self).contains(reason), "\(name): \(String(decoding: data, as: UTF8.self))")
        }
        let client = try run(program.path, ["echo-clients", "127.0.0.1", String(server.port), "1", "100000"], environment: providerEnvironment())
        let s = server.finish()
        #expect(client.status == 0, "\(client.errors)")
        #expect(s.status == 0 && s.output.contains("echoed 1 connections"), "the server served the good client: \(s.errors)")
    }

    @Test(arguments: ["tcp", "shm"])
    func fourSendersAndFourReceiversOnOneEndpoint(core: String) throws {
        let (server, client) = try pair(["echo-server", "1"], { ["threads-client", "127.0.0.1", String($0)] }, environment: providerEnvironment(core: core))
        #expect(server.contains("echoed 1 connections") && client.contains("threads ok"))
    }

    @Test(arguments: [false, true])
    func cClientAndSwiftServer(iwarp: Bool) throws {
        let server = try ServerSide(["listen", "--host", "127.0.0.1", "--port", "0", "--once", "--echo", "--provider", "tcp"]
                                        + (iwarp ? ["--iwarp"] : []),
                                    executable: productsDirectory.appendingPathComponent("rstream"),
                                    environment: providerEnvironment()) { line in
            line.split(separator: ":").last.flatMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        }
        #expect(server.port > 0)
        let client = try run(program.path, ["echo-clients", "127.0.0.1", String(server.port), "1", "20000000"],
                             environment: providerEnvironment(iwarp: iwarp))
        let s = server.finish()
        #expect(client.status == 0, "C client: \(client.errors)")
        #expect(s.status == 0, "Swift server: \(s.errors)")
    }

    @Test func theReadmeCExampleGreetsASwiftListener() throws {
        let readme = try String(contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("README.md"), encoding: .utf8)
        let block = try #require(readme.components(separatedBy: "```c\n").dropFirst().first?.components(separatedBy: "```").first)
        #expect(block.split(separator: "\n").count <= 22, "a dozen lines of body, includes and braces aside")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("rstream-readme-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let source = dir.appendingPathComponent("hello.c"), binary = dir.appendingPathComponent("hello")
        try block.write(to: source, atomically: true, encoding: .utf8)
        let flags = try run("/usr/bin/pkg-config", ["--cflags", "--libs", "libfabric"]).output
            .split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.filter { !$0.isEmpty }
        let compiled = try run(cCompiler, ["-Wall", "-Werror", "-o", binary.path, source.path] + flags)
        #expect(compiled.status == 0, "\(compiled.errors)")
        let server = try ServerSide(["listen", "--host", "127.0.0.1", "--port", "0", "--once", "--provider", "tcp"],
                                    executable: productsDirectory.appendingPathComponent("rstream"),
                                    environment: providerEnvironment()) { line in
            line.split(separator: ":").last.flatMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        }
        let hello = try run(binary.path, ["127.0.0.1", String(server.port)], environment: providerEnvironment())
        let s = server.finish()
        #expect(hello.status == 0, "\(hello.errors)")
        #expect(s.status == 0 && s.output == "hello from C\n", "the listener printed \(s.output), \(s.errors)")
    }

    @Test func swiftClientAndCServer() throws {
        let server = try ServerSide(["echo-server", "1"], executable: program, environment: providerEnvironment()) { line in
            line.hasPrefix("port ") ? Int(line.dropFirst(5)) : nil
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("rstream-interop-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let input = dir.appendingPathComponent("in"), output = dir.appendingPathComponent("out")
        var bytes = [UInt8](repeating: 0, count: 20 << 20)
        var x: UInt64 = 0x9E3779B97F4A7C15
        for i in bytes.indices { x ^= x << 13; x ^= x >> 7; x ^= x << 17; bytes[i] = UInt8(truncatingIfNeeded: x) }
        try Data(bytes).write(to: input)
        #expect(FileManager.default.createFile(atPath: output.path, contents: nil))
        let connect = Process()
        connect.executableURL = productsDirectory.appendingPathComponent("rstream")
        connect.arguments = ["connect", "127.0.0.1", String(server.port), "--provider", "tcp"]
        connect.standardInput = try FileHandle(forReadingFrom: input)
        connect.standardOutput = try FileHandle(forWritingTo: output)
        try connect.run()
        connect.waitUntilExit()
        let s = server.finish()
        #expect(connect.terminationStatus == 0)
        #expect(s.status == 0, "C server: \(s.errors)")
        #expect(try Data(contentsOf: output) == Data(bytes), "the C server echoed every byte")
    }
}
