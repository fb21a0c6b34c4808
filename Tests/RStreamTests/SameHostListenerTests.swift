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
        let descriptor = try #require(listener.descriptor)
        // The watchdog: (fired, the test is done), the shutdown under the lock, so that it never
        // touches the descriptor (or a reused number) once the test is done.
        let watchdog = Locked((fired: false, done: false))
        let youngest = silent[silent.count - 1]
        defer { watchdog.withLock { $0.done = true } }
        Thread {
            for _ in 0..<1000 {
                usleep(10_000)
                if watchdog.withLock({ $0.done }) { return }
            }
            watchdog.withLock { state in
                guard !state.done else { return }
                state.fired = true
                shutdown(youngest, Int32(SHUT_RDWR))
            }
        }.start()
        var wakes = 0
        var server: StreamConnection?
        while server == nil && wakes < 10_000 {
            server = Self.acceptIfThere(listener)
            if server != nil { break }
            if listener.prepareToWait() {
                var look = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
                _ = poll(&look, 1, -1)
            }
            wakes += 1
        }
        let served = try #require(server)
        #expect(!watchdog.withLock { $0.fired }, "woken only by the watchdog: no timer")
        #expect(wakes < 50, "\(wakes) wake-ups: a spin")
        #expect(served.transport == "shm")
        var engine: StreamEngine?
        let giveUp = ContinuousClock.now + .seconds(10)
        while engine == nil && ContinuousClock.now < giveUp { engine = try client.complete()?.0 }
        #expect(engine != nil, "the client got its answer")
        served.close(linger: .zero)
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
