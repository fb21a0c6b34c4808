import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Which transport a stream asks for, from the provider name it was given (or
/// `RSTREAM_PROVIDER`): "shm" is the same-host transport alone; a core's name is that core alone;
/// none is automatic: the same-host transport for an address of this host whose listener serves
/// it, else the best core.
package enum SameHostSelection: Equatable {
    case sameHostOnly
    case fabricOnly
    case automatic

    package static let name = "shm"

    package init(provider: String?) {
        var name = provider
        if name == nil, let env = getenv("RSTREAM_PROVIDER"), case let value = String(cString: env), !value.isEmpty { name = value }
        switch name {
        case Self.name?: self = .sameHostOnly
        case nil: self = .automatic
        default: self = .fabricOnly
        }
    }
}

/// Whether a host name is this host: a loopback address, or an address of one of its interfaces.
package enum LocalAddress {
    package static func isLocal(_ host: String) -> Bool {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &list) == 0, let list else { return false }
        defer { freeaddrinfo(list) }
        let own = interfaceAddresses()
        var entry: UnsafeMutablePointer<addrinfo>? = list
        while let e = entry {
            if let address = e.pointee.ai_addr, let bytes = Self.bytes(of: address) {
                if isLoopback(bytes) || own.contains(bytes) { return true }
            }
            entry = e.pointee.ai_next
        }
        return false
    }

    /// An IPv4 or IPv6 address's bytes (an IPv4-mapped IPv6 address as IPv4), nil for others.
    private static func bytes(of address: UnsafePointer<sockaddr>) -> [UInt8]? {
        switch Int32(address.pointee.sa_family) {
        case AF_INET:
            return address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { v4 in
                withUnsafeBytes(of: v4.pointee.sin_addr) { Array($0) }
            }
        case AF_INET6:
            let bytes = address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { v6 in
                withUnsafeBytes(of: v6.pointee.sin6_addr) { Array($0) }
            }
            if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF { return Array(bytes[12...]) }
            return bytes
        default:
            return nil
        }
    }

    private static func isLoopback(_ bytes: [UInt8]) -> Bool {
        bytes.count == 4 ? bytes[0] == 127 : bytes == [UInt8](repeating: 0, count: 15) + [1]
    }

    private static func interfaceAddresses() -> Set<[UInt8]> {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var result = Set<[UInt8]>()
        var entry = list
        while let e = entry {
            if let address = e.pointee.ifa_addr, let bytes = bytes(of: address) { result.insert(bytes) }
            entry = e.pointee.ifa_next
        }
        return result
    }
}

/// Both ends of the same-host set-up over the Unix socket. The active side sends its 24-byte
/// block of protocol v4 (base 0 and key 0: offsets into its inbound ring) with its inbound
/// segment, status segment and doorbell as `SCM_RIGHTS`; the passive side answers the same way, or
/// refuses with a message of text alone (the reason). Everything received is checked before it
/// is used: the block as on the fabric, the descriptors' kinds, seals and sizes by the transport.
package enum SameHostHandshake {
    /// Checks a connection request's message; the descriptors it carries are closed if it fails.
    static func checkedBlock(_ message: UnixSocket.Message, expecting what: String) throws(RStreamError) -> ConnectionBlock {
        do throws(RStreamError) {
            guard !message.truncated, message.descriptors.count == SameHostLayout.descriptorCount else {
                throw RStreamError.protocolViolation("\(what) carried \(message.descriptors.count)\(message.truncated ? "+" : "") descriptors; \(SameHostLayout.descriptorCount) are due")
            }
            let block = try ConnectionBlock.decode(message.bytes[...], expectIwarp: false)
            guard message.bytes.count == ConnectionBlock.size else {
                throw RStreamError.protocolViolation("\(what) has \(message.bytes.count) bytes; a connection block has \(ConnectionBlock.size)")
            }
            return block
        } catch {
            message.closeDescriptors()
            throw error
        }
    }

    /// Connects to the same-host listener of `port`; nil when nothing listens there. A refusal,
    /// a listener that closes, a bad answer and the deadline are distinct errors.
    package static func connect(port: UInt16, shape: EndpointShape, deadline: ContinuousClock.Instant?) throws(RStreamError) -> StreamEngine? {
        let place = "the same-host listener of port \(port)"
        let fd = try UnixSocket.make()
        var owned = true // the socket is ours to close until the transport takes it
        defer { if owned { close(fd) } }
        guard try UnixSocket.connect(fd, port: port) else { return nil }
        let offer = try SameHostOffer(shape: shape, socket: fd)
        try UnixSocket.send(fd, offer.block.encoded, descriptors: offer.descriptors)
        var answer: UnixSocket.Message?
        while answer == nil {
            guard try UnixSocket.waitReadable(fd, until: deadline) else {
                throw RStreamError(.timedOut, code: ETIMEDOUT, "connecting to \(place) timed out")
            }
            answer = try UnixSocket.receive(fd, capacity: 1024)
        }
        let message = answer!
        if message.isEnd { throw RStreamError(.connectionReset, code: ECONNRESET, "\(place) closed the connection while it was being made") }
        if message.descriptors.isEmpty && !message.truncated {
            throw RStreamError(.rejected, code: ECONNREFUSED, "\(place) refused the connection: \(String(decoding: message.bytes, as: UTF8.self))")
        }
        let peer: ConnectionBlock
        do throws(RStreamError) { peer = try checkedBlock(message, expecting: "the answer") } catch {
            throw RStreamError(.protocolViolation, code: error.code, "\(place) answered with a bad connection block: \(error.context)")
        }
        let transport = try SharedMemoryTransport(offer: offer, peer: peer, peerDescriptors: message.descriptors, socket: fd)
        owned = false
        return try StreamEngine(transport: transport, peer: peer, peerTimeout: shape.peerTimeout)
    }

    /// Answers a request that arrived on `fd` (a connection accepted from the listener): a stream,
    /// or a refusal sent to the peer with its reason and thrown as `.protocolViolation`. The socket
    /// is closed unless the stream took it.
    static func answer(_ message: UnixSocket.Message, on fd: Int32, shape: EndpointShape) throws(RStreamError) -> StreamEngine {
        var owned = true
        defer { if owned { close(fd) } }
        func refuse(_ error: RStreamError) -> RStreamError {
            try? UnixSocket.send(fd, Array(error.context.utf8.prefix(200)))
            return RStreamError(.protocolViolation, code: error.code, "refused a same-host connection request: \(error.context)")
        }
        let peer: ConnectionBlock
        do throws(RStreamError) { peer = try checkedBlock(message, expecting: "the request") } catch { throw refuse(error) }
        let offer: SameHostOffer
        do throws(RStreamError) { offer = try SameHostOffer(shape: shape, socket: fd) } catch {
            message.closeDescriptors()
            throw refuse(error)
        }
        let block = offer.block.encoded
        let descriptors = offer.descriptors // owned by the transport from here on, open while it lives
        let transport: SharedMemoryTransport
        do throws(RStreamError) {
            transport = try SharedMemoryTransport(offer: offer, peer: peer, peerDescriptors: message.descriptors, socket: fd)
        } catch {
            throw error.kind == .protocolViolation ? refuse(error) : error
        }
        owned = false
        try UnixSocket.send(fd, block, descriptors: descriptors)
        return try StreamEngine(transport: transport, peer: peer, peerTimeout: shape.peerTimeout)
    }
}

/// The same-host side of a listener: the Unix socket named for its port, and the connections
/// accepted from it whose request has not arrived yet (so a client that connects and says
/// nothing holds up nobody; it is dropped after `requestTimeout`).
///
/// Invariant: `listenDescriptor` is open until deinit; every pending descriptor is open, watched by
/// the wait set, and closed when it leaves the list.
package final class SameHostListener: @unchecked Sendable {
    package let listenDescriptor: Int32
    private struct Pending {
        var fd: Int32
        var since: ContinuousClock.Instant
    }
    private let pending = Mutex<[Pending]>([])
    private let waitSet: WaitSet?
    package static let requestTimeout: Duration = .seconds(10)
    package static let mostPending = 64

    /// Listens for same-host streams of `port`; nil when another listener holds its name.
    package init?(port: UInt16, backlog: Int, waitSet: WaitSet?) throws(RStreamError) {
        let fd = try UnixSocket.make()
        do throws(RStreamError) {
            guard try UnixSocket.listen(fd, port: port, backlog: backlog) else {
                close(fd)
                return nil
            }
        } catch {
            close(fd)
            throw error
        }
        listenDescriptor = fd
        self.waitSet = waitSet
        waitSet?.watch(fd)
    }

    deinit {
        pending.withCheckedLock(key: lockKey(self)) { list in
            for p in list { waitSet?.unwatch(p.fd); close(p.fd) }
            list = []
        }
        waitSet?.unwatch(listenDescriptor)
        close(listenDescriptor)
    }

    /// The next same-host stream whose request has arrived, without waiting; nil when none has.
    /// A request that fails a check is refused with its reason and thrown as `.protocolViolation`.
    package func acceptReady(shape: EndpointShape) throws(RStreamError) -> StreamEngine? {
        let ready = try pending.withCheckedLock(key: lockKey(self)) { (list: inout [Pending]) throws(RStreamError) -> (Int32, UnixSocket.Message)? in
            while let fd = try UnixSocket.accept(listenDescriptor) {
                if list.count >= Self.mostPending {
                    let oldest = list.removeFirst()
                    waitSet?.unwatch(oldest.fd)
                    close(oldest.fd)
                }
                list.append(Pending(fd: fd, since: .now))
                waitSet?.watch(fd)
            }
            var i = 0
            while i < list.count {
                let p = list[i]
                let message: UnixSocket.Message?
                do throws(RStreamError) { message = try UnixSocket.receive(p.fd) } catch { message = UnixSocket.Message(bytes: [], descriptors: [], truncated: false) }
                if let message, !message.isEnd {
                    list.remove(at: i)
                    waitSet?.unwatch(p.fd)
                    return (p.fd, message)
                }
                if message != nil || ContinuousClock.now - p.since > Self.requestTimeout {
                    list.remove(at: i) // closed before it asked, or never asked
                    waitSet?.unwatch(p.fd)
                    close(p.fd)
                    continue
                }
                i += 1
            }
            return nil
        }
        guard let (fd, message) = ready else { return nil }
        return try SameHostHandshake.answer(message, on: fd, shape: shape)
    }
}
