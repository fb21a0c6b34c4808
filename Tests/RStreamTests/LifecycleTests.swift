import Foundation
import RStream
import RStreamKernel
import Synchronization
import Testing

/// A stream's and a listener's whole life: a close from another thread ends each kind of blocked
/// call, the listener closes and frees its port, a lingering close reports whether everything
/// left, and each end tells its own and the peer's address. Over tcp and over shared memory.
@Suite(.serialized) struct LifecycleTests {
    static let transports = ["core", "shm"]

    static func options(_ transport: String, _ configure: (inout StreamOptions) -> Void = { _ in }) -> StreamOptions {
        loopbackOptions {
            if transport == "shm" { $0.provider = "shm" }
            configure(&$0)
        }
    }

    /// Orders events across threads: each `stamp` is later than every one before it.
    final class Sequence: Sendable {
        private let next = Atomic<Int>(0)
        func stamp() -> Int { next.add(1, ordering: .sequentiallyConsistent).newValue }
    }

    /// Fills the send direction of `stream` until nothing more is accepted (the peer reads nothing).
    static func fill(_ stream: StreamConnection) throws {
        let chunk = [UInt8](repeating: 7, count: 4096)
        while case .sent = try stream.trySend(chunk) {}
    }

    enum Blocked: String, CaseIterable { case receive, send, waitReadable, waitWritable }

    /// The blocked call ends with `.closed` while the close is still lingering (before, it ended
    /// only once the linger was over), rung awake: its sleep did not run out (a sleep lasts at
    /// most 500 ms, so a call nobody rang would still end, late, and the close of a quiet peer
    /// gives up after 250 ms). The server is idle, so only the close can wake it: the close's own
    /// ring, or, over tcp and for a blocked send, the completion of the FIN the close sends, so
    /// that without the close's ring only the same-host receive and readable wait fail.
    @Test(arguments: transports, Blocked.allCases)
    func closeFromAnotherThreadEndsABlockedCall(transport: String, call: Blocked) throws {
        let (client, server) = try connectedPair(Self.options(transport))
        defer { server.close(linger: .zero) }
        try Self.fill(client) // the server reads nothing: a send blocks, and the close lingers
        let order = Sequence()
        let blocked = Background { () -> (error: RStreamError?, stamp: Int, timeouts: Int) in
            let timeoutsBefore = ThreadSleepLog.timedOut
            func ended(_ error: RStreamError?) -> (RStreamError?, Int, Int) { (error, order.stamp(), ThreadSleepLog.timedOut - timeoutsBefore) }
            do {
                switch call {
                case .receive:
                    var buffer = [UInt8](repeating: 0, count: 1 << 20)
                    while true { _ = try client.receive(into: &buffer) } // the talker's byte, then blocked again
                case .send: _ = try client.send([UInt8](repeating: 1, count: 4096))
                case .waitReadable:
                    var buffer = [UInt8](repeating: 0, count: 1 << 20)
                    while true {
                        while case .received = try client.tryReceive(into: &buffer) {}
                        _ = try client.wait(for: .readable)
                    }
                case .waitWritable: while try !client.wait(for: .writable) {}
                }
            } catch let error as RStreamError {
                return ended(error)
            } catch {
                return ended(nil)
            }
            return ended(nil)
        }
        usleep(100_000) // let it block
        let delivered = client.close(linger: .milliseconds(1500))
        let closeReturned = order.stamp()
        let (error, ended, timeouts) = try blocked.value()
        #expect(error?.kind == .closed, "\(call): \(String(describing: error))")
        #expect(ended < closeReturned, "\(call) ended only after the close was over")
        #expect(timeouts == 0, "\(call) woke by its sleep's timeout, not by the close's ring")
        #expect(!delivered, "the server read nothing, yet the close reported everything delivered")
    }

    @Test(arguments: transports)
    func aLingeringCloseReportsWhetherEverythingLeft(transport: String) throws {
        let (client, server) = try connectedPair(Self.options(transport))
        let bytes = [UInt8](repeating: 3, count: 100_000)
        let reader = Background { () -> Int in
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            var total = 0
            while case let n = try server.receive(into: &buffer), n > 0 { total += n }
            return total
        }
        try client.sendAll(bytes)
        #expect(client.close(linger: .seconds(10)), "the server read everything, yet the close reported a loss")
        #expect(try reader.value() == bytes.count)
        #expect(!client.close(), "a second close reports nothing delivered")
        expectError(.closed) { _ = try client.trySend([1]) }
    }

    @Test(arguments: transports)
    func eachEndTellsItsAndThePeersAddress(transport: String) throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: Self.options(transport))
        let accepted = Background { try listener.accept(timeout: .seconds(10)) }
        let client = try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: Self.options(transport))
        let server = try accepted.value()
        let clientLocal = try #require(client.localAddress), clientPeer = try #require(client.peerAddress)
        let serverLocal = try #require(server.localAddress), serverPeer = try #require(server.peerAddress)
        #expect(clientPeer == serverLocal)
        #expect(serverPeer == clientLocal)
        #expect(clientPeer.host == "127.0.0.1" && clientLocal.host == "127.0.0.1")
        #expect(clientPeer.port == listener.port)
        client.close(linger: .zero)
        #expect(client.localAddress == nil && client.peerAddress == nil)
    }

    @Test(arguments: transports)
    func closingTheListenerEndsABlockedAcceptAndFreesThePort(transport: String) throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: Self.options(transport))
        let port = listener.port
        let blocked = Background { () -> (error: RStreamError?, timeouts: Int) in
            let timeoutsBefore = ThreadSleepLog.timedOut
            do {
                _ = try listener.accept()
                return (nil, ThreadSleepLog.timedOut - timeoutsBefore)
            } catch let error as RStreamError {
                return (error, ThreadSleepLog.timedOut - timeoutsBefore)
            }
        }
        usleep(100_000) // let it block
        listener.close()
        let (error, timeouts) = try blocked.value()
        #expect(error?.kind == .closed, "\(String(describing: error))")
        #expect(timeouts == 0, "the accept woke by its sleep's timeout, not by the close's ring")
        expectError(.closed) { _ = try listener.accept(timeout: .zero) }
        listener.close() // a second close does nothing

        // The port and the same-host name are free again, and a new listener serves both.
        let again = try StreamListener(host: "127.0.0.1", port: port, options: Self.options(transport))
        #expect(again.port == port && again.servesSameHost)
        let accepted = Background { try again.accept(timeout: .seconds(10)) }
        let client = try StreamConnection.connect(host: "127.0.0.1", port: port, options: Self.options(transport))
        let server = try accepted.value()
        try client.sendAll([9, 8, 7])
        var buffer = [UInt8](repeating: 0, count: 3)
        #expect(try server.receive(into: &buffer) > 0 && buffer[0] == 9)
        again.close()
        try client.sendAll([6]) // accepted streams outlive their listener
        #expect(try server.receive(into: &buffer) > 0)
    }
}

/// The zero-copy closures may throw and return a value: a throw sends or consumes nothing.
@Suite struct ZeroCopyClosureTests {
    struct Refusal: Error, Equatable { let reason: String }

    @Test(arguments: LifecycleTests.transports)
    func aThrowingBodySendsAndConsumesNothingAndAValueComesBack(transport: String) throws {
        let (client, server) = try connectedPair(LifecycleTests.options(transport))
        #expect(throws: Refusal(reason: "not now")) {
            _ = try client.withSendBuffer { (region) throws -> (count: Int, value: Int) in
                region[0] = 0xEE // written, but not committed
                throw Refusal(reason: "not now")
            }
        }
        let (sent, checksum) = try client.withSendBuffer { region -> (count: Int, value: Int) in
            for i in 0..<3 { region[i] = UInt8(i + 1) }
            return (3, 6)
        }
        #expect(sent == .sent(3) && checksum == 6)
        while server.readableBytes < 3 { usleep(1000) }
        #expect(throws: Refusal(reason: "later")) {
            _ = try server.withReceivedBytes { (_: UnsafeRawBufferPointer) throws -> (consumed: Int, value: Int) in throw Refusal(reason: "later") }
        }
        #expect(server.readableBytes == 3, "a throwing body consumed bytes")
        let (received, first) = try server.withReceivedBytes { bytes -> (consumed: Int, value: UInt8) in (bytes.count, bytes[0]) }
        #expect(received == .received(3) && first == 1, "the byte written before the throw was sent")
        client.close(linger: .zero)
        server.close(linger: .zero)
    }
}

/// What one live stream holds in descriptors, counted in /proc/self/fd with many streams open.
@Suite(.serialized) struct DescriptorBudgetTests {
    /// A blocking wait (a thread's sleep past its busy-poll window), from a function that is not
    /// async, where Swift picks the blocking call.
    static func sleepOnThisThread(_ stream: StreamConnection) throws -> Bool {
        try stream.wait(for: .readable, timeout: .milliseconds(2))
    }

    static func openDescriptors() -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).count
    }

    /// A same-host stream holds one descriptor however it is slept on: its set-up socket (on which
    /// the peer rings it and it rings the peer); a thread asleep on it borrows an eventfd for the
    /// sleep, a task sleeps on the reactor. Two more, its wait set's eventfd and the epoll set of
    /// the two, once its `descriptor` is asked for. Its segments' memfds are closed once the peer
    /// holds them (before, seven; then five, with a socket pair for a doorbell; then three, with
    /// an epoll set and an eventfd made at once; then two once slept on, the eventfd made at the
    /// first sleep).
    @Test func aSameHostStreamHoldsOneDescriptorHoweverItIsSleptOn() async throws {
        let options = LifecycleTests.options("shm")
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: options)
        var streams: [StreamConnection] = []
        let before = Self.openDescriptors()
        let pairs = 100
        for _ in 0..<pairs {
            let accepted = Background { try listener.accept(timeout: .seconds(10)) }
            streams.append(try await StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: options))
            streams.append(try accepted.value())
        }
        // Rounded: a test running beside this one may open or close a few of its own meanwhile.
        func perStream(since count: Int) -> Double { (Double(Self.openDescriptors() - count) / Double(streams.count)).rounded() }
        #expect(perStream(since: before) == 1, "descriptors per same-host stream")
        var buffer = [UInt8](repeating: 0, count: 1)
        for stream in streams { #expect(try stream.tryReceive(into: &buffer) == .wouldBlock) } // a busy-poll makes nothing
        #expect(perStream(since: before) == 1, "descriptors per busy-polled same-host stream")
        // A blocking call that sleeps (past its busy-poll window) makes nothing.
        let slept = Self.openDescriptors()
        for stream in streams { #expect(try !Self.sleepOnThisThread(stream)) }
        #expect(perStream(since: slept) == 0, "more descriptors per same-host stream slept on by a thread")
        #expect(streams.allSatisfy { $0.waitSetForTests?.hasOwnEventfd == false })
        // Nor does a task asleep on the reactor, counted while every one of them sleeps.
        let waitingBefore = Reactor.shared.waiting
        let waits = streams.map { stream in Task { try await stream.wait(for: .readable, timeout: .milliseconds(500)) } }
        let asleepBy = ContinuousClock.now + .seconds(10)
        while Reactor.shared.waiting < waitingBefore + streams.count && ContinuousClock.now < asleepBy { usleep(1000) }
        #expect(Reactor.shared.waiting >= waitingBefore + streams.count)
        #expect(perStream(since: slept) == 0, "more descriptors per same-host stream slept on by a task")
        for wait in waits { #expect(try await !wait.value) }
        #expect(streams.allSatisfy { $0.waitSetForTests?.hasOwnEventfd == false })
        // A receive asleep this way is rung awake by the peer's word, not by its sleep running
        // out.
        let reader = streams[1]
        let timedOut = try #require(reader.waitSetForTests).timedOutSleeps.load(ordering: .relaxed)
        let sleeper = Background { try reader.receive(maxBytes: 1) }
        usleep(100_000)
        try await streams[0].sendAll([41])
        #expect(try sleeper.value() == [41])
        #expect(reader.waitSetForTests?.timedOutSleeps.load(ordering: .relaxed) == timedOut, "the sleeper was rung")
        let asked = Self.openDescriptors()
        for stream in streams { #expect(stream.descriptor != nil) }
        #expect(perStream(since: asked) == 2, "more descriptors per stream polled from outside")
        // They still work: the memory outlives the memfds.
        try await streams[0].sendAll([42])
        #expect(try await streams[1].receive(maxBytes: 1) == [42])
        for stream in streams { await stream.close(linger: .zero) }
        listener.close()
    }
}
