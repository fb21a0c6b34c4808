import Foundation
@testable import RStream
@testable import RStreamKernel
import Testing

/// How a same-host listener holds the connections whose request it has not read
/// (`SameHostListener`): a burst of clients is served whole, and connections that say nothing
/// give their places up to ones that come after them.
@Suite(.serialized) struct SameHostListenerTests {
    static let shape = EndpointShape(sendRingSize: 4096, receiveRingSize: 4096, txQueueSize: 16, rxCredits: 16, iwarp: false)

    /// Two hundred clients connect before the listener accepts any (past the 128 of its backlog
    /// they wait for room): every one is served. Before, the listener kept at most 64 unread
    /// connections and dropped the oldest, so all but the last 64 of a burst were reset.
    @Test func aBurstOfClientsIsServedWhole() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: sameHostOptions())
        defer { listener.close() }
        let destination = SocketAddress.make(ip: [127, 0, 0, 1], port: listener.port)
        let count = 200
        var attempts: [SameHostConnectAttempt] = []
        for _ in 0..<count { attempts.append(try #require(try SameHostConnectAttempt(destinations: [destination], shape: Self.shape))) }
        #expect(attempts.filter(\.requestSent).count >= 128, "the backlog took its 128")
        let accepted = Background { () throws -> [StreamConnection] in
            try (0..<count).map { _ in try listener.accept(timeout: .seconds(20)) }
        }
        var engines: [StreamEngine?] = Array(repeating: nil, count: count)
        var failures: [String] = []
        let giveUp = ContinuousClock.now + .seconds(20)
        while engines.contains(where: { $0 == nil }) && failures.isEmpty && ContinuousClock.now < giveUp {
            for i in 0..<count where engines[i] == nil {
                do throws(RStreamError) { engines[i] = try attempts[i].complete()?.0 } catch { failures.append("client \(i): \(error)") }
            }
            usleep(1000)
        }
        #expect(failures.count == 0, "\(failures.count) clients failed; the first: \(failures.first ?? "")")
        #expect(engines.allSatisfy { $0 != nil }, "every client was answered")
        let servers = try accepted.value()
        #expect(servers.count == count && servers.allSatisfy { $0.transport == "shm" })
        for server in servers { server.close(linger: .zero) }
    }

    /// A socket connected to the listener of 127.0.0.1 `port` under a client name, saying
    /// nothing; a full backlog is retried (the accepting thread drains it).
    static func silentClient(port: UInt16) throws -> Int32 {
        let fd = try UnixSocket.make()
        let dialled = SocketAddress.make(ip: [127, 0, 0, 1], port: port)
        _ = try SameHostName.bindClient(fd, dialling: dialled)
        let giveUp = ContinuousClock.now + .seconds(10)
        while try UnixSocket.connect(fd, name: SameHostName.listener(boundTo: dialled)!) == .backlogFull && ContinuousClock.now < giveUp {
            usleep(1000)
        }
        return fd
    }

    /// The same, watched the way a program polling the listener's descriptor with no timeout
    /// watches it: while the list is full of young silent connections nothing wakes it (the
    /// listening socket, readable with the client waiting, is not watched: a handful of
    /// wake-ups, not a spin), and when the oldest's grace ends the listener's timer does, so the
    /// client is served without the watchdog (which after 10 s closes a silent connection, an
    /// event that would wake the poll).
    @Test func aListenerPolledWithoutATimeoutIsWokenWhenASilentConnectionGivesItsPlaceUp() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, backlog: 64, options: sameHostOptions())
        defer { listener.close() }
        var silent: [Int32] = []
        defer { for fd in silent where fd >= 0 { close(fd) } }
        for _ in 0..<SameHostListener.mostPending {
            silent.append(try Self.silentClient(port: listener.port))
            _ = try? listener.accept(timeout: .zero) // one look: the listener takes it in
        }
        let destination = SocketAddress.make(ip: [127, 0, 0, 1], port: listener.port)
        let client = try #require(try SameHostConnectAttempt(destinations: [destination], shape: Self.shape))
        var server: StreamConnection?
        let youngest = silent[silent.count - 1]
        let (wakes, rescued) = try Self.pollWithoutTimeout(listener, rescue: { shutdown(youngest, Int32(SHUT_RDWR)) }) {
            server = Self.acceptIfThere(listener)
            return server != nil
        }
        let served = try #require(server)
        #expect(!rescued, "woken only by the watchdog: no timer")
        #expect(wakes < 50, "\(wakes) wake-ups: a spin")
        #expect(served.transport == "shm")
        var engine: StreamEngine?
        let giveUp = ContinuousClock.now + .seconds(10)
        while engine == nil && ContinuousClock.now < giveUp { engine = try client.complete()?.0 }
        #expect(engine != nil, "the client got its answer")
        served.close(linger: .zero)
    }

    /// Polls `listener`'s descriptor with no timeout, as a C program's event loop does, calling
    /// `look` after each wake-up until it returns true. A watchdog runs `rescue` (which must wake
    /// the poll) after `patience`, and never once this returns. Returns the wake-ups, and whether
    /// the watchdog had to act (so nothing else woke the poll).
    static func pollWithoutTimeout(_ listener: StreamListener, patience: Duration = .seconds(10),
                                   rescue: @escaping @Sendable () -> Void, until look: () -> Bool) throws -> (wakes: Int, rescued: Bool) {
        let descriptor = try #require(listener.descriptor)
        try #require(descriptor >= 0, "the listener has a descriptor to poll")
        // (fired, done), `rescue` run under the lock, so that it never runs once the test is done.
        let watchdog = Locked((fired: false, done: false))
        defer { watchdog.withLock { $0.done = true } }
        let giveUp = ContinuousClock.now + patience
        Thread {
            while ContinuousClock.now < giveUp {
                usleep(10_000)
                if watchdog.withLock({ $0.done }) { return }
            }
            watchdog.withLock { state in
                guard !state.done else { return }
                state.fired = true
                rescue()
            }
        }.start()
        var wakes = 0
        while !look() && wakes < 10_000 {
            if listener.prepareToWait() {
                var poll = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
                _ = Glibc.poll(&poll, 1, -1)
            }
            wakes += 1
        }
        return (wakes, watchdog.withLock { $0.fired })
    }

    /// An accept that fails (out of descriptors) stops accepting for `acceptRetry`, its listening
    /// socket unwatched (so its readability spins nobody): a program polling with no timeout is
    /// woken by the listener's timer when the retry is due, and the waiting client is served.
    /// Without the timer only the watchdog wakes it; without the unwatch it spins.
    #if DEBUG // fault injection is compiled out of release builds
    @Test func aListenerPolledWithoutATimeoutIsWokenToRetryAFailedAccept() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: sameHostOptions())
        defer { listener.close() }
        let destination = SocketAddress.make(ip: [127, 0, 0, 1], port: listener.port)
        let client = try #require(try SameHostConnectAttempt(destinations: [destination], shape: Self.shape))
        FaultInjection.failNext(.unixAccept, code: EMFILE)
        defer { FaultInjection.disarm() }
        // The first look's accept fails; each later look accepts if it can (the retry is due).
        var server: StreamConnection?
        var failures: [RStreamError] = []
        let (wakes, rescued) = try Self.pollWithoutTimeout(listener, rescue: { listener.close() }) {
            do throws(RStreamError) { server = try listener.accept(timeout: .zero) } catch { failures.append(error) }
            return server != nil
        }
        #expect(failures.first?.code == EMFILE, "the first look's accept fails: \(failures)")
        #expect(!rescued, "woken only by the watchdog: no timer")
        #expect(wakes >= 1, "the failed look was followed by a wait")
        #expect(wakes < 50, "\(wakes) wake-ups: a spin")
        let served = try #require(server)
        var engine: StreamEngine?
        let giveUp = ContinuousClock.now + .seconds(10)
        while engine == nil && ContinuousClock.now < giveUp { engine = try client.complete()?.0 }
        #expect(engine != nil, "the client got its answer")
        served.close(linger: .zero)
    }
    #endif

    /// A connection that never says anything is dropped when its `requestTimeout` runs out, and
    /// not before, even while the only waiter polls with no timeout: the listener's timer wakes
    /// it for that moment. Without the timer the connection would stay until something else
    /// woke the poll (here the watchdog, after 15 s).
    @Test func aSilentConnectionIsDroppedAtItsTimeoutUnderAPollWithoutTimeout() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: sameHostOptions())
        defer { listener.close() }
        let silent = try Self.silentClient(port: listener.port)
        defer { close(silent) }
        let start = ContinuousClock.now // before the look that takes it in and starts its time
        _ = Self.acceptIfThere(listener)
        var droppedAfter: Duration?
        let (wakes, rescued) = try Self.pollWithoutTimeout(listener, patience: .seconds(15), rescue: { listener.close() }) {
            _ = Self.acceptIfThere(listener)
            var look = pollfd(fd: silent, events: Int16(POLLIN), revents: 0) // readable: the end, or a refusal
            guard poll(&look, 1, 0) == 1 else { return false }
            droppedAfter = ContinuousClock.now - start
            return true
        }
        #expect(!rescued, "woken only by the watchdog: no timer")
        #expect(wakes < 50, "\(wakes) wake-ups: a spin")
        let after = try #require(droppedAfter, "the silent connection was dropped")
        #expect(after >= SameHostListener.requestTimeout, "dropped after \(after), before its time")
    }

    /// One look for a connection, without waiting.
    static func acceptIfThere(_ listener: StreamListener) -> StreamConnection? {
        try? listener.accept(timeout: .zero)
    }

    /// A full list of connections that say nothing: past the grace, a client after them takes
    /// the place of the oldest and is served (within the accept's 5 s, where the silent ones
    /// would otherwise hold their places for the 10 s of `requestTimeout`). (That the waiting
    /// accept does not spin meanwhile, its listening socket not watched, no test shows.)
    @Test func silentConnectionsGiveTheirPlacesUp() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, backlog: 64, options: sameHostOptions())
        defer { listener.close() }
        let accepted = Background { () throws -> StreamConnection in try listener.accept(timeout: .seconds(5)) }
        var silent: [Int32] = []
        defer { for fd in silent { close(fd) } }
        for _ in 0..<(SameHostListener.mostPending + 8) { silent.append(try Self.silentClient(port: listener.port)) }
        let client = try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: sameHostOptions(), timeout: .seconds(5))
        let server = try accepted.value()
        try client.sendAll([5])
        #expect(try server.receive(maxBytes: 1) == [5])
        client.close()
        server.close()
    }
}
