import Foundation
@testable import RStream
@testable import RStreamKernel
import Testing

/// A same-host listener serves exactly the clients its TCP twin would (`SameHostName`), and a
/// same-host stream reports addresses as a TCP stream would: the address dialled, and a peer
/// address unique among live streams.
@Suite struct SameHostAddressTests {
    static func accepting(_ listener: StreamListener) -> Background<StreamConnection> {
        Background { try listener.accept(timeout: .seconds(10)) }
    }

    /// One byte each way, so that the two ends are known to be one stream.
    static func expectJoined(_ client: StreamConnection, _ server: StreamConnection, _ byte: UInt8) throws {
        #expect(client.transport == "shm" && server.transport == "shm")
        try client.sendAll([byte])
        #expect(try server.receive(maxBytes: 1) == [byte])
        try server.sendAll([byte &+ 1])
        #expect(try client.receive(maxBytes: 1) == [byte &+ 1])
    }

    @Test func twoListenersOfOnePortOnTwoAddressesEachServeTheirOwnClients() throws {
        let first = try StreamListener(host: "127.0.0.1", port: 0, options: sameHostOptions())
        defer { first.close() }
        let second = try StreamListener(host: "127.0.0.2", port: first.port, options: sameHostOptions())
        defer { second.close() }
        #expect(first.servesSameHost && second.servesSameHost)
        for (host, listener, other) in [("127.0.0.2", second, first), ("127.0.0.1", first, second)] {
            let accepted = Self.accepting(listener)
            let client = try StreamConnection.connect(host: host, port: first.port, options: sameHostOptions(), timeout: .seconds(10))
            let server = try accepted.value()
            try Self.expectJoined(client, server, 1)
            #expect(server.localAddress == StreamAddress(host: host, port: first.port))
            #expect(client.peerAddress == StreamAddress(host: host, port: first.port))
            expectError(.timedOut) { _ = try other.accept(timeout: .milliseconds(50)) }
            client.close()
            server.close()
        }
    }

    @Test func aListenerOfOneAddressTakesNoClientThatDialledAnother() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: sameHostOptions())
        defer { listener.close() }
        expectError(.connectionRefused) {
            _ = try StreamConnection.connect(host: "127.0.0.2", port: listener.port, options: sameHostOptions(), timeout: .seconds(10))
        }
        expectError(.timedOut) { _ = try listener.accept(timeout: .milliseconds(50)) }
    }

    /// A wildcard listener's stream reports the address its client dialled as its own; two
    /// streams of one client process have different peer addresses; each end's peer is the
    /// other's own address.
    @Test func aWildcardListenersStreamsReportTheAddressDialledAndPeersOfTheirOwn() throws {
        let listener = try StreamListener(host: "0.0.0.0", port: 0, options: sameHostOptions())
        defer { listener.close() }
        #expect(listener.servesSameHost)
        var peers: Set<StreamAddress> = []
        var open: [StreamConnection] = [] // all at once: their names are live together
        defer { for stream in open { stream.close() } }
        for (i, host) in ["127.0.0.3", "127.0.0.3", "127.0.0.1"].enumerated() {
            let accepted = Self.accepting(listener)
            let client = try StreamConnection.connect(host: host, port: listener.port, options: sameHostOptions(), timeout: .seconds(10))
            let server = try accepted.value()
            open += [client, server]
            try Self.expectJoined(client, server, UInt8(i * 2))
            let dialled = StreamAddress(host: host, port: listener.port)
            #expect(server.localAddress == dialled)
            #expect(client.peerAddress == dialled)
            let clientAddress = try #require(client.localAddress)
            #expect(server.peerAddress == clientAddress)
            #expect(clientAddress.host == host && SameHostName.clientPorts.contains(Int(clientAddress.port)))
            peers.insert(clientAddress)
        }
        #expect(peers.count == 3)
    }

    @Test func aClientTriesTheAddressThenItsFamilysWildcardThenTheDualStackOne() {
        let v4 = SocketAddress.make(ip: [127, 0, 0, 1], port: 7471)
        let v6 = SocketAddress.make(ip: [UInt8](repeating: 0, count: 15) + [1], port: 7471)
        #expect(SameHostName.candidates(for: [v4], dualStack: true).map(\.name)
                == ["rstream-shm:127.0.0.1:7471", "rstream-shm:0.0.0.0:7471", "rstream-shm:[::]:7471"])
        // Where IPv6 wildcards take IPv6 alone (`net.ipv6.bindv6only = 1`), as TCP reaches them.
        #expect(SameHostName.candidates(for: [v4], dualStack: false).map(\.name)
                == ["rstream-shm:127.0.0.1:7471", "rstream-shm:0.0.0.0:7471"])
        #expect(SameHostName.candidates(for: [v6, v4], dualStack: true).map(\.name)
                == ["rstream-shm:[::1]:7471", "rstream-shm:[::]:7471", "rstream-shm:127.0.0.1:7471", "rstream-shm:0.0.0.0:7471"])
        // Each name stands for the address that was dialled.
        #expect(SameHostName.candidates(for: [v6, v4], dualStack: true).map(\.destination) == [v6, v6, v4, v4])
        #expect(SameHostName.listener(boundTo: SocketAddress.make(ip: [0, 0, 0, 0], port: 9)) == "rstream-shm:0.0.0.0:9")
    }

    @Test func aClientNameIsReadBackOnlyAsItWasWritten() throws {
        let own = SocketAddress.make(ip: [127, 0, 0, 5], port: 50_000)
        let name = try #require(SameHostName.client(own, listenerPort: 7471))
        #expect(name == "rstream-shm-peer:127.0.0.5:7471:50000")
        #expect(SameHostName.parseClient(name)?.own == own && SameHostName.parseClient(name)?.listenerPort == 7471)
        // An IPv4-mapped address is named as IPv4.
        let mapped = SocketAddress.make(ip: [127, 0, 0, 5], port: 50_000, familyOf: SocketAddress.make(ip: [UInt8](repeating: 0, count: 16), port: 0))
        #expect(mapped.count == MemoryLayout<sockaddr_in6>.size && SameHostName.client(mapped, listenerPort: 7471) == name)
        for bad in ["rstream-shm:127.0.0.5:7471:50000", "rstream-shm-peer:127.0.0.5:50000", "rstream-shm-peer:127.0.0.5:7471:",
                    "rstream-shm-peer:127.0.0.5::50000", "rstream-shm-peer:127.0.0.5:0:50000", "rstream-shm-peer:127.0.0.5:07471:50000",
                    "rstream-shm-peer:127.0.0.5:7471:49151", "rstream-shm-peer:127.0.0.5:7471:65536", "rstream-shm-peer:127.0.0.5:7471:+50000",
                    "rstream-shm-peer:127.000.0.5:7471:50000", "rstream-shm-peer:[::ffff:127.0.0.5]:7471:50000",
                    "rstream-shm-peer:::1:7471:50000", "rstream-shm-peer:[::1:7471:50000", "rstream-shm-peer:127.0.0.5:7471:50000\u{0}",
                    "rstream-shm-peer::", "rstream-shm-peer:::", "rstream-shm-peer:"] {
            #expect(SameHostName.parseClient(bad) == nil, "\(bad)")
        }
        #expect(SameHostName.parseClient("rstream-shm-peer:[::1]:1:65535")?.own == SocketAddress.make(ip: [UInt8](repeating: 0, count: 15) + [1], port: 65535))
    }

    /// Only the address and port served pass: the listener's own, or one of this host under a
    /// wildcard; both addresses come in the listener's family.
    @Test func theListenerChecksTheAddressItsClientClaims() throws {
        let one = SocketAddress.make(ip: [127, 0, 0, 1], port: 9)
        let any4 = SocketAddress.make(ip: [0, 0, 0, 0], port: 9)
        let any6 = SocketAddress.make(ip: [UInt8](repeating: 0, count: 16), port: 9)
        let client = "rstream-shm-peer:127.0.0.1:9:50001"
        let served = try SameHostName.checkedClient(client, listening: any4, dualStack: true)
        #expect(served.local == one && served.peer == SocketAddress.make(ip: [127, 0, 0, 1], port: 50001))
        #expect(try SameHostName.checkedClient(client, listening: one, dualStack: true).local == one)
        // An IPv6 listener reports an IPv4 client as IPv4-mapped, as an IPv6 socket would.
        let underV6 = try SameHostName.checkedClient(client, listening: any6, dualStack: true)
        #expect(underV6.local == SocketAddress.make(ip: [UInt8](repeating: 0, count: 10) + [0xFF, 0xFF, 127, 0, 0, 1], port: 9))
        #expect(underV6.peer.count == MemoryLayout<sockaddr_in6>.size && SocketAddress.ip(of: underV6.peer) == [127, 0, 0, 1])
        for (claim, listening) in [("rstream-shm-peer:127.0.0.2:9:50001", one), ("rstream-shm-peer:[::1]:9:50001", any4),
                                   ("rstream-shm-peer:192.0.2.1:9:50001", any4), ("rstream-shm-peer:[2001:db8::1]:9:50001", any6),
                                   ("rstream-shm-peer:127.0.0.1:10:50001", one), ("rstream-shm-peer:127.0.0.1:10:50001", any4)] {
            #expect(throws: RStreamError.self, "\(claim)") { _ = try SameHostName.checkedClient(claim, listening: listening, dualStack: true) }
        }
        #expect(throws: RStreamError.self) { _ = try SameHostName.checkedClient(nil, listening: any4, dualStack: true) }
        // An IPv6 wildcard that is not dual-stack takes no IPv4 client, as its TCP twin would not.
        #expect(throws: RStreamError.self) { _ = try SameHostName.checkedClient(client, listening: any6, dualStack: false) }
        #expect(try SameHostName.checkedClient("rstream-shm-peer:[::1]:9:50001", listening: any6, dualStack: false).local
                == SocketAddress.make(ip: [UInt8](repeating: 0, count: 15) + [1], port: 9))
    }

    /// A socket that holds a listener's same-host name without accepting, its backlog full (a
    /// squatter, or a stuck listener): a connect that chose shared memory by itself gives the
    /// name up after a second and goes over the fabric, whose listener serves the same port.
    /// Before, it retried the backlog for 10 s and then failed (here its own 5 s ran out first).
    @Test func aNameWhoseBacklogStaysFullSendsAnAutomaticConnectOverTheFabric() throws {
        // A port's same-host name taken first, then the port (so its listener gets no name); a
        // port another test took meanwhile is given up for the next.
        var held: (squatter: Int32, filler: Int32, listener: StreamListener)?
        for _ in 0..<20 where held == nil {
            let port = UInt16.random(in: 20_000...32_767) // below the ephemeral ports other tests' listeners get
            let name = try #require(SameHostName.listener(boundTo: SocketAddress.make(ip: [127, 0, 0, 1], port: port)))
            let squatter = try UnixSocket.make()
            guard (try? UnixSocket.listen(squatter, name: name, backlog: 0)) == true,
                  let filler = try? UnixSocket.make() else { close(squatter); continue }
            guard let listener = try? StreamListener(host: "127.0.0.1", port: port, options: loopbackOptions()),
                  (try? UnixSocket.connect(filler, name: name)) == .connected // the one place of the backlog taken
            else { close(filler); close(squatter); continue }
            held = (squatter, filler, listener)
        }
        let (squatter, filler, listener) = try #require(held)
        defer { listener.close(); close(filler); close(squatter) }
        let port = listener.port
        #expect(!listener.servesSameHost, "the name is the squatter's")
        // With 5 s the connect gives the name up after a second; with 0.9 s after half of it,
        // so that the fabric has the other half (giving up after a second, it ran out first).
        for timeout: Duration in [.seconds(5), .milliseconds(900)] {
            let accepted = Background { try listener.accept(timeout: .seconds(10)) }
            let client = try StreamConnection.connect(host: "127.0.0.1", port: port, options: StreamOptions(), timeout: timeout)
            let server = try accepted.value()
            #expect(client.transport != "shm" && server.transport == client.transport, "\(timeout)")
            try client.sendAll([9])
            #expect(try server.receive(maxBytes: 1) == [9])
            client.close()
            server.close()
        }
        // Asked for by name, shared memory does not go elsewhere: the squatter's name is all it
        // has, retried until the connect's own time runs out.
        var shm = StreamOptions()
        shm.provider = "shm"
        let error = #expect(throws: RStreamError.self) {
            _ = try StreamConnection.connect(host: "127.0.0.1", port: port, options: shm, timeout: .seconds(2))
        }
        #expect(error?.kind == .timedOut, "\(String(describing: error))")
    }

}
