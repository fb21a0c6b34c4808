import CSameHost
import Foundation
import RStream
@_spi(Benchmarks) import RStreamKernel
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// What a child process writes on a pipe, gathered as it comes.
final class PipeText: @unchecked Sendable {
    private let text = Locked("")
    private let done = DispatchSemaphore(value: 0)
    init(_ pipe: Pipe) {
        let handle = pipe.fileHandleForReading
        Thread.detachNewThread { [self] in
            while true {
                let data = handle.availableData
                if data.isEmpty { break }
                text.withLock { $0 += String(decoding: data, as: UTF8.self) }
            }
            done.signal()
        }
    }
    var value: String { text.withLock { $0 } }
    /// Waits until `needle` appears `count` times (or `timeout` passes); true if it did.
    func waitFor(_ needle: String, count: Int = 1, timeout: Duration = .seconds(20)) -> Bool {
        let end = ContinuousClock.now + timeout
        while ContinuousClock.now < end {
            if value.components(separatedBy: needle).count - 1 >= count { return true }
            usleep(2000)
        }
        return false
    }
}

/// Starts `rstream listen` on an ephemeral port of 127.0.0.1; returns it, the port, and its stderr.
func startSameHostListener(_ extra: [String], stdout: Any = FileHandle.nullDevice) throws -> (Process, UInt16, PipeText) {
    let listen = rstream(["listen", "--host", "127.0.0.1", "--port", "0"] + extra)
    let errors = Pipe()
    listen.standardOutput = stdout
    listen.standardError = errors
    try listen.run()
    let text = PipeText(errors)
    #expect(text.waitFor("\n"))
    let line = text.value.split(separator: "\n").first.map(String.init) ?? ""
    let port = UInt16(line.split(separator: ":").last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "") ?? 0
    return (listen, port, text)
}

@Suite(.serialized) struct SameHostProcessTests {
    /// 64 MiB through `rstream connect` to `rstream listen --echo` and back, both directions at
    /// once, over shared memory with default, small and large rings, and default rings placed up
    /// front: identical bytes.
    @Test(arguments: [[String](), ["--send-ring", "4096", "--recv-ring", "4096"], ["--send-ring", "1048575", "--recv-ring", "1048575"], ["--prefault-rings"]])
    func sixtyFourMiBEchoedThroughTheCommandArriveIdentical(rings: [String]) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("rstream-shm-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let input = dir.appendingPathComponent("in"), output = dir.appendingPathComponent("out")
        var bytes = [UInt8](repeating: 0, count: 64 << 20)
        PatternStream(seed: 91).fill(&bytes, count: bytes.count, from: 0)
        try Data(bytes).write(to: input)
        #expect(FileManager.default.createFile(atPath: output.path, contents: nil))

        let (listen, port, _) = try startSameHostListener(["--once", "--echo", "--provider", "shm"] + rings)
        let connect = rstream(["connect", "127.0.0.1", String(port), "--provider", "shm"] + rings)
        let errors = Pipe()
        connect.standardInput = try FileHandle(forReadingFrom: input)
        connect.standardOutput = try FileHandle(forWritingTo: output)
        connect.standardError = errors
        try connect.run()
        let text = PipeText(errors)
        connect.waitUntilExit()
        listen.waitUntilExit()
        #expect(connect.terminationStatus == 0, "\(text.value)")
        #expect(listen.terminationStatus == 0)
        #expect(text.value.contains("over shm"), "\(text.value)")
        let received = try Data(contentsOf: output)
        #expect(received.count == bytes.count)
        #expect(received == Data(bytes))
    }

    /// The listener process killed with SIGKILL while a stream is open: the client reports a reset
    /// after every byte that was echoed, and does not hang.
    @Test func aKilledListenerIsAResetForTheClient() throws {
        let (listen, port, _) = try startSameHostListener(["--echo", "--provider", "shm"])
        defer { kill(listen.processIdentifier, SIGKILL); listen.waitUntilExit() }
        let client = try StreamConnection.connect(host: "127.0.0.1", port: port, options: sameHostOptions())
        #expect(client.transport == "shm")
        try client.sendAll([UInt8](repeating: 7, count: 1000))
        var echoed = 0
        var buffer = [UInt8](repeating: 0, count: 4096)
        while echoed < 1000 { echoed += try client.receive(into: &buffer) }
        kill(listen.processIdentifier, SIGKILL)
        expectError(.connectionReset) {
            // Bounded: an end of stream (0) where a reset is due fails the test instead of spinning.
            for _ in 0..<100_000 where try client.receive(into: &buffer) == 0 { return }
        }
        client.close(linger: .zero)
    }

    /// A receiver sleeping in poll() on the descriptor, armed by `prepareToWait`, while the peer
    /// process is itself asleep (in read(2) of its standard input): the peer's first bytes ring
    /// the doorbell, poll returns, and the bytes are there to peek at.
    @Test func pollThenPeekWakesForASleepingPeer() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: sameHostOptions())
        let connect = rstream(["connect", "127.0.0.1", String(listener.port), "--provider", "shm"])
        let feed = Pipe()
        connect.standardInput = feed
        connect.standardOutput = FileHandle.nullDevice
        try connect.run()
        defer { kill(connect.processIdentifier, SIGKILL); connect.waitUntilExit() }
        let stream = try listener.accept(timeout: .seconds(10))
        let fd = try #require(stream.descriptor)
        let start = ContinuousClock.now
        let feeder = Background { () -> Void in
            usleep(300_000)
            feed.fileHandleForWriting.write(Data("wake".utf8))
        }
        var woke = false
        while stream.readableBytes == 0 && ContinuousClock.now - start < .seconds(10) {
            if stream.prepareToWait(for: .readable) {
                var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                if poll(&pfd, 1, 10_000) > 0 { woke = true }
            }
        }
        try feeder.value()
        #expect(woke)
        #expect(stream.readableBytes == 4)
        #expect(try stream.receive(maxBytes: 4) == Array("wake".utf8))
        try? feed.fileHandleForWriting.close()
        stream.close(linger: .zero)
    }

    /// 1,000 same-host streams opened, used and closed: afterwards this process holds as many
    /// descriptors and mappings as before.
    @Test func aThousandConnectionsLeakNoDescriptorsOrMappings() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: sameHostOptions())
        func cycle() throws {
            let accepted = Background { try listener.accept(timeout: .seconds(10)) }
            let client = try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: sameHostOptions())
            let server = try accepted.value()
            try client.sendAll([1, 2, 3])
            #expect(try server.receive(maxBytes: 3) == [1, 2, 3])
            client.close(linger: .zero)
            server.close(linger: .zero)
        }
        for _ in 0..<10 { try cycle() } // the first ones make the process's lasting state
        try SameHostCensus.expectNothingLeft { for _ in 0..<1000 { try cycle() } }
    }
}

/// A peer process that breaks the same-host protocol in its shared memory: the test process plays
/// it against `rstream listen`, which must end each stream with a protocol error, read and write
/// nothing out of bounds (the ASan run: `make asan`), and serve the next connection.
@Suite(.serialized) struct SameHostHostilePeerTests {
    static let shape = EndpointShape(sendRingSize: 4096, receiveRingSize: 4096, txQueueSize: 64, rxCredits: 64, iwarp: false)

    /// The peer's segments as a connected hostile client sees them.
    struct Session: ~Copyable {
        let socket: Int32
        let offer: SameHostOffer
        let peer: ConnectionBlock
        let peerInbound: SharedSegment
        var capacity: Int { WordRing.capacity(forCredits: peer.rxCredits) }
        func slot(_ index: Int) -> UnsafeMutablePointer<UInt64> {
            (peerInbound.base + index * WordRing.slotBytes).assumingMemoryBound(to: UInt64.self)
        }
        /// Writes a slot as the producer would (the sequence in the high half), and rings.
        func put(_ index: Int, sequence: UInt32, word: UInt32) {
            slot(index).pointee = UInt64(sequence) << 32 | UInt64(word)
            _ = rs_ring_doorbell(socket)
        }
        deinit { close(socket) }
    }

    /// The listener's answer on the set-up socket `fd`, waited for as the library waits.
    static func answer(on fd: Int32) throws -> UnixSocket.Message {
        try BlockingWait(deadline: .now + .seconds(10), waitSet: nil, what: "the listener's answer")
            .run(readable: { fd }) { (_) throws(RStreamError) in try UnixSocket.receive(fd) }
    }

    /// `asOlderPeer`: its status segment lacks the wake-request format marker, as a build from
    /// before wake requests carried interests.
    static func connect(port: UInt16, asOlderPeer: Bool = false) throws -> Session {
        let fd = try dial(port: port)
        let offer = try SameHostOffer(shape: shape, socket: fd)
        if asOlderPeer { (offer.status.base + 8).storeBytes(of: 0, as: UInt64.self) }
        try UnixSocket.send(fd, offer.block.encoded, descriptors: offer.descriptors)
        let message = try answer(on: fd)
        try #require(message.descriptors.count == 2, "\(String(decoding: message.bytes, as: UTF8.self))")
        let peer = try ConnectionBlock.decode(message.bytes, expectIwarp: false)
        let inbound = try SharedSegment(mapping: message.descriptors[0], byteCount: SameHostLayout.inboundBytes(ringSize: peer.ringSize),
                                        writable: true, what: "inbound")
        close(message.descriptors[1])
        return Session(socket: fd, offer: offer, peer: peer, peerInbound: inbound)
    }

    /// A set-up socket connected to the same-host listener of 127.0.0.1 `port`, bound to a
    /// client name as the library's client binds it (`named`), or to `name`, or to none.
    static func dial(port: UInt16, named: ClientName = .asTheLibraryDoes) throws -> Int32 {
        let fd = try UnixSocket.make()
        let dialled = SocketAddress.make(ip: [127, 0, 0, 1], port: port)
        switch named {
        case .asTheLibraryDoes: _ = try SameHostName.bindClient(fd, dialling: dialled)
        case .name(let name): #expect(try UnixSocket.bind(fd, name: name))
        case .none: break
        }
        #expect(try UnixSocket.connect(fd, name: SameHostName.listener(boundTo: dialled)!) == .connected)
        return fd
    }

    enum ClientName {
        case asTheLibraryDoes
        case name(String)
        case none
    }

    /// Sends a hand-made request (block bytes and descriptors) and returns the refusal's text.
    static func refusal(port: UInt16, block: [UInt8], descriptors: [Int32], named: ClientName = .asTheLibraryDoes) throws -> String {
        let fd = try dial(port: port, named: named)
        defer { close(fd) }
        try UnixSocket.send(fd, block, descriptors: descriptors)
        let answer = try answer(on: fd)
        answer.closeDescriptors()
        #expect(answer.descriptors.isEmpty)
        return String(decoding: answer.bytes, as: UTF8.self)
    }

    static let data1 = NotificationWord.data(length: 1).encoded

    /// The attacked listener still serves: a well-behaved client gets its bytes through, and the
    /// listener reported no crash and no sanitizer finding.
    static func expectStillServing(port: UInt16, errors: PipeText) throws {
        let good = try StreamConnection.connect(host: "127.0.0.1", port: port, options: sameHostOptions(), timeout: .seconds(10))
        try good.sendAll(Array("still serving".utf8))
        try good.shutdown()
        try good.flush(timeout: .seconds(10))
        good.close()
        #expect(!errors.value.contains("Fatal error") && !errors.value.contains("AddressSanitizer"), "\(errors.value)")
    }

    @Test func scribblesInTheWordRingEndTheStreamAndTheListenerGoesOn() throws {
        let (listen, port, errors) = try startSameHostListener(["--provider", "shm"], stdout: Pipe())
        defer { kill(listen.processIdentifier, SIGKILL); listen.waitUntilExit() }
        var failures = 0
        func expectProtocolError(_ what: String, _ needle: String, scribble: (borrowing Session) -> Void) throws {
            let session = try Self.connect(port: port)
            scribble(session)
            failures += 1
            #expect(errors.waitFor("connection failed", count: failures), "\(what): \(errors.value)")
            let last = errors.value.components(separatedBy: "connection failed").last ?? ""
            #expect(last.contains("protocolViolation") && (needle.isEmpty || last.contains(needle)), "\(what): \(last)")
        }
        var generator = SystemRandomNumberGenerator()
        try expectProtocolError("random words", "") { s in
            for i in 0..<s.capacity { s.put(i, sequence: UInt32(i + 1), word: UInt32.random(in: 1...UInt32.max, using: &generator)) }
        }
        try expectProtocolError("a sequence out of range", "holds sequence 12345") { s in
            s.put(0, sequence: 12345, word: Self.data1)
        }
        try expectProtocolError("a sequence going backwards", "holds sequence 1") { s in
            s.peerInbound.base.advanced(by: SameHostLayout.wordRingBytes).storeBytes(of: 65, as: UInt8.self)
            s.put(0, sequence: 1, word: Self.data1)
            usleep(50_000)
            s.put(1, sequence: 1, word: Self.data1)
        }
        try expectProtocolError("an overfilled ring", "overfilled") { s in
            s.put(0, sequence: UInt32(1 + s.capacity), word: Self.data1)
        }
        try expectProtocolError("DATA beyond the ring", "beyond the") { s in
            s.put(0, sequence: 1, word: NotificationWord.data(length: s.peer.ringSize + 1).encoded)
        }
        try expectProtocolError("credits never lent", "credits") { s in
            s.put(0, sequence: 1, word: NotificationWord.control(freed: 0, credits: 5, fin: false).encoded)
        }
        try Self.expectStillServing(port: port, errors: errors)
    }

    /// The rings travel over the set-up socket, whose two ends are open files of their own: a
    /// peer that clears `O_NONBLOCK` on its end and floods the listener with rings must not make
    /// the listener block when it arms its wait set (draining the flood), and it still serves.
    /// Before, with an eventfd handed to the peer as the doorbell, the peer could clear the flag
    /// of the listener's own file: its next `arm()` read blocked for ever and it served nobody
    /// again. With separate files this is a guard against regressions more than a live danger;
    /// the listener's rings to a peer that never drains are `MSG_DONTWAIT` sends, and a full
    /// queue is not reached here.
    @Test func aPeerFloodingTheSetUpSocketCannotHangTheListener() throws {
        let (listen, port, errors) = try startSameHostListener(["--provider", "shm"], stdout: Pipe())
        defer { kill(listen.processIdentifier, SIGKILL); listen.waitUntilExit() }
        do {
            let session = try Self.connect(port: port)
            _ = fcntl(session.socket, F_SETFL, 0)
            // Fill the listener's end as far as it takes.
            var one: UInt8 = 1
            while send(session.socket, &one, 1, Int32(MSG_DONTWAIT)) > 0 {}
            usleep(300_000) // the listener arms, drains and sleeps meanwhile
            session.peerInbound.base.advanced(by: SameHostLayout.wordRingBytes).storeBytes(of: 65, as: UInt8.self)
            session.put(0, sequence: 1, word: Self.data1)
            usleep(100_000)
        } // the session ends here (the listener serves one stream at a time)
        try Self.expectStillServing(port: port, errors: errors)
    }

    /// A peer that rings and then leaves: its rings wait, undrained, ahead of its hang-up on the
    /// set-up socket (a stream that only busy-polls never arms, so never drains them); the
    /// stream still sees it leave (`POLLRDHUP`, whatever is queued), where a look at what comes
    /// first on the socket would see only rings.
    @Test func aPeerLeavingBehindItsRingsIsSeenToLeave() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: sameHostOptions())
        defer { listener.close() }
        let accepted = Background { try listener.accept(timeout: .seconds(10)) }
        do {
            let session = try Self.connect(port: listener.port)
            for _ in 0..<100 { _ = rs_ring_doorbell(session.socket) }
        } // the session closes its socket here
        let server = try accepted.value()
        defer { server.close(linger: .zero) }
        var buffer = [UInt8](repeating: 0, count: 16)
        let deadline = ContinuousClock.now + .seconds(10)
        var outcome: RStreamError?
        while outcome == nil && ContinuousClock.now < deadline {
            do throws(RStreamError) { _ = try server.tryReceive(into: &buffer) } catch { outcome = error }
        }
        #expect(outcome?.kind == .connectionReset, "\(String(describing: outcome))")
    }

    /// The name a client's socket carries is the peer's word: none, one that is no client name,
    /// and one claiming an address this listener does not serve are each refused with the reason,
    /// and the listener goes on.
    @Test func aRequestWithoutATrueClientNameIsRefusedWithAReason() throws {
        let (listen, port, errors) = try startSameHostListener(["--provider", "shm"])
        defer { kill(listen.processIdentifier, SIGKILL); listen.waitUntilExit() }
        let cases: [(ClientName, String)] = [
            (.none, "carries no client name"),
            (.name("someone-else"), "carries no client name"),
            (.name("rstream-shm-peer:127.0.0.1:\(port):80"), "carries no client name"),
            (.name("rstream-shm-peer:127.0.0.1:\(port):050000"), "carries no client name"),
            (.name("rstream-shm-peer:127.0.0.9:\(port):50000"), "does not serve"),
            (.name("rstream-shm-peer:127.0.0.1:\(port &+ 1):50000"), "this listener serves port \(port)"),
        ]
        for (named, needle) in cases {
            let offer = try SameHostOffer(shape: Self.shape, socket: -1)
            // A request that is right but for the name.
            let reason = try Self.refusal(port: port, block: offer.block.encoded, descriptors: offer.descriptors, named: named)
            #expect(reason.contains(needle), "\(named): \(reason)")
        }
        #expect(errors.waitFor("connection failed", count: cases.count), "\(errors.value)")
        try Self.expectStillServing(port: port, errors: errors)
    }

    @Test func badSegmentsAndDescriptorsAreRefusedWithAReason() throws {
        let (listen, port, errors) = try startSameHostListener(["--provider", "shm"])
        defer { kill(listen.processIdentifier, SIGKILL); listen.waitUntilExit() }
        let block = ConnectionBlock(baseAddress: 0, key: 0, ringSize: 32768, rxCredits: 64, iwarp: false).encoded
        func memfd(_ bytes: Int, seal: Bool) -> Int32 {
            let fd = rs_memfd_create("hostile")
            _ = ftruncate(fd, off_t(bytes))
            if seal { _ = rs_seal(fd, 0) }
            return fd
        }
        var pipeEnds: [Int32] = [0, 0]
        _ = pipe(&pipeEnds)
        defer { close(pipeEnds[0]); close(pipeEnds[1]) }
        let cases: [(String, [Int32], String)] = [
            ("one descriptor", [memfd(65536, seal: true)], "descriptors"),
            ("three descriptors (a doorbell, as before)", [memfd(65536, seal: true), memfd(4096, seal: true), memfd(4096, seal: true)], "descriptors"),
            ("an unsealed segment", [memfd(65536, seal: false), memfd(4096, seal: true)], "not sealed"),
            ("a segment smaller than its ring", [memfd(8192, seal: true), memfd(4096, seal: true)], "announced"),
            ("a file that is no segment", [pipeEnds[0], memfd(4096, seal: true)], "not a sealable"),
        ]
        for (what, descriptors, needle) in cases {
            let reason = try Self.refusal(port: port, block: block, descriptors: descriptors)
            #expect(reason.contains(needle), "\(what): \(reason)")
            for fd in descriptors where !pipeEnds.contains(fd) { close(fd) }
        }
        #expect(errors.waitFor("connection failed", count: cases.count), "\(errors.value)")
        try Self.expectStillServing(port: port, errors: errors)
    }
}
