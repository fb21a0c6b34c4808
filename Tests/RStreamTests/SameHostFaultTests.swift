import Foundation
@testable import RStream
@testable import RStreamKernel
import Testing

/// Every system call of the same-host transport failed once (`FaultSite.sameHost`), on the thread
/// that makes it: the call that failed gets a clear error naming it, its peer a clear error of
/// its own, and the listener then serves the next client; afterwards the process holds no more
/// descriptors or mappings than before. Faults trip only on the arming thread.
#if DEBUG // fault injection is compiled out of release builds
@Suite(.serialized) struct SameHostFaultTests {
    static let code = EIO

    /// Runs a case and expects it to leave nothing behind (after one stream served first, for
    /// the state the process keeps: the fabric's objects, the reactor).
    static func leavingNothing(_ body: () throws -> Void) throws {
        let warm = try newListener()
        try expectServes(warm)
        warm.close()
        try SameHostCensus.expectNothingLeft(body)
    }

    static func newListener() throws -> StreamListener {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: sameHostOptions())
        try #require(listener.servesSameHost)
        return listener
    }

    static func connect(_ listener: StreamListener) -> Result<StreamConnection, RStreamError> {
        Result { () throws(RStreamError) in
            try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: sameHostOptions(), timeout: .seconds(10))
        }
    }

    /// A new client gets a same-host stream and a byte crosses each way. The client that failed
    /// before may have left a request behind, whose answer then fails: that accept throws, as
    /// for any client that leaves before it is accepted, and the next one serves.
    static func expectServes(_ listener: StreamListener) throws {
        let accepted = Background { () throws -> StreamConnection in
            do { return try listener.accept(timeout: .seconds(10)) } catch let error as RStreamError where error.kind == .connectionReset {
                return try listener.accept(timeout: .seconds(10))
            }
        }
        let client = try connect(listener).get()
        let server = try accepted.value()
        #expect(client.transport == "shm")
        try client.sendAll([7])
        #expect(try server.receive(maxBytes: 1) == [7])
        try server.sendAll([8])
        #expect(try client.receive(maxBytes: 1) == [8])
        client.close()
        server.close()
    }

    static func expect(_ error: RStreamError?, names call: String, _ site: FaultSite) {
        #expect(error?.context.contains(call) == true, "\(site): \(String(describing: error))")
        #expect(error?.code == code, "\(site): \(String(describing: error))")
    }

    static func failure<T>(_ result: Result<T, RStreamError>) -> RStreamError? {
        if case .failure(let error) = result { return error }
        return nil
    }

    static let clientSites: [(FaultSite, String)] = [
        (.unixSocket, "socket(AF_UNIX"), (.unixBindClient, "bind(rstream-shm-peer:127.0.0.1:"), (.unixConnect, "connect(rstream-shm:"),
        (.memfdCreate, "memfd_create("), (.truncate, "ftruncate("), (.mapSegment, "mmap(rstream-"), (.sealSegment, "sealing"),
        (.sendMessage, "sendmsg(set-up message)"), (.receiveMessage, "recvmsg(set-up message)"), (.statSegment, "fstat(the peer's"),
        (.mapPeerSegment, "mmap(the peer's inbound segment"),
    ]

    /// A client's call fails: its connect says which, nothing is left half made (the next client
    /// is served).
    @Test(arguments: clientSites)
    func aClientCallThatFailsEndsItsConnect(site: FaultSite, call: String) throws {
        try Self.leavingNothing {
            let listener = try Self.newListener()
            defer { listener.close() }
            // The listener answers on its own thread; the request may or may not reach it.
            let answering = Background { () -> Result<StreamConnection, RStreamError> in
                Result { () throws(RStreamError) in try listener.accept(timeout: .milliseconds(500)) }
            }
            FaultInjection.failNext(site, code: Self.code)
            let client = Self.connect(listener)
            FaultInjection.disarm()
            Self.expect(Self.failure(client), names: call, site)
            if case .success(let stream) = try answering.value() { stream.close() }
            try Self.expectServes(listener)
        }
    }

    static let answerSites: [(FaultSite, String)] = [
        (.memfdCreate, "memfd_create("), (.truncate, "ftruncate("), (.mapSegment, "mmap(rstream-"), (.sealSegment, "sealing"),
        (.statSegment, "fstat(the peer's"), (.mapPeerSegment, "mmap(the peer's inbound segment"), (.sendMessage, "sendmsg(set-up message)"),
    ]

    /// A call of the listener's answer fails: that accept throws it; the client is told (refused
    /// with the reason when the answer could still be sent, else the connection reset); the
    /// listener goes on.
    @Test(arguments: answerSites)
    func aListenerCallThatFailsEndsThatAccept(site: FaultSite, call: String) throws {
        try Self.leavingNothing {
            let listener = try Self.newListener()
            defer { listener.close() }
            let accepting = Background { () -> Result<StreamConnection, RStreamError> in
                FaultInjection.failNext(site, code: Self.code)
                defer { FaultInjection.disarm() }
                return Result { () throws(RStreamError) in try listener.accept(timeout: .seconds(10)) }
            }
            let client = Self.connect(listener)
            Self.expect(Self.failure(try accepting.value()), names: call, site)
            let told = Self.failure(client)
            if site == .sendMessage {
                #expect(told?.kind == .connectionReset, "\(String(describing: told))")
            } else {
                #expect(told?.kind == .rejected && told?.context.contains(call) == true, "\(String(describing: told))")
            }
            try Self.expectServes(listener)
        }
    }

    /// The listener's accept4 fails: that accept throws it at once; the next one serves.
    @Test func anAcceptThatFailsThrowsAndTheNextServes() throws {
        try Self.leavingNothing {
            let listener = try Self.newListener()
            defer { listener.close() }
            let error = try Background { () -> RStreamError? in
                FaultInjection.failNext(.unixAccept, code: Self.code)
                defer { FaultInjection.disarm() }
                return Self.failure(Result { () throws(RStreamError) in try listener.accept(timeout: .seconds(10)) })
            }.value()
            Self.expect(error, names: "accept4(same-host listener)", .unixAccept)
            try Self.expectServes(listener)
        }
    }

    /// Reading a waiting client's request fails: that request is dropped (the client's connect
    /// ends with `.connectionReset`, as for a socket that broke before it asked), and the same
    /// accept goes on to serve the next client.
    @Test func aRequestThatCannotBeReadIsDropped() throws {
        try Self.leavingNothing {
            let listener = try Self.newListener()
            defer { listener.close() }
            let accepting = Background { () throws -> StreamConnection in
                FaultInjection.failNext(.receiveMessage, code: Self.code)
                defer { FaultInjection.disarm() }
                return try listener.accept(timeout: .seconds(10))
            }
            let dropped = Self.failure(Self.connect(listener))
            #expect(dropped?.kind == .connectionReset, "\(String(describing: dropped))")
            let client = try Self.connect(listener).get()
            let server = try accepting.value()
            try client.sendAll([9])
            #expect(try server.receive(maxBytes: 1) == [9])
            client.close()
            server.close()
        }
    }

    /// A listener whose same-host socket cannot be made says which call failed.
    @Test(arguments: [(FaultSite.unixSocket, "socket(AF_UNIX"), (.unixBind, "bind(rstream-shm:127.0.0.1:"), (.unixListen, "listen(rstream-shm:127.0.0.1:")])
    func aListenerThatCannotBeMadeSaysWhichCallFailed(site: FaultSite, call: String) throws {
        try Self.leavingNothing {
            FaultInjection.failNext(site, code: Self.code)
            let made = Result { () throws(RStreamError) in try StreamListener(host: "127.0.0.1", port: 0, options: sameHostOptions()) }
            FaultInjection.disarm()
            Self.expect(Self.failure(made), names: call, site)
            let listener = try Self.newListener()
            defer { listener.close() }
            try Self.expectServes(listener)
        }
    }

    /// A client that finds every client name it tries taken (another user may hold them all:
    /// abstract names have no owner; each of its binds fails with `EADDRINUSE`) goes over the
    /// fabric when the transport is chosen by itself, and fails with `.addressUnavailable` when
    /// shared memory was asked for.
    @Test func aClientWithoutAFreeNameFallsBackToTheFabric() throws {
        let listener = try Self.newListener()
        defer { listener.close() }
        let automatic = StreamOptions() // no provider named (nor in RSTREAM_PROVIDER, in the tests)
        let accepted = Background { try listener.accept(timeout: .seconds(10)) }
        FaultInjection.failNext(.unixBindClient, code: EADDRINUSE, times: SameHostName.clientPortTries)
        let client = Result { () throws(RStreamError) in
            try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: automatic, timeout: .seconds(10))
        }
        FaultInjection.disarm()
        let stream = try client.get()
        let server = try accepted.value()
        #expect(stream.transport != "shm" && server.transport == stream.transport, "\(stream.transport)")
        stream.close()
        server.close()
        FaultInjection.failNext(.unixBindClient, code: EADDRINUSE, times: SameHostName.clientPortTries)
        let refused = Self.failure(Self.connect(listener))
        FaultInjection.disarm()
        #expect(refused?.kind == .addressUnavailable && refused?.code == EADDRNOTAVAIL, "\(String(describing: refused))")
        // One try fewer than that finds a name.
        FaultInjection.failNext(.unixBindClient, code: EADDRINUSE, times: SameHostName.clientPortTries - 1)
        let served = Background { try listener.accept(timeout: .seconds(10)) }
        let named = try Self.connect(listener).get()
        #expect(!FaultInjection.isArmed, "every injected failure was used")
        FaultInjection.disarm()
        #expect(named.transport == "shm")
        named.close()
        try served.value().close()
    }

    @Test func everySameHostSiteHasACase() {
        let covered = Set(Self.clientSites.map(\.0) + Self.answerSites.map(\.0) + [.unixAccept, .receiveMessage, .unixBind, .unixListen])
        #expect(covered == Set(FaultSite.sameHost))
        #expect(Set(FaultSite.sameHost).count == FaultSite.sameHost.count)
    }
}
#endif
