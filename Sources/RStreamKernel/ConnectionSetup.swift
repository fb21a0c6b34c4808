import CLibfabric
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A host and port in numeric form.
package func numericAddress(_ address: UnsafeRawPointer, length: Int) -> (host: String, port: UInt16)? {
    var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
    var port = [CChar](repeating: 0, count: Int(NI_MAXSERV))
    let rc = getnameinfo(address.assumingMemoryBound(to: sockaddr.self), socklen_t(length), &host, socklen_t(host.count),
                         &port, socklen_t(port.count), NI_NUMERICHOST | NI_NUMERICSERV)
    guard rc == 0 else { return nil }
    let hostText = host.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    let portText = port.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    return (hostText, UInt16(portText) ?? 0)
}

/// Owner of a passive endpoint listening on one address, with the event queue it shares with every
/// endpoint it accepts and the domain they are opened in.
///
/// Invariant: `pep` is open and bound to `eventQueue` until `stopListening` (at the latest deinit); requests taken from the queue
/// are either accepted (their `fi_info` then belongs to the endpoint) or rejected and freed.
package final class PassiveListener: @unchecked Sendable {
    private let info: FabricInfo
    package let domain: Domain
    package let eventQueue: EventQueue
    private let pep: UnsafeMutablePointer<fid_pep>
    package let requirements: CoreRequirements
    package let host: String
    package let port: UInt16
    /// The bound address as a `sockaddr` of the core's format (the real port when asked for 0).
    package let boundAddress: [UInt8]
    /// What a thread waiting for a connection request sleeps on; nil without wait descriptors.
    package let waitSet: WaitSet?

    package init(host: String, port: UInt16, backlog: Int, requirements: CoreRequirements) throws(RStreamError) {
        self.requirements = requirements
        let info = try FabricInfo.query(requirements, node: host, service: String(port), source: true)
        let domain = try Domain.shared(for: info.head)
        let eventQueue = try EventQueue(domain: domain)
        var pep: UnsafeMutablePointer<fid_pep>?
        try fabricCheck(.passiveEndpoint, "fi_passive_ep") { fi_passive_ep(domain.fabric, info.head, &pep, nil) }
        do throws(RStreamError) {
            try fabricCheck(.bind, "fi_pep_bind") { fi_pep_bind(pep, fidOf(eventQueue.handle), 0) }
            var depth = Int32(clamping: backlog)
            _ = fi_control(fidOf(pep!), Int32(FI_BACKLOG), &depth) // a core without a settable backlog keeps its own
            try fabricCheck(.listen, "fi_listen on \(host):\(port)") { fi_listen(pep) }
            var storage = sockaddr_storage()
            var length = MemoryLayout<sockaddr_storage>.size
            try fabricCheck(.getname, "fi_getname") { fi_getname(fidOf(pep!), &storage, &length) }
            let bound = withUnsafeBytes(of: &storage) { numericAddress($0.baseAddress!, length: length) }
            self.host = bound?.host ?? host
            self.port = bound?.port ?? port
            boundAddress = withUnsafeBytes(of: &storage) { Array($0.prefix(length)) }
        } catch {
            closeFabricObject(fidOf(pep!), "passive endpoint")
            throw error
        }
        self.info = info
        self.domain = domain
        self.eventQueue = eventQueue
        self.pep = pep!
        waitSet = eventQueue.waitDescriptor.flatMap { WaitSet(waitDescriptors: [$0]) }
        if let waitSet { eventQueue.registerRequestWaker(waitSet) }
    }

    deinit { stopListening() }

    private let pepClosed = Atomic<Bool>(false)

    /// Closes the passive endpoint (once): the port is free again. Only `StreamAcceptor.close`
    /// calls it before deinit, once no call is inside.
    package func stopListening() {
        guard !pepClosed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        // Requests already queued are refused, not left for their clients to time out on.
        while let request = try? eventQueue.takeRequest() { reject(request, reason: "the listener closed") }
        closeFabricObject(fidOf(pep), "passive endpoint")
    }


    /// True when the caller may sleep on `waitSet` until a request comes; false when one is
    /// already queued (or there is no descriptor, or `interrupted` answers true after arming).
    package func prepareToWait(sleeper: Bool = false, unless interrupted: () -> Bool = { false }) -> Bool {
        guard let waitSet else { return false }
        return acceptLock.withCheckedLock(key: lockKey(self)) { _ in
            for _ in 0..<8 {
                waitSet.arm()
                if eventQueue.hasRequest || interrupted() { return false }
                if eventQueue.tryWait() == 0 {
                    if sleeper { waitSet.willSleep() }
                    return true
                }
            }
            return false
        }
    }

    /// Serialises arming against other waiters on this listener (the role a stream's lock plays).
    private let acceptLock = Mutex(())

    /// Waits for the next request, through the kernel's one wait.
    private func nextRequest(deadline: ContinuousClock.Instant?) throws(RStreamError) -> ConnectionRequest {
        try BlockingWait(deadline: deadline, waitSet: waitSet, what: "a connection request").run(
            prepare: { prepareToWait(sleeper: true) },
            attempt: { (_) throws(RStreamError) in try eventQueue.takeRequest() })
    }

    /// The longest an accepted fabric connection may take to complete (`FI_CONNECTED`).
    static let handshakeLimit: Duration = .seconds(10)

    /// Refuses a request, telling the peer why (truncated to what connection data can carry).
    package func reject(_ request: ConnectionRequest, reason: String) {
        reject(request, data: Array(reason.utf8.prefix(200)))
    }

    /// Refuses a request with `data` as the rejection's connection data.
    package func reject(_ request: ConnectionRequest, data: [UInt8]) {
        _ = data.withUnsafeBytes { raw in
            fabricCall(.reject) { fi_reject(pep, request.info.pointee.handle, raw.baseAddress, raw.count) }
        }
        fi_freeinfo(request.info)
    }

    /// The next queued request whose block passes every check, without waiting; a request whose
    /// block fails is rejected with the reason, which `refused` receives, and the next one is read.
    package func takeCheckedRequest(
        expectIwarp: Bool, refused: (RStreamError) -> Void = { _ in }
    ) throws(RStreamError) -> (request: ConnectionRequest, peer: ConnectionBlock)? {
        while let request = try eventQueue.takeRequest() {
            do throws(RStreamError) {
                return (request, try ConnectionBlock.decode(request.peerData, expectIwarp: expectIwarp))
            } catch {
                reject(request, reason: error.context)
                refused(RStreamError(.protocolViolation, code: error.code, "refused a connection request: \(error.context)"))
            }
        }
        return nil
    }

    /// Opens an endpoint for a checked request and answers it with this side's block followed by
    /// `userData`; the connection is made once `FI_CONNECTED` arrives for the transport's key.
    /// A request that cannot be served is rejected with the reason. The request's `info` is
    /// released here either way.
    package func beginAccept(
        _ request: ConnectionRequest, peer: ConnectionBlock, shape: EndpointShape, userData: [UInt8] = []
    ) throws(RStreamError) -> FabricTransport {
        let transport: FabricTransport
        do throws(RStreamError) {
            transport = try FabricTransport(info: request.info, domain: domain, eventQueue: eventQueue, shape: shape)
            try transport.postInitialReceives()
        } catch {
            reject(request, reason: "the listener could not open an endpoint: \(error.context)")
            throw error
        }
        fi_freeinfo(request.info)
        transport.connect(to: peer)
        let answer = transport.localBlock.encoded + userData
        let endpoint = transport.endpoint
        let rc = answer.withUnsafeBytes { raw in fabricCall(.accept) { fi_accept(endpoint, raw.baseAddress, raw.count) } }
        if rc < 0 { throw .fabric(rc, "fi_accept") }
        return transport
    }

    /// Waits for the next connection request and makes it a stream. A request whose block fails a
    /// check is rejected with the reason and reported as a `protocolViolation`; the listener goes on.
    package func accept(shape: EndpointShape, deadline: ContinuousClock.Instant?) throws(RStreamError) -> StreamEngine {
        let accepted = try acceptConnection(shape: shape, deadline: deadline)
        return try StreamEngine(transport: accepted.transport, peer: accepted.peer, peerTimeout: shape.peerTimeout)
    }

    /// `accept` without the stream engine: the connected transport and the peer's checked block.
    package func acceptConnection(shape: EndpointShape, deadline: ContinuousClock.Instant?) throws(RStreamError) -> AcceptedConnection {
        try complete(answerNextRequest(shape: shape, deadline: deadline), deadline: deadline)
    }

    /// `accept` of a request already queued, without waiting for one; nil when none is (another
    /// accept took it). For a caller that waits on more than this listener (`StreamAcceptor`):
    /// waiting here, it would not look at the rest.
    package func acceptQueued(shape: EndpointShape, deadline: ContinuousClock.Instant?) throws(RStreamError) -> StreamEngine? {
        guard let request = try eventQueue.takeRequest() else { return nil }
        let accepted = try complete(answer(request, shape: shape), deadline: deadline)
        return try StreamEngine(transport: accepted.transport, peer: accepted.peer, peerTimeout: shape.peerTimeout)
    }

    /// Waits for an answered request's `FI_CONNECTED` (at most `handshakeLimit`).
    private func complete(_ answered: (FabricTransport, ConnectionBlock), deadline: ContinuousClock.Instant?) throws(RStreamError) -> AcceptedConnection {
        let (transport, peer) = answered
        let completing = completion(of: transport, deadline: deadline)
        let event: ConnectionEvent
        do throws(RStreamError) {
            event = try completing.wait.run { (_) throws(RStreamError) in try completing.event() }
        } catch {
            throw completionFailure(error, transport, deadline)
        }
        try check(event)
        return AcceptedConnection(transport: transport, peer: peer)
    }

    /// `accept` for a task: the request is answered at once; the connection's completion is
    /// awaited with the task suspended (napping), not its thread: the client it waits for may
    /// need that thread to make progress.
    /// Nil when no request is queued (another accept, or the listener's close, took it).
    package func acceptAsync(shape: EndpointShape, deadline: ContinuousClock.Instant?) async throws -> StreamEngine? {
        guard let request = try eventQueue.takeRequest() else { return nil }
        let (transport, peer) = try answer(request, shape: shape)
        let completing = completion(of: transport, deadline: deadline)
        let event: ConnectionEvent
        do {
            event = try await completing.wait.runAsync { (_) throws(RStreamError) in try completing.event() }
        } catch let error as RStreamError {
            throw completionFailure(error, transport, deadline)
        }
        try check(event)
        return try StreamEngine(transport: transport, peer: peer, peerTimeout: shape.peerTimeout)
    }

    /// Takes the next request (waiting for one), checks its block and answers it with an endpoint.
    private func answerNextRequest(shape: EndpointShape, deadline: ContinuousClock.Instant?) throws(RStreamError) -> (FabricTransport, ConnectionBlock) {
        try answer(try nextRequest(deadline: deadline), shape: shape)
    }

    /// Checks a request's block and answers it with an endpoint (a bad block is refused).
    private func answer(_ request: ConnectionRequest, shape: EndpointShape) throws(RStreamError) -> (FabricTransport, ConnectionBlock) {
        let peer: ConnectionBlock
        do throws(RStreamError) {
            peer = try ConnectionBlock.decode(request.peerData, expectIwarp: shape.iwarp)
        } catch {
            reject(request, reason: error.context)
            throw RStreamError(.protocolViolation, code: error.code, "refused a connection request: \(error.context)")
        }
        return (try beginAccept(request, peer: peer, shape: shape), peer)
    }

    /// The wait for an answered request's `FI_CONNECTED`, bounded even without a deadline (the
    /// listener's close waits for a look in progress), and the look it repeats.
    private func completion(of transport: FabricTransport, deadline: ContinuousClock.Instant?)
        -> (wait: BlockingWait, event: () throws(RStreamError) -> ConnectionEvent?) {
        let key = transport.eventKey, eventQueue = eventQueue
        let completeBy = min(deadline ?? .now + Self.handshakeLimit, .now + Self.handshakeLimit)
        return (BlockingWait(deadline: completeBy, waitSet: nil, what: "the accepted connection to complete"),
                { () throws(RStreamError) in try eventQueue.takeEvent(for: key) })
    }

    /// A completion that did not come: the caller's deadline, or this one client failing to connect.
    private func completionFailure(_ error: RStreamError, _ transport: FabricTransport, _ deadline: ContinuousClock.Instant?) -> RStreamError {
        guard error.kind == .timedOut && (deadline.map { ContinuousClock.now < $0 } ?? true) else { return error }
        transport.disconnect()
        return RStreamError(.connectionReset, code: ECONNABORTED, "a client did not complete its connection within \(Self.handshakeLimit)")
    }

    private func check(_ event: ConnectionEvent) throws(RStreamError) {
        switch event {
        case .connected: return
        case .shutdown: throw RStreamError(.connectionReset, code: 104, "the peer left before the connection completed")
        case .failed(let code, _): throw RStreamError.fabric(Int(code), "completing an accepted connection")
        }
    }
}

/// A connected transport with the peer's checked connection block.
package struct AcceptedConnection: ~Copyable {
    package var transport: FabricTransport
    package let peer: ConnectionBlock
}

/// An endpoint that offered a connection block, with the first event that answered it.
package struct OfferedConnection: ~Copyable {
    package var transport: FabricTransport
    package let event: ConnectionEvent
}

package enum ActiveConnector {
    /// `host:port`, with an IPv6 host in brackets.
    package static func place(_ host: String, _ port: UInt16) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// Opens an endpoint toward `host:port` and offers `block` (this side's own block when nil)
    /// followed by `userData` as connection data; the answer arrives as an event for the
    /// transport's key.
    package static func begin(
        host: String, port: UInt16, shape: EndpointShape, requirements: CoreRequirements,
        block: [UInt8]? = nil, userData: [UInt8] = []
    ) throws(RStreamError) -> FabricTransport {
        let info = try FabricInfo.query(requirements, node: host, service: String(port), source: false)
        let domain = try Domain.shared(for: info.head)
        // Streams that share completion queues share one event queue too (its events are routed
        // by endpoint); one that keeps a queue of its own keeps its own event queue, which its
        // nested wait set holds (a shared one nested in many sets meets the kernel's path limit).
        let eventQueue = FabricTransport.sharesCompletions(shape, over: FabricInfo.attributes(of: info.head))
            ? try domain.clientEventQueue() : try EventQueue(domain: domain, size: 16)
        let transport = try FabricTransport(info: info.head, domain: domain, eventQueue: eventQueue, shape: shape)
        try transport.postInitialReceives()
        let offered = (block ?? transport.localBlock.encoded) + userData
        let endpoint = transport.endpoint
        let destination = info.head.pointee.dest_addr
        let rc = offered.withUnsafeBytes { raw in
            fabricCall(.connect) { fi_connect(endpoint, destination, raw.baseAddress, raw.count) }
        }
        if rc < 0 { throw .fabric(rc, "fi_connect to \(place(host, port))") }
        return transport
    }

    /// Opens an endpoint toward `host:port`, offers `block` (this side's own block when nil) as
    /// connection data, and waits for the answer. Tests use it to play a hostile peer.
    package static func offer(
        host: String, port: UInt16, shape: EndpointShape, requirements: CoreRequirements,
        block: [UInt8]? = nil, deadline: ContinuousClock.Instant?
    ) throws(RStreamError) -> OfferedConnection {
        let place = place(host, port)
        let transport = try begin(host: host, port: port, shape: shape, requirements: requirements, block: block)
        let key = transport.eventKey
        do throws(RStreamError) {
            let event = try EventQueue.wait(until: deadline, "the connection to \(place)") { () throws(RStreamError) in
                try transport.eventQueue.takeEvent(for: key)
            }
            return OfferedConnection(transport: transport, event: event)
        } catch {
            throw error.kind == .timedOut ? RStreamError(.timedOut, code: error.code, "connecting to \(place) timed out") : error
        }
    }

    /// Makes a stream of an offered connection from its answer: the peer's block is checked (a bad
    /// one shuts the connection down), and what the peer sent after it is returned beside the
    /// engine. A refusal, a refusal with a reason and a disconnect are distinct errors.
    package static func complete(
        _ transport: FabricTransport, answer: ConnectionEvent, place: String
    ) throws(RStreamError) -> (engine: StreamEngine, peerData: ArraySlice<UInt8>) {
        switch answer {
        case .connected(let data):
            let peer: ConnectionBlock
            do throws(RStreamError) {
                peer = try ConnectionBlock.decode(data, expectIwarp: transport.shape.iwarp)
            } catch {
                transport.disconnect()
                throw RStreamError(.protocolViolation, code: error.code, "\(place) answered with a bad connection block: \(error.context)")
            }
            transport.connect(to: peer)
            let engine = try StreamEngine(transport: transport, peer: peer, peerTimeout: transport.shape.peerTimeout)
            return (engine, data.dropFirst(ConnectionBlock.size))
        case .shutdown:
            throw RStreamError(.connectionReset, code: 104, "\(place) closed the connection while it was being made")
        case .failed(let code, let data):
            if code == FI_ECONNREFUSED {
                if !data.isEmpty {
                    throw RStreamError(.rejected, code: code, "\(place) refused the connection: \(String(decoding: data, as: UTF8.self))")
                }
                throw RStreamError(.connectionRefused, code: code, "nothing is listening at \(place)")
            }
            throw RStreamError.fabric(Int(code), "connecting to \(place)")
        }
    }

    /// Connects to `host:port`. Nothing listening, a refusal with a reason, an unreachable host and
    /// the deadline passing are distinct errors; a peer whose block fails a check is shut down.
    package static func connect(
        host: String, port: UInt16, shape: EndpointShape, requirements: CoreRequirements,
        deadline: ContinuousClock.Instant?
    ) throws(RStreamError) -> StreamEngine {
        let offered = try offer(host: host, port: port, shape: shape, requirements: requirements, deadline: deadline)
        return try complete(offered.transport, answer: offered.event, place: place(host, port)).engine
    }

    /// `connect` for a task: the answer is awaited with the task suspended (napping: one
    /// connection's event is not worth arming a wait set for).
    package static func connectAsync(
        host: String, port: UInt16, shape: EndpointShape, requirements: CoreRequirements,
        deadline: ContinuousClock.Instant?
    ) async throws -> StreamEngine {
        let place = place(host, port)
        let transport = try begin(host: host, port: port, shape: shape, requirements: requirements)
        let key = transport.eventKey
        let event: ConnectionEvent
        do {
            event = try await BlockingWait(deadline: deadline, waitSet: nil, what: "the connection to \(place)").runAsync {
                (_) throws(RStreamError) in try transport.eventQueue.takeEvent(for: key)
            }
        } catch let error as RStreamError where error.kind == .timedOut {
            throw RStreamError(.timedOut, code: error.code, "connecting to \(place) timed out")
        }
        return try complete(transport, answer: event, place: place).engine
    }
}

/// What a core lets connection set-up carry, read from the core itself.
package enum CoreLimits {
    private static let cache = Mutex<[String: Int]>([:])
    private final class CacheOwner: Sendable {}
    private static let cacheOwner = CacheOwner()

    /// Bytes of connection data the core carries (`FI_OPT_CM_DATA_SIZE` of one of its passive
    /// endpoints, opened once per core and process and closed again).
    package static func connectionData(_ requirements: CoreRequirements) throws(RStreamError) -> Int {
        let key = "\(requirements.provider ?? "*")|\(requirements.iwarp)" // "*": whichever core query picks
        if let known = cache.withCheckedLock(key: lockKey(cacheOwner), { $0[key] }) { return known }
        let info = try FabricInfo.query(requirements, node: nil, service: nil, source: false)
        let domain = try Domain.shared(for: info.head)
        var pep: UnsafeMutablePointer<fid_pep>?
        try fabricCheck(.passiveEndpoint, "fi_passive_ep") { fi_passive_ep(domain.fabric, info.head, &pep, nil) }
        defer { closeFabricObject(fidOf(pep!), "passive endpoint") }
        var size = 0
        var length = MemoryLayout<Int>.size
        try fabricCheck(.getopt, "fi_getopt(FI_OPT_CM_DATA_SIZE)") {
            fi_getopt(fidOf(pep!), Int32(FI_OPT_ENDPOINT), Int32(FI_OPT_CM_DATA_SIZE), &size, &length)
        }
        cache.withCheckedLock(key: lockKey(cacheOwner)) { $0[key] = size }
        return size
    }
}

/// Makes streams over whichever transport fits: the same-host transport for an address of this
/// host whose listener serves it (unless a core was named), else the fabric (`SameHostSelection`).
package enum StreamConnector {
    package static func connect(
        host: String, port: UInt16, shape: EndpointShape, requirements: CoreRequirements,
        deadline: ContinuousClock.Instant?
    ) throws(RStreamError) -> StreamEngine {
        let selection = SameHostSelection(provider: requirements.provider)
        if case let destinations = sameHostDestinations(host: host, port: port, shape: shape, selection: selection), !destinations.isEmpty,
           let engine = try fallingBack(selection, { () throws(RStreamError) in
               try SameHostHandshake.connect(destinations: destinations, shape: shape, fullBacklog: selection.fullBacklog(before: deadline), deadline: deadline)
           }) {
            return engine
        }
        try checkFabricAllowed(host: host, port: port, shape: shape, selection: selection)
        return try ActiveConnector.connect(host: host, port: port, shape: shape, requirements: requirements, deadline: deadline)
    }

    /// `connect` for a task: the answer is awaited with the task suspended, not its thread.
    package static func connectAsync(
        host: String, port: UInt16, shape: EndpointShape, requirements: CoreRequirements,
        deadline: ContinuousClock.Instant?
    ) async throws -> StreamEngine {
        let selection = SameHostSelection(provider: requirements.provider)
        if case let destinations = sameHostDestinations(host: host, port: port, shape: shape, selection: selection), !destinations.isEmpty {
            do {
                if let engine = try await SameHostHandshake.connectAsync(destinations: destinations, shape: shape,
                                                                         fullBacklog: selection.fullBacklog(before: deadline), deadline: deadline) { return engine }
            } catch let error as RStreamError where Self.fallsBack(error, selection) {}
        }
        try checkFabricAllowed(host: host, port: port, shape: shape, selection: selection)
        return try await ActiveConnector.connectAsync(host: host, port: port, shape: shape, requirements: requirements, deadline: deadline)
    }

    /// A same-host connect, where a client that finds no usable name (`.addressUnavailable`: no
    /// free client name, the listener's name held by another user, or a backlog that stayed full
    /// for a second: abstract names have no owner) goes over the fabric instead unless shared
    /// memory was asked for.
    private static func fallingBack(_ selection: SameHostSelection,
                                    _ connect: () throws(RStreamError) -> StreamEngine?) throws(RStreamError) -> StreamEngine? {
        do throws(RStreamError) { return try connect() } catch where fallsBack(error, selection) { return nil }
    }

    private static func fallsBack(_ error: RStreamError, _ selection: SameHostSelection) -> Bool {
        selection == .automatic && error.kind == .addressUnavailable
    }

    /// The addresses to dial over shared memory: those of `host` that are this host's, when the
    /// selection allows it.
    private static func sameHostDestinations(host: String, port: UInt16, shape: EndpointShape, selection: SameHostSelection) -> [[UInt8]] {
        guard selection != .fabricOnly && !shape.iwarp else { return [] }
        return LocalAddress.socketAddresses(ofLocal: host, port: port)
    }

    /// Throws why a stream that shared memory did not carry cannot go over the fabric either.
    private static func checkFabricAllowed(host: String, port: UInt16, shape: EndpointShape, selection: SameHostSelection) throws(RStreamError) {
        guard selection == .sameHostOnly else { return }
        if shape.iwarp { throw RStreamError(.invalidOption, code: EINVAL, "iWarp mode has no meaning for the same-host transport") }
        guard LocalAddress.isLocal(host) else {
            throw RStreamError(.invalidOption, code: EINVAL, "\(host) is not an address of this host: the same-host transport cannot reach it")
        }
        throw RStreamError(.connectionRefused, code: ECONNREFUSED, "nothing serves same-host streams at \(host) port \(port)")
    }
}

/// A listener for both transports on one port: the fabric's passive endpoint, and the same-host
/// Unix socket named for its port (when no other listener holds that name). Requests of either
/// kind wake the same wait set.
package final class StreamAcceptor: @unchecked Sendable {
    package let fabric: PassiveListener
    package let sameHost: SameHostListener?

    package init(host: String, port: UInt16, backlog: Int, requirements: CoreRequirements) throws(RStreamError) {
        var requirements = requirements
        if requirements.provider == SameHostSelection.name { requirements.provider = nil } // the fabric side: the best core
        fabric = try PassiveListener(host: host, port: port, backlog: backlog, requirements: requirements)
        sameHost = try SameHostListener(boundTo: fabric.boundAddress, backlog: backlog, waitSet: fabric.waitSet)
    }

    package var waitSet: WaitSet? { fabric.waitSet }
    package var host: String { fabric.host }
    package var port: UInt16 { fabric.port }

    /// Waits for the next connection of either kind and returns its stream. A request that breaks
    /// the protocol is refused with its reason and thrown as `.protocolViolation`; the listener
    /// goes on. A `close` from another thread ends the wait with `.closed`.
    package func accept(shape: EndpointShape, deadline: ContinuousClock.Instant?) throws(RStreamError) -> StreamEngine {
        try acceptWait(deadline).run(
            interruption: { isClosed ? Self.closedError : nil },
            prepare: { prepareToWait(sleeper: true) },
            attempt: { (_) throws(RStreamError) in try tryAccept(shape: shape, deadline: deadline) })
    }

    /// `accept` for a task: it suspends on the reactor between tries, and a fabric request's
    /// completion is awaited outside the listener's look (so the close does not wait for it).
    package func acceptAsync(shape: EndpointShape, deadline: ContinuousClock.Instant?) async throws -> StreamEngine {
        let ready = try await acceptWait(deadline).runAsync(
            interruption: { isClosed ? Self.closedError : nil },
            prepare: { prepareToWait(sleeper: true) },
            attempt: { (_) throws(RStreamError) in try withOpenListener { () throws(RStreamError) in try look(shape: shape) } })
        switch ready {
        case .stream(let engine): return engine
        case .fabricRequest:
            if let engine = try await fabric.acceptAsync(shape: shape, deadline: deadline) { return engine }
            return try await acceptAsync(shape: shape, deadline: deadline) // taken meanwhile: look again
        }
    }

    /// What one look for a request found.
    private enum Ready { case stream(StreamEngine), fabricRequest }

    /// One look for a request of either kind (inside `withOpenListener`): a same-host one is
    /// answered at once; a fabric one is left for the caller to accept.
    private func look(shape: EndpointShape) throws(RStreamError) -> Ready? {
        if let sameHost, let engine = try sameHost.acceptReady(shape: shape) {
            return .stream(engine)
        }
        return fabric.eventQueue.hasRequest ? .fabricRequest : nil
    }

    private func acceptWait(_ deadline: ContinuousClock.Instant?) -> BlockingWait {
        BlockingWait(deadline: deadline, waitSet: waitSet, what: "a connection request")
    }

    /// `look`, with a fabric request completed here (the core's `FI_CONNECTED` follows the answer
    /// within a round trip; at most `PassiveListener.handshakeLimit`).
    private func tryAccept(shape: EndpointShape, deadline: ContinuousClock.Instant?) throws(RStreamError) -> StreamEngine? {
        try withOpenListener { () throws(RStreamError) -> StreamEngine? in
            switch try look(shape: shape) {
            case .stream(let engine): return engine
            case .fabricRequest: return try fabric.acceptQueued(shape: shape, deadline: deadline) // nil: taken meanwhile
            case nil: return nil
            }
        }
    }

    /// True when the caller may sleep on `waitSet` until a request comes (the same-host sockets in
    /// it are level-triggered: one with a request waiting wakes the sleeper at once). Never once
    /// closed: `close` raises `closed` before it rings, and this reads it after arming.
    package func prepareToWait(sleeper: Bool = false) -> Bool {
        fabric.prepareToWait(sleeper: sleeper, unless: { isClosed })
    }

    // MARK: Closing

    static let closedError = RStreamError(.closed, code: EBADF, "the listener is closed")
    private let closed = Atomic<Bool>(false)
    /// Calls inside the listener's objects, counted so that `close` frees them only once none is.
    private let callsInside = Atomic<Int>(0)

    /// Runs `body` unless the listener is closed (then `.closed`); `close` waits for it to leave.
    /// (Raised before `closed` is read, and `close` reads it after raising `closed`, both
    /// sequentially consistent: either the call sees the close, or the close sees the call.)
    private func withOpenListener<R>(_ body: () throws(RStreamError) -> R) throws(RStreamError) -> R {
        callsInside.add(1, ordering: .sequentiallyConsistent)
        defer { callsInside.subtract(1, ordering: .sequentiallyConsistent) }
        guard !closed.load(ordering: .sequentiallyConsistent) else { throw Self.closedError }
        return try body()
    }

    package var isClosed: Bool { closed.load(ordering: .sequentiallyConsistent) }

    /// Stops listening: a blocked or awaiting `accept` ends with `.closed` (its sleep is rung),
    /// later ones too; once no look for a request is inside the listener's objects, the port and
    /// the same-host socket are released (requests not yet accepted are refused by the peer's
    /// core as the listener goes). Streams already accepted are not touched. A second close does
    /// nothing.
    package func close() {
        guard !closed.exchange(true, ordering: .sequentiallyConsistent) else { return }
        waitSet?.ring()
        // A look in progress never sleeps (the sleep is outside `withOpenListener`): it ends
        // within a core call or, for a fabric request it found, once the accepted connection
        // completes (at most `PassiveListener.handshakeLimit`).
        while callsInside.load(ordering: .sequentiallyConsistent) > 0 { sched_yield() }
        sameHost?.stopListening()
        fabric.stopListening()
    }
}
