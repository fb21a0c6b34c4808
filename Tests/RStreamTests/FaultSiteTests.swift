import CLibfabric
import Foundation
@testable import RStream
@testable import RStreamKernel
import Testing

/// Every `fabricCall` site failed once, through the public API (the kernel's `CoreLimits` for the
/// one site only the provider reaches): each gives a clear error naming the call, or the fallback
/// the code documents, and a fresh stream works afterwards. Faults trip only on the arming thread.
/// The table in NOTES.md ("Failure paths") lists what each site's case asserts.
#if DEBUG // fault injection is compiled out of release builds
@Suite(.serialized) struct FaultSiteTests {
    static let code = Int32(FI_EIO)

    /// A fresh pair carries bytes both ways: the library is usable after the fault.
    static func expectUsable(_ options: StreamOptions = loopbackOptions()) throws {
        let (client, server) = try connectedPair(options)
        try client.sendAll([1, 2, 3])
        #expect(try server.receive(maxBytes: 3) == [1, 2, 3])
        try server.sendAll([4])
        #expect(try client.receive(maxBytes: 1) == [4])
        client.close()
        server.close()
    }

    /// `listener` accepts the client `connect` makes (on this thread), and a byte crosses; the
    /// client is returned closed, for what the caller still wants to see of it.
    @discardableResult
    static func expectCarries(_ listener: StreamListener, connect: (UInt16) throws -> StreamConnection = {
        try StreamConnection.connect(host: "127.0.0.1", port: $0, options: loopbackOptions())
    }) throws -> StreamConnection {
        let accepted = Background { try listener.accept(timeout: .seconds(10)) }
        let client = try connect(listener.port)
        let server = try accepted.value()
        try client.sendAll([7])
        #expect(try server.receive(maxBytes: 1) == [7])
        client.close(); server.close()
        return client
    }

    static func waitReadable(_ stream: StreamConnection, _ count: Int) throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while stream.readableBytes < count {
            try #require(ContinuousClock.now < deadline, "\(count) bytes never arrived")
            _ = try stream.wait(for: .readable, timeout: .milliseconds(50))
        }
    }

    /// Runs `body` with `site` armed on this thread; the error it threw (nil: none).
    static func failing(_ site: FaultSite, _ body: () throws -> Void) -> RStreamError? {
        if case .failure(let error) = withFault(site, body) { return error }
        return nil
    }

    /// Runs `body` with `site` armed on this thread; what it returned or threw.
    static func withFault<T>(_ site: FaultSite, _ body: () throws -> T) -> Result<T, RStreamError> {
        FaultInjection.failNext(site, code: code)
        defer { FaultInjection.disarm() }
        do { return .success(try body()) } catch let error as RStreamError { return .failure(error) } catch {
            return .failure(RStreamError(.fabric, "\(error)"))
        }
    }

    static func expect(_ error: RStreamError?, names call: String, _ site: FaultSite) {
        #expect(error != nil, "\(site): no error")
        #expect(error?.context.contains(call) == true, "\(site): \(String(describing: error))")
        #expect(error?.code == code || error?.kind == .timedOut, "\(site): \(String(describing: error))")
    }

    // A core asked for manual progress is asked again without the preference (FabricInfo.queryCore).
    @Test func aQueryThatFailsIsAskedAgainWithoutTheProgressPreference() throws {
        let listener = try Self.withFault(.getinfo) { try StreamListener(host: "127.0.0.1", port: 0, options: loopbackOptions()) }.get()
        #expect(!FaultInjection.isArmed)
        try Self.expectCarries(listener)
    }

    @Test(arguments: [(FaultSite.fabric, "fi_fabric"), (.domain, "fi_domain"),
                      (.passiveEndpoint, "fi_passive_ep"), (.bind, "fi_pep_bind"), (.listen, "fi_listen"),
                      (.getname, "fi_getname")])
    func aListenerThatCannotBeMadeSaysWhichCallFailed(site: FaultSite, call: String) throws {
        let error = Self.failing(site) { _ = try StreamListener(host: "127.0.0.1", port: 0, options: loopbackOptions()) }
        Self.expect(error, names: call, site)
        try Self.expectUsable()
    }

    @Test(arguments: [(FaultSite.endpoint, "fi_endpoint"), (.bind, "fi_ep_bind"), (.enable, "fi_enable"),
                      (.memoryRegister, "fi_mr_reg"), (.receive, "fi_recv"), (.connect, "fi_connect"),
                      (.eqRead, "fi_eq_read"), (.allocation, "allocating")])
    func aConnectThatCannotBeMadeSaysWhichCallFailed(site: FaultSite, call: String) throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: loopbackOptions())
        let error = Self.failing(site) {
            _ = try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: loopbackOptions(), timeout: .seconds(5))
        }
        Self.expect(error, names: call, site)
        if site == .allocation { #expect(error?.kind == .outOfMemory) }
        try Self.expectUsable()
    }

    // Queues that cannot have a wait descriptor fall back to none: the stream works, waiting in
    // short steps, and says so by having no descriptor.
    @Test func anEventQueueWithoutAWaitDescriptorFallsBack() throws {
        let listener = try Self.withFault(.eqOpen) { try StreamListener(host: "127.0.0.1", port: 0, options: loopbackOptions()) }.get()
        #expect(listener.descriptor == nil)
        #expect(!FaultInjection.isArmed)
        try Self.expectCarries(listener)
    }

    @Test func aCompletionQueueWithoutAWaitDescriptorFallsBack() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: loopbackOptions())
        let client = try Self.expectCarries(listener) { port in
            try Self.withFault(.cqOpen) { try StreamConnection.connect(host: "127.0.0.1", port: port, options: loopbackOptions()) }.get()
        }
        #expect(!FaultInjection.isArmed)
        #expect(client.descriptor == nil) // a closed stream still answers what its descriptor was
    }

    // The accepting side's fi_accept fails: accept says so; the client, never answered, times out.
    @Test func anAcceptThatFailsIsAnErrorAndTheListenerGoesOn() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: loopbackOptions())
        let accepting = Background { () -> RStreamError? in
            Self.failing(.accept) { _ = try listener.accept(timeout: .seconds(10)) }
        }
        #expect(throws: RStreamError.self) {
            _ = try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: loopbackOptions(), timeout: .seconds(2))
        }
        Self.expect(try accepting.value(), names: "fi_accept", .accept)
        try Self.expectCarries(listener)
    }

    // A refusal whose fi_reject fails: the listener still reports the bad request; the refused
    // client, never answered, ends with its connect timeout instead of the reason.
    @Test func aRejectThatFailsStillReportsTheBadRequest() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: loopbackOptions())
        let accepting = Background { () -> RStreamError? in
            Self.failing(.reject) { _ = try listener.accept(timeout: .seconds(10)) }
        }
        #expect(throws: RStreamError.self) { // an iWarp client at a normal listener is refused
            _ = try StreamConnection.connect(host: "127.0.0.1", port: listener.port,
                                             options: loopbackOptions { $0.iwarp = true }, timeout: .seconds(2))
        }
        let refused = try accepting.value()
        #expect(refused?.kind == .protocolViolation, "\(String(describing: refused))")
        #expect(!FaultInjection.isArmed)
        try Self.expectUsable()
    }

    // Data-path calls fail the stream: the caller is told (after any bytes that arrived), and the
    // next stream works.
    @Test func aWriteThatFailsEndsTheStreamWithItsError() throws {
        let (client, server) = try connectedPair()
        let error = Self.failing(.write) {
            _ = try client.trySend([1, 2, 3])
            _ = try client.trySend([4])
        }
        Self.expect(error, names: "fi_write", .write)
        client.close(linger: .zero); server.close(linger: .zero)
        try Self.expectUsable()
    }

    @Test func aControlWordThatCannotBePostedEndsTheStreamWithItsError() throws {
        let (client, server) = try connectedPair(loopbackOptions { $0.receiveRingSize = 4096 })
        try client.sendAll([UInt8](repeating: 5, count: 4096))
        try Self.waitReadable(server, 4096)
        var buffer = [UInt8](repeating: 0, count: 4096)
        let error = Self.failing(.send) {
            _ = try server.tryReceive(into: &buffer) // frees the whole ring: a CONTROL word is due
            _ = try server.tryReceive(into: &buffer)
        }
        Self.expect(error, names: "fi_senddata", .send)
        client.close(linger: .zero); server.close(linger: .zero)
        try Self.expectUsable()
    }

    /// Two bytes from `client` reach `server`; then, with `fi_cq_read` failing, `server` hands
    /// out those bytes first and then the error naming the call.
    static func expectReadFailureAfterTheBytes(_ client: StreamConnection, _ server: StreamConnection) throws {
        try client.sendAll([1, 2])
        try Self.waitReadable(server, 2)
        var buffer = [UInt8](repeating: 0, count: 2)
        let error = Self.failing(.cqRead) {
            #expect(try server.tryReceive(into: &buffer) == .received(2)) // the bytes that arrived first
            _ = try server.tryReceive(into: &buffer)
        }
        Self.expect(error, names: "fi_cq_read", .cqRead)
    }

    @Test func aCompletionQueueThatCannotBeReadEndsTheStreamAfterTheBytes() throws {
        let (client, server) = try connectedPair()
        try Self.expectReadFailureAfterTheBytes(client, server)
        client.close(linger: .zero); server.close(linger: .zero)
        try Self.expectUsable()
    }

    /// A shared completion queue (iWarp mode over tcp) that cannot be read fails every member:
    /// nobody can tell whose completions the failed read lost. The reader still gets the bytes
    /// that came first; a new stream gets a new queue and works.
    @Test func aSharedCompletionQueueThatCannotBeReadFailsEveryMember() throws {
        let options = loopbackOptions { $0.iwarp = true }
        let (client1, server1) = try connectedPair(options)
        let (client2, server2) = try connectedPair(options)
        try Self.expectReadFailureAfterTheBytes(client1, server1)
        // The other stream of the queue, which read nothing, fails with the same error.
        var buffer = [UInt8](repeating: 0, count: 2)
        var other: RStreamError?
        do { _ = try server2.tryReceive(into: &buffer) } catch { other = error }
        #expect(other?.context.contains("fi_cq_read") == true, "\(String(describing: other))")
        for stream in [client1, server1, client2, server2] { stream.close(linger: .zero) }
        try Self.expectUsable(options)
    }

    // Only the provider asks for the core's connection-data size (FI_OPT_CM_DATA_SIZE).
    @Test func theCoresConnectionDataSizeThatCannotBeReadSaysSo() throws {
        let requirements = CoreRequirements(provider: "sockets", iwarp: true) // a core and mode nobody asked about yet
        let error = Self.failing(.getopt) { _ = try CoreLimits.connectionData(requirements) }
        Self.expect(error, names: "fi_getopt", .getopt)
        #expect(try CoreLimits.connectionData(requirements) > ConnectionBlock.size)
    }

    @Test func everySiteHasACase() {
        // The cases above, by site: a new site must get one.
        let covered: Set<FaultSite> = [.getinfo, .fabric, .domain, .passiveEndpoint, .bind, .listen, .getname,
            .endpoint, .enable, .memoryRegister, .receive, .connect, .eqRead, .allocation, .eqOpen, .cqOpen,
            .accept, .reject, .write, .send, .cqRead, .getopt]
        #expect(Set(FaultSite.allCases).subtracting(FaultSite.sameHost) == covered) // the rest: SameHostFaultTests
    }
}
#endif
