import Foundation
import RStream
import Synchronization
import Testing

/// A connected pair on loopback, accepted in the background.
func connectedPair(_ options: StreamOptions = loopbackOptions()) throws -> (client: StreamConnection, server: StreamConnection) {
    let listener = try StreamListener(host: "127.0.0.1", port: 0, options: options)
    let accepted = Background { try listener.accept(timeout: .seconds(10)) }
    let client = try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: options)
    return (client, try accepted.value())
}

/// A reusable barrier for a fixed number of threads.
final class Barrier: Sendable {
    private let state = Locked((waiting: 0, generation: 0))
    let parties: Int
    init(_ parties: Int) { self.parties = parties }
    func arriveAndWait() {
        let generation = state.withLock { s -> Int in
            s.waiting += 1
            if s.waiting == parties { s.waiting = 0; s.generation += 1; return -1 }
            return s.generation
        }
        guard generation >= 0 else { return }
        while state.withLock({ $0.generation }) == generation { sched_yield() }
    }
}

@Suite(.serialized) struct WaitingTests {
    /// 4 threads waiting on one endpoint all wake when data comes, over many rounds; none hangs.
    @Test func fourWaitersAllWakeEveryRound() throws {
        let rounds = Int(ProcessInfo.processInfo.environment["RSTREAM_WAKE_ROUNDS"] ?? "10000")!
        let (client, server) = try connectedPair(loopbackOptions { $0.busyPollWindow = .zero })
        let start = Barrier(5), woke = Barrier(5)
        let failures = Locked<[String]>([])
        let longestWait = Locked<Duration>(.zero)
        let waiters = (0..<4).map { id in
            Background { () -> Void in
                for round in 0..<rounds {
                    start.arriveAndWait()
                    do {
                        let began = ContinuousClock.now
                        if try !server.wait(for: .readable, timeout: .seconds(10)) {
                            failures.withLock { $0.append("waiter \(id) hung in round \(round)") }
                        }
                        let waited = ContinuousClock.now - began
                        longestWait.withLock { $0 = max($0, waited) }
                    } catch {
                        failures.withLock { $0.append("waiter \(id): \(error)") }
                    }
                    woke.arriveAndWait()
                }
            }
        }
        var byte = [UInt8](repeating: 0, count: 1)
        for round in 0..<rounds {
            start.arriveAndWait()
            if round % 500 == 0 { usleep(2000) } // now and then, let all four reach the descriptor
            try client.sendAll([UInt8(truncatingIfNeeded: round)])
            woke.arriveAndWait()
            #expect(try server.receive(into: &byte) == 1 && byte[0] == UInt8(truncatingIfNeeded: round))
            if !failures.withLock({ $0.isEmpty }) { break }
        }
        for waiter in waiters { try waiter.value() }
        #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0 }.prefix(5))")
        // A sleeper re-checks at least once a second, so a lost wake-up would not hang for ever;
        // it would show here as a wait of about a second.
        #expect(longestWait.withLock { $0 } < .milliseconds(500), "longest wait \(longestWait.withLock { $0 })")
        client.close()
        server.close()
    }

    @Test func aThreadInPollWakesWhenThePeerWritesAfterAPause() throws {
        let (client, server) = try connectedPair()
        let fd = try #require(server.descriptor)
        let writer = Background { () throws -> Void in
            usleep(200_000)
            try client.sendAll(Array("late".utf8))
        }
        var woke = false
        let deadline = ContinuousClock.now + .seconds(10)
        while server.readableBytes == 0 && ContinuousClock.now < deadline {
            if server.prepareToWait(for: .readable) {
                var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                if poll(&pfd, 1, 10_000) > 0 { woke = true }
            }
        }
        try writer.value()
        #expect(woke)
        #expect(server.readableBytes == 4)
        client.close()
        server.close()
    }

    @Test func aListenersDescriptorWakesOnAConnectionRequest() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: loopbackOptions())
        let fd = try #require(listener.descriptor)
        #expect(listener.prepareToWait())
        let port = listener.port
        let client = Background { () throws -> StreamConnection in
            usleep(100_000)
            return try StreamConnection.connect(host: "127.0.0.1", port: port, options: loopbackOptions())
        }
        // A wake-up is not readiness (the core may see the TCP connection before the request it
        // carries): re-arm and poll until the request is there.
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        var wakeUps = 0
        let deadline = ContinuousClock.now + .seconds(10)
        repeat {
            if poll(&pfd, 1, 10_000) == 1 { wakeUps += 1 }
        } while listener.prepareToWait() && ContinuousClock.now < deadline
        #expect(wakeUps >= 1)
        #expect(!listener.prepareToWait()) // the request is there now
        let server = try listener.accept(timeout: .seconds(10))
        try client.value().close()
        server.close()
    }
}

@Suite(.serialized) struct ThreadSafetyTests {
    struct RecordMode: CustomTestStringConvertible, Sendable {
        var recordSize: Int, iwarp: Bool, sameHost = false
        var testDescription: String { "\(recordSize) B records\(iwarp ? ", iWarp" : "")\(sameHost ? ", shared memory" : "")" }
    }

    /// 4 senders and 4 receivers on one stream: fixed-size self-describing records, each sent and
    /// received whole in one call, arrive whole and exactly once. Records that do not divide the
    /// ring (100 B, 1000 B) wrap it: before `trySendWhole` checked and copied in one step, two
    /// senders both passed the check and the second split its record (a trap). In iWarp mode the
    /// DATA word follows its write as a second post, which two threads once both made.
    @Test(arguments: [RecordMode(recordSize: 64, iwarp: false), RecordMode(recordSize: 100, iwarp: false),
                      RecordMode(recordSize: 1000, iwarp: false), RecordMode(recordSize: 100, iwarp: true),
                      RecordMode(recordSize: 100, iwarp: false, sameHost: true), RecordMode(recordSize: 1000, iwarp: false, sameHost: true)])
    func fourSendersFourReceivers(mode: RecordMode) throws {
        let perSender = 2000, recordSize = mode.recordSize
        let (client, server) = try connectedPair(loopbackOptions {
            $0.sendRingSize = 4096; $0.receiveRingSize = 4096; $0.iwarp = mode.iwarp
            if mode.sameHost { $0.provider = "shm" }
        })
        #expect(client.transport == (mode.sameHost ? "shm" : loopbackOptions().provider!))
        let senders = (0..<4).map { id in
            Background { () throws -> Void in
                for seq in 0..<perSender {
                    var record = [UInt8](repeating: UInt8(id), count: recordSize)
                    record.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(seq).littleEndian, toByteOffset: 1, as: UInt32.self) }
                    while try client.trySendWhole(record) == .wouldBlock { _ = try client.wait(for: .writable, timeout: .seconds(1)) }
                }
            }
        }
        let seen = Locked([[Bool]](repeating: [Bool](repeating: false, count: perSender), count: 4))
        let problems = Locked<[String]>([])
        let total = Atomic<Int>(0)
        let receivers = (0..<4).map { _ in
            Background { () throws -> Void in
                var record = [UInt8](repeating: 0, count: recordSize)
                while total.load(ordering: .relaxed) < 4 * perSender {
                    guard case .received = try server.tryReceive(exactly: &record) else {
                        _ = try server.wait(for: .readable, timeout: .milliseconds(50))
                        continue
                    }
                    let id = Int(record[0])
                    let seq = Int(UInt32(littleEndian: record.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 1, as: UInt32.self) }))
                    let whole = id < 4 && seq < perSender && record[5...].allSatisfy { $0 == UInt8(id) }
                    if !whole { // counted too, so a torn record fails the test instead of hanging it
                        problems.withLock { $0.append("torn record \(record.prefix(8))") }
                        total.add(1, ordering: .relaxed)
                        continue
                    }
                    let duplicate = seen.withLock { s -> Bool in defer { s[id][seq] = true }; return s[id][seq] }
                    if duplicate { problems.withLock { $0.append("record \(id)/\(seq) twice") } }
                    total.add(1, ordering: .relaxed)
                }
            }
        }
        for sender in senders { try sender.value() }
        for receiver in receivers { try receiver.value() }
        #expect(problems.withLock { $0 }.isEmpty, "\(problems.withLock { $0 }.prefix(5))")
        #expect(seen.withLock { $0.allSatisfy { $0.allSatisfy { $0 } } })
        client.close()
        server.close()
    }

    /// Send, receive, peek and close racing from different threads: no crash, no hang, and every
    /// call after close reports `.closed`.
    @Test(arguments: ["tcp", "shm"])
    func sendReceivePeekAndCloseRace(transport: String) throws {
        for _ in 0..<20 {
            let (client, server) = try connectedPair(transport == "shm" ? sameHostOptions() : loopbackOptions())
            let stop = Atomic<Bool>(false)
            let workers = [
                Background { () -> Void in while !stop.load(ordering: .relaxed) { _ = try? client.trySend([1, 2, 3]) } },
                Background { () -> Void in
                    var buffer = [UInt8](repeating: 0, count: 100)
                    while !stop.load(ordering: .relaxed) { _ = try? server.tryReceive(into: &buffer) }
                },
                Background { () -> Void in while !stop.load(ordering: .relaxed) { _ = client.writableBytes + server.readableBytes } },
                Background { () -> Void in while !stop.load(ordering: .relaxed) { client.progress(); server.progress() } },
            ]
            usleep(2000)
            client.close(linger: .milliseconds(10))
            server.close(linger: .milliseconds(10))
            stop.store(true, ordering: .relaxed)
            for worker in workers { try worker.value() }
            expectError(.closed) { _ = try client.trySend([1]) }
            expectError(.closed) {
                var buffer = [UInt8](repeating: 0, count: 1)
                _ = try server.tryReceive(into: &buffer)
            }
            #expect(client.readableBytes == 0 && client.writableBytes == 0)
        }
    }
}
