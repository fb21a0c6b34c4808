import CSameHost
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

    /// How a connect of this selection, due by `deadline`, bears a full backlog: one that chose
    /// shared memory by itself gives it up soon for the fabric.
    func fullBacklog(before deadline: ContinuousClock.Instant?) -> FullBacklog {
        self == .automatic ? .giveUpSoon(before: deadline) : .retry
    }
}

/// What a same-host connect does while the listener's backlog stays full (a burst of clients,
/// or a socket of another user holding the name without accepting).
package enum FullBacklog: Sendable, Equatable {
    /// Retries for 10 s (as TCP retries a SYN), then fails with `.timedOut`.
    case retry
    /// Retries for this long, then gives the name up (`.addressUnavailable`): for a connect that
    /// chose shared memory by itself and can go over the fabric instead (whose listener is the
    /// same).
    case giveUp(after: Duration)

    /// `giveUp` after a second, or after half the time left before `deadline` if that is less,
    /// so that the fabric has time too.
    static func giveUpSoon(before deadline: ContinuousClock.Instant?) -> FullBacklog {
        guard let deadline else { return .giveUp(after: .seconds(1)) }
        return .giveUp(after: min(.seconds(1), max(.zero, deadline - .now) / 2))
    }

    /// How long the backlog is retried.
    var patience: Duration {
        switch self {
        case .retry: .seconds(10)
        case .giveUp(let after): after
        }
    }

    /// What the connect to `place` fails with once `patience` ran out.
    func failure(at place: String) -> RStreamError {
        let context = "\(place) kept a full backlog for \(patience)"
        return self == .retry ? RStreamError(.timedOut, code: ETIMEDOUT, context)
                              : RStreamError(.addressUnavailable, code: EADDRNOTAVAIL, context)
    }
}

/// Both ends of the same-host set-up over the Unix socket. The active side sends its 24-byte
/// block of protocol v4 (base 0 and key 0: offsets into its inbound ring), then what the caller
/// wants the peer to have (connection data, at most `userDataLimit` bytes), with its inbound
/// segment and status segment as `SCM_RIGHTS`; the passive side answers the same way,
/// or refuses with a message of text alone (the reason). Everything received is checked before
/// it is used: the block as on the fabric, the descriptors' kinds, seals and sizes by the transport.
package enum SameHostHandshake {
    /// Connection data either side may add after its block.
    package static let userDataLimit = 232

    /// Checks a set-up message; the descriptors it carries are closed if it fails.
    static func checkedBlock(_ message: UnixSocket.Message, expecting what: String) throws(RStreamError) -> ConnectionBlock {
        do throws(RStreamError) {
            guard !message.truncated, message.descriptors.count == SameHostLayout.descriptorCount else {
                throw RStreamError.protocolViolation("\(what) carried \(message.descriptors.count)\(message.truncated ? "+" : "") descriptors; \(SameHostLayout.descriptorCount) are due")
            }
            guard message.bytes.count <= ConnectionBlock.size + userDataLimit else {
                throw RStreamError.protocolViolation("\(what) has \(message.bytes.count) bytes; a block and at most \(userDataLimit) more are allowed")
            }
            return try ConnectionBlock.decode(message.bytes[...], expectIwarp: false)
        } catch {
            message.closeDescriptors()
            throw error
        }
    }

    /// Connects to the same-host listener that serves one of `destinations` (local addresses, as
    /// `sockaddr`s with the port; `SameHostName`); nil when none listens. A refusal, a listener
    /// that closes, a bad answer and the deadline are distinct errors; a name that cannot be used
    /// (`.addressUnavailable`: none free for the client, a listener of another user, a backlog
    /// that stays full past `fullBacklog`'s giving up) is another.
    package static func connect(destinations: [[UInt8]], shape: EndpointShape, fullBacklog: FullBacklog = .retry,
                                deadline: ContinuousClock.Instant?) throws(RStreamError) -> StreamEngine? {
        guard let attempt = try SameHostConnectAttempt(destinations: destinations, shape: shape, fullBacklog: fullBacklog) else { return nil }
        // Until the request is sent (the listener's backlog is full: it drains as it accepts) the
        // wait naps; then it sleeps on the socket for the answer.
        return try answerWait(attempt, deadline).run(
            readable: { attempt.requestSent ? attempt.socket : nil },
            attempt: { (_) throws(RStreamError) in try attempt.complete()?.0 })
    }

    /// `connect` for a task: the answer is awaited with the task suspended on the reactor.
    package static func connectAsync(destinations: [[UInt8]], shape: EndpointShape, fullBacklog: FullBacklog = .retry,
                                     deadline: ContinuousClock.Instant?) async throws -> StreamEngine? {
        guard let attempt = try SameHostConnectAttempt(destinations: destinations, shape: shape, fullBacklog: fullBacklog) else { return nil }
        return try await answerWait(attempt, deadline).runAsync(
            readable: { attempt.requestSent ? attempt.socket : nil },
            attempt: { (_) throws(RStreamError) in try attempt.complete()?.0 })
    }

    private static func answerWait(_ attempt: SameHostConnectAttempt, _ deadline: ContinuousClock.Instant?) -> BlockingWait {
        BlockingWait(deadline: deadline, waitSet: nil, what: "the answer of \(attempt.place)")
    }

    /// Answers a checked request with a stream (this side's block and `userData`).
    package static func answer(_ request: SameHostRequest, shape: EndpointShape, userData: [UInt8] = []) throws(RStreamError) -> StreamEngine {
        guard let (fd, message) = request.claim() else { throw RStreamError(.closed, code: EINVAL, "the request was answered already") }
        var owned = true
        defer { if owned { close(fd) } }
        let offer: SameHostOffer
        do throws(RStreamError) { offer = try SameHostOffer(shape: shape, socket: fd) } catch {
            message.closeDescriptors()
            try? UnixSocket.send(fd, Array("the listener could not make its segments: \(error.context)".utf8.prefix(200)))
            throw error
        }
        let block = offer.block.encoded + userData.prefix(userDataLimit)
        let descriptors = offer.descriptors // owned by the transport from here on, open until the answer went
        let transport: SharedMemoryTransport
        do throws(RStreamError) {
            transport = try SharedMemoryTransport(offer: offer, peer: request.peer, peerDescriptors: message.descriptors, socket: fd)
        } catch {
            try? UnixSocket.send(fd, Array(error.context.utf8.prefix(200)))
            throw error.kind == .protocolViolation
                ? RStreamError(.protocolViolation, code: error.code, "refused a same-host connection request: \(error.context)") : error
        }
        owned = false
        transport.addresses = (request.localAddress, request.peerAddress)
        try UnixSocket.send(fd, block, descriptors: descriptors)
        transport.releasePassedDescriptors() // the peer holds them now (or never will)
        return try StreamEngine(transport: transport, peer: request.peer, peerTimeout: shape.peerTimeout)
    }

    /// Refuses a request, telling the peer why (`data`: the caller's bytes, sent as they are).
    package static func refuse(_ request: SameHostRequest, data: [UInt8]) {
        guard let (fd, message) = request.claim() else { return }
        message.closeDescriptors()
        try? UnixSocket.send(fd, Array(data.prefix(userDataLimit)))
        close(fd)
    }
}

/// A same-host connection request whose block passed its checks, until it is answered or refused
/// (`SameHostHandshake`); one nobody answered is closed with it, which the peer sees as a refusal
/// without a reason.
///
/// Invariant: the socket and the descriptors of the message are open, and owned here, until
/// `claim` hands them out (once).
package final class SameHostRequest: @unchecked Sendable {
    package let peer: ConnectionBlock
    /// What the peer sent after its block (connection data).
    package let userData: [UInt8]
    /// The stream's addresses (`SameHostName.checkedClient`): the address the client dialled
    /// with the listener's port, and the client's name.
    package let localAddress: [UInt8]
    package let peerAddress: [UInt8]
    private let held: Mutex<(fd: Int32, message: UnixSocket.Message)?>

    init(fd: Int32, message: UnixSocket.Message, peer: ConnectionBlock, addresses: (local: [UInt8], peer: [UInt8])) {
        self.peer = peer
        userData = Array(message.bytes.dropFirst(ConnectionBlock.size))
        (localAddress, peerAddress) = addresses
        held = Mutex((fd, message))
    }

    func claim() -> (fd: Int32, message: UnixSocket.Message)? {
        held.withCheckedLock(key: lockKey(self)) { h in
            defer { h = nil }
            return h
        }
    }

    deinit {
        if let (fd, message) = claim() {
            message.closeDescriptors()
            close(fd)
        }
    }
}

/// The active side of one same-host set-up in flight: the request goes out as soon as the
/// listener's backlog has room, and the answer is read without waiting (`complete`), so a caller
/// that drives the listener from the same thread (a C program) is never blocked by it.
///
/// Invariant: `socket` is open and owned here until the transport takes it in `complete`, or
/// until deinit.
package final class SameHostConnectAttempt: @unchecked Sendable {
    package let socket: Int32
    package let place: String
    /// The listener's name, the address dialled (the stream's peer address) and this side's own.
    private let listenerName: String
    private let destination: [UInt8]
    private let ownAddress: [UInt8]
    private let shape: EndpointShape
    private let started = ContinuousClock.now
    private let fullBacklog: FullBacklog

    private struct Progress: ~Copyable {
        var offer: SameHostOffer?
        var requestSent = false
        let userData: [UInt8]
    }
    private let progress: Mutex<Progress>
    private let socketTaken = Atomic<Bool>(false)
    /// What the stream's waiters will sleep on (the answer's arrival wakes it too).
    package let waitSet: WaitSet
    /// What the listener sent when it refused (the reason), once `complete` threw `.rejected`.
    package private(set) nonisolated(unsafe) var refusal: [UInt8] = []

    /// Starts a connection to the first same-host listener that serves one of `destinations`
    /// (`SameHostName.candidates`); nil when none does. A listener of another user is passed
    /// over: it is not ours to give memory to.
    package init?(destinations: [[UInt8]], shape: EndpointShape, userData: [UInt8] = [],
                  fullBacklog: FullBacklog = .retry) throws(RStreamError) {
        self.fullBacklog = fullBacklog
        var found: (fd: Int32, candidate: SameHostName.Candidate, own: [UInt8], sent: Bool)?
        for candidate in SameHostName.candidates(for: destinations) {
            let fd = try UnixSocket.make()
            do throws(RStreamError) {
                let own = try SameHostName.bindClient(fd, dialling: candidate.destination)
                switch try UnixSocket.connect(fd, name: candidate.name) {
                case .nobody: break
                case .backlogFull: found = (fd, candidate, own, false)
                // An abstract name has no permissions: a listener of another user (not root) may
                // be squatting on it.
                case .connected where Self.listenerIsTrusted(fd): found = (fd, candidate, own, true)
                case .connected: break
                }
            } catch {
                close(fd)
                throw error
            }
            if found != nil { break }
            close(fd)
        }
        guard let (fd, candidate, own, sent) = found else { return nil }
        do throws(RStreamError) {
            let offer = try SameHostOffer(shape: shape, socket: fd)
            waitSet = offer.waitSet
            if sent {
                try UnixSocket.send(fd, offer.block.encoded + userData.prefix(SameHostHandshake.userDataLimit), descriptors: offer.descriptors)
            }
            progress = Mutex(Progress(offer: offer, requestSent: sent, userData: userData))
        } catch {
            close(fd)
            throw error
        }
        socket = fd
        listenerName = candidate.name
        destination = candidate.destination
        ownAddress = own
        place = "the same-host listener \(candidate.name)"
        self.shape = shape
    }

    deinit { if !socketTaken.load(ordering: .acquiring) { close(socket) } }

    /// The listener runs as this user or as root (`SO_PEERCRED`).
    static func listenerIsTrusted(_ fd: Int32) -> Bool {
        let uid = rs_peer_uid(fd)
        return uid == Int(getuid()) || uid == 0
    }

    /// False while the listener's backlog was full and the request has not gone out.
    package var requestSent: Bool { progress.withCheckedLock(key: lockKey(self)) { $0.requestSent } }

    /// The stream and the peer's connection data once the answer is in; nil while it is not.
    package func complete() throws(RStreamError) -> (StreamEngine, [UInt8])? {
        try progress.withCheckedLock(key: lockKey(self)) { (p: inout Progress) throws(RStreamError) -> (StreamEngine, [UInt8])? in
            guard p.offer != nil else { throw RStreamError(.closed, code: EINVAL, "the connection to \(place) was completed already") }
            if !p.requestSent {
                switch try UnixSocket.connect(socket, name: listenerName) {
                case .nobody:
                    p.offer = nil
                    throw RStreamError(.connectionRefused, code: ECONNREFUSED, "\(place) has gone")
                case .backlogFull:
                    guard ContinuousClock.now - started < fullBacklog.patience else {
                        p.offer = nil
                        throw fullBacklog.failure(at: place)
                    }
                    return nil
                case .connected:
                    // Known only now that it accepted: the name is another user's (abstract names
                    // have no owner), so it cannot carry this stream.
                    guard Self.listenerIsTrusted(socket) else {
                        p.offer = nil
                        // (ECONNREFUSED, as a C program's fi_connect has always been told.)
                        throw RStreamError(.addressUnavailable, code: ECONNREFUSED, "\(place) belongs to another user")
                    }
                    let offer = p.offer.take()!
                    let request = offer.block.encoded + p.userData.prefix(SameHostHandshake.userDataLimit)
                    let descriptors = offer.descriptors
                    p.offer = consume offer
                    try UnixSocket.send(socket, request, descriptors: descriptors)
                    p.requestSent = true
                }
            }
            guard let message = try UnixSocket.receive(socket, capacity: 1024) else { return nil }
            let mine = p.offer.take()!
            if message.isEnd { throw RStreamError(.connectionReset, code: ECONNRESET, "\(place) closed the connection while it was being made") }
            if message.descriptors.isEmpty && !message.truncated {
                refusal = message.bytes
                throw RStreamError(.rejected, code: ECONNREFUSED, "\(place) refused the connection: \(String(decoding: message.bytes, as: UTF8.self))")
            }
            let peer: ConnectionBlock
            do throws(RStreamError) { peer = try SameHostHandshake.checkedBlock(message, expecting: "the answer") } catch {
                throw RStreamError(.protocolViolation, code: error.code, "\(place) answered with a bad connection block: \(error.context)")
            }
            let transport = try SharedMemoryTransport(offer: mine, peer: peer, peerDescriptors: message.descriptors, socket: socket)
            transport.releasePassedDescriptors() // the request carried them: the peer answered, so it holds them
            socketTaken.store(true, ordering: .releasing)
            transport.addresses = (ownAddress, destination)
            let engine = try StreamEngine(transport: transport, peer: peer, peerTimeout: shape.peerTimeout)
            return (engine, Array(message.bytes.dropFirst(ConnectionBlock.size)))
        }
    }
}
