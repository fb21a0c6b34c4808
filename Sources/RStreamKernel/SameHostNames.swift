import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 or IPv6 socket address as the bytes of a `sockaddr_in` or `sockaddr_in6` (what the
/// fabric and the provider pass around), read and made without trusting its length.
package enum SocketAddress {
    /// The IP address: 4 bytes, or 16 (an IPv4-mapped IPv6 address gives its IPv4 bytes); nil
    /// for anything else.
    package static func ip(of address: [UInt8]) -> [UInt8]? {
        guard address.count >= 2 else { return nil }
        let family = address.withUnsafeBytes { Int32($0.loadUnaligned(as: sa_family_t.self)) }
        switch family {
        case AF_INET where address.count >= MemoryLayout<sockaddr_in>.size:
            return Array(address[4..<8])
        case AF_INET6 where address.count >= MemoryLayout<sockaddr_in6>.size:
            let bytes = Array(address[8..<24])
            if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF { return Array(bytes[12...]) }
            return bytes
        default:
            return nil
        }
    }

    package static func port(of address: [UInt8]) -> UInt16 {
        address.count >= 4 ? UInt16(address[2]) << 8 | UInt16(address[3]) : 0
    }

    /// A `sockaddr_in` (4 bytes of `ip`) or `sockaddr_in6` (16) with `port`.
    package static func make(ip: [UInt8], port: UInt16) -> [UInt8] {
        precondition(ip.count == 4 || ip.count == 16, "an IP address has 4 or 16 bytes")
        if ip.count == 4 {
            var v4 = sockaddr_in()
            v4.sin_family = sa_family_t(AF_INET)
            v4.sin_port = port.bigEndian
            withUnsafeMutableBytes(of: &v4.sin_addr) { $0.copyBytes(from: ip) }
            return withUnsafeBytes(of: v4) { Array($0) }
        }
        var v6 = sockaddr_in6()
        v6.sin6_family = sa_family_t(AF_INET6)
        v6.sin6_port = port.bigEndian
        withUnsafeMutableBytes(of: &v6.sin6_addr) { $0.copyBytes(from: ip) }
        return withUnsafeBytes(of: v6) { Array($0) }
    }

    /// `make(ip:port:)` in the family of `reference`: an IPv4 address for an IPv6 reference is
    /// IPv4-mapped (`::ffff:a.b.c.d`), as an IPv6 socket reports an IPv4 peer.
    package static func make(ip: [UInt8], port: UInt16, familyOf reference: [UInt8]) -> [UInt8] {
        let v6 = reference.count >= 2 && reference.withUnsafeBytes { Int32($0.loadUnaligned(as: sa_family_t.self)) } == AF_INET6
        return make(ip: v6 && ip.count == 4 ? [UInt8](repeating: 0, count: 10) + [0xFF, 0xFF] + ip : ip, port: port)
    }

    /// The IP address in text, IPv6 in brackets ("127.0.0.1", "[::1]").
    package static func text(ip: [UInt8]) -> String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let family = ip.count == 4 ? AF_INET : AF_INET6
        let ok = ip.withUnsafeBytes { raw in inet_ntop(family, raw.baseAddress, &buffer, socklen_t(buffer.count)) } != nil
        let plain = ok ? String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
        return family == AF_INET ? plain : "[\(plain)]"
    }

    /// The bytes of an IP address written by `text(ip:)`; nil for anything else.
    package static func parse(ip text: Substring) -> [UInt8]? {
        let bracketed = text.hasPrefix("[") && text.hasSuffix("]")
        let plain = bracketed ? String(text.dropFirst().dropLast()) : String(text)
        var bytes = [UInt8](repeating: 0, count: bracketed ? 16 : 4)
        let ok = bytes.withUnsafeMutableBytes { inet_pton(bracketed ? AF_INET6 : AF_INET, plain, $0.baseAddress) } == 1
        guard ok else { return nil }
        // Written as text(ip:) writes it (which writes an IPv4-mapped address as IPv4), or it is
        // not one of ours.
        let mapped = bracketed && bytes[0..<10].allSatisfy { $0 == 0 } && bytes[10] == 0xFF && bytes[11] == 0xFF
        return !mapped && text == Substring(Self.text(ip: bytes)) ? bytes : nil
    }

    static func isWildcard(_ ip: [UInt8]) -> Bool { ip.allSatisfy { $0 == 0 } }
}

/// Whether a host name is this host: a loopback address, or an address of one of its interfaces.
package enum LocalAddress {
    package static func isLocal(_ host: String) -> Bool { !socketAddresses(ofLocal: host, port: 0).isEmpty }

    /// The addresses `host` resolves to that are this host's, in the resolver's order and each
    /// once, as the resolver gives them (its family kept) with `port`: the addresses a same-host
    /// client tries.
    package static func socketAddresses(ofLocal host: String, port: UInt16) -> [[UInt8]] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &list) == 0, let list else { return [] }
        defer { freeaddrinfo(list) }
        let own = interfaceAddresses()
        var result: [[UInt8]] = []
        var entry: UnsafeMutablePointer<addrinfo>? = list
        while let e = entry {
            if let address = e.pointee.ai_addr {
                let whole = Array(UnsafeRawBufferPointer(start: address, count: Int(e.pointee.ai_addrlen)))
                if let ip = SocketAddress.ip(of: whole), isLoopback(ip) || own.contains(ip) {
                    let local = SocketAddress.make(ip: ip, port: port, familyOf: whole)
                    if !result.contains(local) { result.append(local) }
                }
            }
            entry = e.pointee.ai_next
        }
        return result
    }

    /// An IP address (4 or 16 bytes) of this host. An address not among those read lately is
    /// looked for once more in a fresh read, unless the last is under 100 ms old: an address
    /// added within the second is found (its client, which read the interfaces itself, came
    /// over shared memory), and a peer that claims addresses of other hosts costs at most ten
    /// reads a second.
    package static func isLocal(ip: [UInt8]) -> Bool {
        isLoopback(ip) || recentInterfaceAddresses(within: .seconds(1)).contains(ip)
            || recentInterfaceAddresses(within: .milliseconds(100)).contains(ip)
    }

    /// Whether an IPv6 wildcard listener takes IPv4 clients too, as a TCP one does here: a
    /// socket that sets no `IPV6_V6ONLY` follows its network namespace's `net.ipv6.bindv6only`
    /// (Linux's default 0: dual-stack), and the `tcp` core's listening socket sets none (checked:
    /// with 1 it refuses an IPv4 connect to `[::]`). Read at each use: a client at its connect, a
    /// listener when it is made (as its TCP twin's socket at its bind); both are in one
    /// namespace, so they agree unless the setting changed between the two. False where the
    /// file cannot be read (IPv6 absent): an IPv4 client then skips `[::]` and, if nothing else
    /// serves it, goes over the fabric, which reaches whatever listens.
    package static var ipv6WildcardTakesIPv4: Bool {
        guard let file = fopen("/proc/sys/net/ipv6/bindv6only", "r") else { return false }
        defer { fclose(file) }
        return fgetc(file) == Int32(UInt8(ascii: "0"))
    }

    private static func isLoopback(_ ip: [UInt8]) -> Bool {
        ip.count == 4 ? ip[0] == 127 : ip == [UInt8](repeating: 0, count: 15) + [1]
    }

    /// The interfaces' addresses as read at most `age` ago: a listener checks every wildcard
    /// client's claim with them, and a local process may connect as often as it likes (each
    /// read is a netlink dump).
    private static func recentInterfaceAddresses(within age: Duration) -> Set<[UInt8]> {
        let now = ContinuousClock.now
        if let (read, addresses) = interfaceCache.withLock({ $0 }), now - read < age { return addresses }
        let addresses = interfaceAddresses()
        interfaceCache.withLock { $0 = (now, addresses) }
        return addresses
    }
    private static let interfaceCache = Mutex<(ContinuousClock.Instant, Set<[UInt8]>)?>(nil)

    private static func interfaceAddresses() -> Set<[UInt8]> {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var result = Set<[UInt8]>()
        var entry = list
        while let e = entry {
            if let address = e.pointee.ifa_addr {
                let length = Int32(address.pointee.sa_family) == AF_INET6 ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size
                if let ip = SocketAddress.ip(of: Array(UnsafeRawBufferPointer(start: address, count: length))) { result.insert(ip) }
            }
            entry = e.pointee.ifa_next
        }
        return result
    }
}

/// The names of the same-host transport's set-up sockets: abstract Unix names, scoped like TCP
/// ports to the network namespace.
///
/// A listener takes the name of the IP address and port its fabric twin is bound to,
/// `rstream-shm:<address>:<port>` (`rstream-shm:127.0.0.1:7471`, `rstream-shm:[::]:7471`). A
/// client tries, for each local address that its host name gives, the names that a TCP connect to
/// that address could reach, in the order the kernel matches listeners: the address itself, the
/// wildcard of its family, and for IPv4 the IPv6 wildcard when IPv6 wildcards are dual-stack here
/// (`LocalAddress.ipv6WildcardTakesIPv4`). So a same-host listener serves exactly the clients its
/// TCP twin would: two listeners of one port on different addresses both serve shared memory, and
/// one bound to a single address takes no client that dialled another.
///
/// A client's socket is bound, before it connects, to
/// `rstream-shm-peer:<address>:<listener port>:<port>`: the address and port it dialled and a
/// port of the ephemeral range that no other client socket of that address and listener port
/// holds (a bind to a name in use fails, as a taken TCP port would; 64 ports picked at random are
/// tried). The listener reads the name back (`getpeername`) and checks it (`checkedClient`): its
/// address is what a wildcard listener's stream reports as its own, and address and port are the
/// peer's address, unique among the live client sockets of that listener, like a TCP peer's
/// among its connections. Abstract names have no owner: another user can take names, and a
/// client that finds none free (`EADDRNOTAVAIL`) falls back to the fabric unless shared memory
/// was asked for.
package enum SameHostName {
    package static let listenerPrefix = "rstream-shm:"
    package static let clientPrefix = "rstream-shm-peer:"
    /// The client ports, as for TCP: 49152 to 65535.
    static let clientPorts = 49152...65535

    package static func listener(boundTo address: [UInt8]) -> String? {
        SocketAddress.ip(of: address).map { listenerName(ip: $0, port: SocketAddress.port(of: address)) }
    }

    private static func listenerName(ip: [UInt8], port: UInt16) -> String { "\(listenerPrefix)\(SocketAddress.text(ip: ip)):\(port)" }

    /// A listener name to try, and the address a stream made through it reports as its peer's.
    package struct Candidate: Equatable {
        package let name: String
        package let destination: [UInt8]
    }

    /// The names a client dialling `destinations` (local addresses, with the port) tries, in order;
    /// `dualStack`: whether an IPv6 wildcard listener takes IPv4 clients.
    package static func candidates(for destinations: [[UInt8]],
                                   dualStack: Bool = LocalAddress.ipv6WildcardTakesIPv4) -> [Candidate] {
        var result: [Candidate] = []
        for destination in destinations {
            guard let ip = SocketAddress.ip(of: destination) else { continue }
            let port = SocketAddress.port(of: destination)
            var reachable = [ip, [UInt8](repeating: 0, count: ip.count)]
            if ip.count == 4 && dualStack { reachable.append([UInt8](repeating: 0, count: 16)) }
            for listening in reachable {
                let name = listenerName(ip: listening, port: port)
                if !result.contains(where: { $0.name == name }) {
                    result.append(Candidate(name: name, destination: destination))
                }
            }
        }
        return result
    }

    /// The name of a client socket whose own address is `address` (the address dialled, with
    /// the client's port) and that dials `listenerPort`.
    package static func client(_ address: [UInt8], listenerPort: UInt16) -> String? {
        SocketAddress.ip(of: address).map {
            "\(clientPrefix)\(SocketAddress.text(ip: $0)):\(listenerPort):\(SocketAddress.port(of: address))"
        }
    }

    /// A client name's parts: the client's own address (the address dialled, the client's port)
    /// and the listener port it dialled; nil when `name` is not a client name as `client` writes it.
    package static func parseClient(_ name: String) -> (own: [UInt8], listenerPort: UInt16)? {
        guard name.hasPrefix(clientPrefix) else { return nil }
        let rest = name.dropFirst(clientPrefix.count)
        guard let lastColon = rest.lastIndex(of: ":") else { return nil }
        let head = rest[..<lastColon]
        guard let middleColon = head.lastIndex(of: ":") else { return nil }
        let ipText = head[..<middleColon]
        let listenerText = head[head.index(after: middleColon)...]
        let portText = rest[rest.index(after: lastColon)...]
        guard let ip = SocketAddress.parse(ip: ipText),
              let listenerPort = UInt16(listenerText), listenerPort != 0, String(listenerPort) == listenerText,
              let port = UInt16(portText), clientPorts.contains(Int(port)), String(port) == portText else { return nil }
        return (SocketAddress.make(ip: ip, port: port), listenerPort)
    }

    /// How many client ports a connect tries before it gives up.
    package static let clientPortTries = 64

    /// Binds client socket `fd` to the name of `destination` (the address and port dialled) and
    /// a free client port, and returns the stream's own address: the address dialled (in its
    /// family) with that port.
    package static func bindClient(_ fd: Int32, dialling destination: [UInt8]) throws(RStreamError) -> [UInt8] {
        guard let ip = SocketAddress.ip(of: destination) else {
            throw RStreamError(.invalidOption, code: EAFNOSUPPORT, "the same-host transport dials IPv4 and IPv6 addresses only")
        }
        let listenerPort = SocketAddress.port(of: destination)
        for _ in 0..<clientPortTries {
            let own = SocketAddress.make(ip: ip, port: UInt16(Int.random(in: clientPorts)), familyOf: destination)
            if try UnixSocket.bind(fd, name: client(own, listenerPort: listenerPort)!) { return own }
        }
        throw RStreamError(.addressUnavailable, code: EADDRNOTAVAIL,
                           "no free same-host client name for \(SocketAddress.text(ip: ip)) port \(listenerPort) in \(clientPortTries) tries")
    }

    /// The addresses of a stream accepted by a listener bound to `listening`, from the name
    /// its client's socket carries (the peer's word, so checked here): the address and port the
    /// client dialled must be ones the listener serves (its own port; its own address, or, for a
    /// wildcard, one of this host, of the listener's family or IPv4 under a dual-stack IPv6
    /// wildcard: `dualStack`, read when the listener was made). Both are given in the listener's
    /// family (an IPv4 client of an IPv6 listener IPv4-mapped).
    package static func checkedClient(_ name: String?, listening: [UInt8], dualStack: Bool) throws(RStreamError) -> (local: [UInt8], peer: [UInt8]) {
        guard let name, let (own, listenerPort) = parseClient(name), let dialled = SocketAddress.ip(of: own),
              let served = SocketAddress.ip(of: listening) else {
            throw RStreamError.protocolViolation("the client's socket carries no client name (\(clientPrefix)<address>:<listener port>:<port>)")
        }
        let port = SocketAddress.port(of: listening)
        guard listenerPort == port else {
            throw RStreamError.protocolViolation("the client says it dialled port \(listenerPort); this listener serves port \(port)")
        }
        let servesIt = SocketAddress.isWildcard(served)
            ? (dialled.count == served.count || (served.count == 16 && dualStack)) && LocalAddress.isLocal(ip: dialled)
            : dialled == served
        guard servesIt else {
            throw RStreamError.protocolViolation("the client says it dialled \(SocketAddress.text(ip: dialled)), which this listener (\(SocketAddress.text(ip: served))) does not serve")
        }
        return (SocketAddress.make(ip: dialled, port: port, familyOf: listening),
                SocketAddress.make(ip: dialled, port: SocketAddress.port(of: own), familyOf: listening))
    }
}
