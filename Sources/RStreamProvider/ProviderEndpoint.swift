import CLibfabric
import CProviderSupport
import RStreamKernel
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// An active socket endpoint a caller opened (`fi_endpoint`): its options until it is enabled,
/// then the kernel transport while the connection is being made, then the stream engine.
///
/// The engine is published once, through `engine`, so that data calls (the hot path) reach it
/// with one acquiring load and no lock; everything else is under `state`. Lock order: `state` →
/// the bound event queue's lock (events are posted under `state`, which keeps one endpoint's
/// events in order) → the kernel's locks.
final class ProviderEndpoint: ConnectionEventSource, @unchecked Sendable {
    let handle: UnsafeMutablePointer<fid_ep>
    private let facts: ProviderInfo.Facts
    /// Set when the endpoint was opened for an FI_CONNREQ; `fi_accept` answers it.
    private let request: ProviderConnectionRequest?
    let engine = AtomicLazyReference<StreamEngine>()

    private enum Phase {
        case idle
        case connecting(FabricTransport, place: String)
        /// A same-host request sent, its answer read without waiting.
        case connectingSameHost(SameHostConnectAttempt)
        case accepting(FabricTransport, peer: ConnectionBlock)
        case connected
        case failed
    }

    private struct State: @unchecked Sendable {
        var shape: EndpointShape
        var dataLimit: Int?
        var enabled = false
        var phase = Phase.idle
        var eventQueue: ProviderEventQueue?
        /// FI_SHUTDOWN or the error entry that ends a connected endpoint has been posted.
        var shutdownReported = false
        /// What FI_GETWAIT hands out where the core signals nothing: a wait set that ticks.
        var tickingWaitSet: WaitSet?
    }
    private let state: Mutex<State>

    private init(facts: ProviderInfo.Facts, request: ProviderConnectionRequest?, shape: EndpointShape, context: UnsafeMutableRawPointer?) {
        self.facts = facts
        self.request = request
        state = Mutex(State(shape: shape))
        handle = CHandle.allocate(fid_ep.self)
        CHandle.attach(self, to: handle)
        handle.pointee.fid = fid(fclass: Int(FI_CLASS_EP), context: context, ops: Self.fidOps)
        handle.pointee.ops = Self.endpointOps
        handle.pointee.cm = Self.connectionOps
        handle.pointee.msg = Self.messageOps
        handle.pointee.rma = rs_no_rma_ops()
        handle.pointee.tagged = rs_no_tagged_ops()
        handle.pointee.atomic = rs_no_atomic_ops()
        handle.pointee.collective = rs_no_collective_ops()
    }

    static func open(
        _ domain: ProviderDomain, _ info: UnsafeMutablePointer<fi_info>?,
        _ out: UnsafeMutablePointer<UnsafeMutablePointer<fid_ep>?>?, _ context: UnsafeMutableRawPointer?
    ) -> Int32 {
        guard let info, let out else { return -Int32(FI_EINVAL) }
        if let type = info.pointee.ep_attr?.pointee.type, type != FI_EP_UNSPEC && type != FI_EP_SOCK_STREAM {
            return -Int32(FI_EINVAL)
        }
        var request: ProviderConnectionRequest?
        if let handle = info.pointee.handle {
            guard CHandle.isOurs(handle, ops: ProviderConnectionRequest.fidOps) else { return -Int32(FI_EINVAL) }
            request = CHandle.owner(of: handle, as: ProviderConnectionRequest.self)
        }
        let facts = ProviderInfo.Facts(info)
        var shape = EndpointShape(sendRingSize: ProviderInfo.defaultRingSize, receiveRingSize: ProviderInfo.defaultRingSize,
                                  txQueueSize: ProviderInfo.defaultQueueSize, rxCredits: ProviderInfo.defaultQueueSize,
                                  iwarp: facts.iwarp)
        guard case .success(let peerTimeout) = ProviderInfo.peerTimeout() else { return -Int32(FI_EINVAL) }
        shape.peerTimeout = peerTimeout
        shape.sharedCompletions = ProviderInfo.sharedCompletions()
        shape.prefaultRings = ProviderInfo.prefaultRings()
        if let tx = info.pointee.tx_attr?.pointee.size, tx > 0 { shape.txQueueSize = tx }
        if let rx = info.pointee.rx_attr?.pointee.size, rx > 0 { shape.rxCredits = rx }
        guard EndpointShape.txQueueSizes.contains(shape.txQueueSize),
              EndpointShape.rxCreditCounts.contains(shape.rxCredits) else { return -Int32(FI_EINVAL) }
        out.pointee = ProviderEndpoint(facts: facts, request: request, shape: shape, context: context).handle
        return 0
    }

    // MARK: Connection events

    func pollConnection() {
        state.withCheckedLock(key: lockKey(self)) { s in poll(&s) }
    }

    private func post(_ event: QueuedEvent, _ s: borrowing State) {
        s.eventQueue?.post(event)
    }

    private func poll(_ s: inout State) {
        let me = fidOf(handle)
        switch s.phase {
        case .idle, .failed:
            return
        case .connecting(let transport, let place):
            guard let answer = try? transport.eventQueue.takeEvent(for: transport.eventKey) else { return }
            guard case .connected = answer else { return refused(answer, &s) }
            do throws(RStreamError) {
                let (engine, data) = try ActiveConnector.complete(transport, answer: answer, place: place)
                _ = self.engine.storeIfNil(engine)
                s.phase = .connected
                post(.connection(event: UInt32(FI_CONNECTED), fid: me, info: nil, data: Array(data)), s)
            } catch {
                s.phase = .failed
                post(.failure(fid: me, code: error.code == 0 ? EPROTO : error.code, data: []), s)
            }
        case .connectingSameHost(let attempt):
            do throws(RStreamError) {
                guard let (engine, data) = try attempt.complete() else { return }
                _ = self.engine.storeIfNil(engine)
                s.phase = .connected
                // The socket now carries the peer's rings as well: only its hang-up is an event.
                if let events = engine.transport.connectionEventDescriptor { s.eventQueue?.watch(events) }
                post(.connection(event: UInt32(FI_CONNECTED), fid: me, info: nil, data: data), s)
            } catch {
                s.eventQueue?.unwatch(attempt.socket)
                s.phase = .failed
                let code = error.kind == .rejected ? Int32(FI_ECONNREFUSED) : (error.code == 0 ? EPROTO : error.code)
                post(.failure(fid: me, code: code, data: error.kind == .rejected ? attempt.refusal : []), s)
            }
        case .accepting(let transport, let peer):
            guard let answer = try? transport.eventQueue.takeEvent(for: transport.eventKey) else { return }
            guard case .connected = answer else { return refused(answer, &s) }
            do throws(RStreamError) {
                _ = engine.storeIfNil(try StreamEngine(transport: transport, peer: peer, peerTimeout: transport.shape.peerTimeout))
                s.phase = .connected
                post(.connection(event: UInt32(FI_CONNECTED), fid: me, info: nil, data: []), s)
            } catch {
                transport.disconnect()
                s.phase = .failed
                post(.failure(fid: me, code: error.code == 0 ? Int32(FI_ENOMEM) : error.code, data: []), s)
            }
        case .connected:
            guard !s.shutdownReported, let engine = engine.load() else { return }
            // Some cores (tcp) notice a vanished peer only while their data path is progressed.
            engine.progress()
            engine.pollConnectionEvents()
            if let failure = engine.failure, failure.kind == .timedOut {
                // A silent peer (protocol v4's peer timeout) is an error entry, -FI_ETIMEDOUT.
                s.shutdownReported = true
                post(.failure(fid: me, code: Int32(FI_ETIMEDOUT), data: []), s)
            } else if engine.peerHasDisconnected {
                s.shutdownReported = true
                post(.connection(event: UInt32(FI_SHUTDOWN), fid: me, info: nil, data: []), s)
            }
            // A same-host stream's socket stays readable once the peer left: sleep on it no more.
            if s.shutdownReported, facts.isSameHost, let events = engine.transport.connectionEventDescriptor { s.eventQueue?.unwatch(events.fd) }
        }
    }

    /// A connection being made that the core ended: an error entry with the core's code (and
    /// what a rejecting peer sent), or a reset when it simply went away.
    private func refused(_ answer: ConnectionEvent, _ s: inout State) {
        s.phase = .failed
        if case .failed(let code, let data) = answer {
            post(.failure(fid: fidOf(handle), code: code, data: data), s)
        } else {
            post(.failure(fid: fidOf(handle), code: Int32(FI_ECONNRESET), data: []), s)
        }
    }

    /// The engine once connected; while the connection is being made, looks for its answer first
    /// (a caller may try to send before it has read FI_CONNECTED).
    @inline(__always)
    func connectedEngine() -> StreamEngine? {
        if let engine = engine.load() { return engine }
        pollConnection()
        return engine.load()
    }

    var isConnecting: Bool {
        state.withCheckedLock(key: lockKey(self)) { s in
            switch s.phase {
            case .connecting, .accepting, .connectingSameHost: return true
            default: return false
            }
        }
    }

    /// The transport of a connection being made or made.
    private var transport: (any StreamTransport)? {
        if let engine = engine.load() { return engine.transport }
        return state.withCheckedLock(key: lockKey(self)) { s in
            switch s.phase {
            case .connecting(let t, _), .accepting(let t, _): return t
            default: return nil
            }
        }
    }

    /// What FI_GETWAIT hands out: the transport's wait set, or, where the core offers no wait
    /// descriptor (sockets), a set that ticks every millisecond, so that `poll()` never sleeps
    /// through a change nobody signals.
    private func waitSet() -> WaitSet? {
        if case .connectingSameHost(let attempt)? = state.withCheckedLock(key: lockKey(self), { $0.phase }) { return attempt.waitSet }
        guard let transport else { return nil }
        if let waitSet = transport.waitSet { return waitSet }
        return state.withCheckedLock(key: lockKey(self)) { s in
            if s.tickingWaitSet == nil {
                s.tickingWaitSet = WaitSet(waitDescriptors: [])
                s.tickingWaitSet?.addTicker(milliseconds: 1)
            }
            return s.tickingWaitSet
        }
    }

    /// `fi_trywait`: 0 when the caller may sleep on the descriptor, -FI_EAGAIN when bytes (or
    /// the end of the stream, or an error) are readable now or a connection event is due.
    func tryWait() -> Int32 {
        guard let engine = connectedEngine() else {
            return transport == nil && !isConnecting ? -Int32(FI_EOPBADSTATE) : -Int32(FI_EAGAIN)
        }
        if engine.transport.waitSet != nil {
            // Readiness is judged for reading; the descriptor is armed for anything (a C program
            // polls it for room too, and may sleep on it without a timeout).
            return engine.prepareToWait(for: .readable, wakeOn: .anything, lookAgainIfHeard: true) ? 0 : -Int32(FI_EAGAIN)
        }
        engine.progress()
        engine.pollConnectionEvents()
        guard let ticking = waitSet(), !engine.isReadable else { return -Int32(FI_EAGAIN) }
        ticking.arm()
        return 0
    }

    // MARK: Set-up calls

    private func bind(_ object: UnsafeMutablePointer<fid>?, _ flags: UInt64) -> Int32 {
        guard CHandle.isOurs(object, ops: ProviderEventQueue.fidOps) else {
            // Socket endpoints have no completion queues or counters.
            return object == nil ? -Int32(FI_EINVAL) : -Int32(FI_ENOSYS)
        }
        let queue = CHandle.owner(of: object!, as: ProviderEventQueue.self)
        let rc = state.withCheckedLock(key: lockKey(self)) { s -> Int32 in
            guard !s.enabled else { return -Int32(FI_EOPBADSTATE) }
            s.eventQueue = queue
            return 0
        }
        if rc == 0 { queue.attach(self) }
        return rc
    }

    private func enable() -> Int32 {
        state.withCheckedLock(key: lockKey(self)) { s -> Int32 in
            guard s.eventQueue != nil else { return -Int32(FI_ENOEQ) }
            s.enabled = true
            return 0
        }
    }

    /// Bytes of the caller's own connection data that fit beside the protocol's block.
    private func coreDataLimit() -> Int {
        if facts.isSameHost { return SameHostHandshake.userDataLimit }
        return max(0, ((try? CoreLimits.connectionData(facts.requirements)) ?? 0) - ConnectionBlock.size)
    }

    private static func bytes(_ param: UnsafeRawPointer?, _ length: Int) -> [UInt8] {
        guard let param, length > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: param, count: length))
    }

    private func connect(_ address: UnsafeRawPointer?, _ param: UnsafeRawPointer?, _ length: Int) -> Int32 {
        guard request == nil else { return -Int32(FI_EOPBADSTATE) }
        let destination = address.map { sockaddrBytes($0) } ?? facts.destination
        guard let destination, let place = destination.withUnsafeBytes({ numericAddress($0.baseAddress!, length: $0.count) }) else {
            return -Int32(FI_EINVAL)
        }
        // The host is numeric (from the sockaddr), so nothing under the lock waits on a name
        // service; the core's connect is asynchronous.
        return state.withCheckedLock(key: lockKey(self)) { s -> Int32 in
            guard case .idle = s.phase else { return -Int32(FI_EISCONN) }
            guard s.eventQueue != nil else { return -Int32(FI_ENOEQ) }
            guard length <= (s.dataLimit ?? coreDataLimit()) else { return -Int32(FI_EINVAL) }
            s.enabled = true
            if facts.isSameHost { return connectSameHost(place, destination: destination, userData: Self.bytes(param, length), &s) }
            do throws(RStreamError) {
                let transport = try ActiveConnector.begin(host: place.host, port: place.port, shape: s.shape,
                                                          requirements: facts.requirements, userData: Self.bytes(param, length))
                s.phase = .connecting(transport, place: ActiveConnector.place(place.host, place.port))
                s.eventQueue?.watch(transport.eventQueue.waitDescriptor)
                return 0
            } catch {
                return returnCode(error)
            }
        }
    }

    /// fi_connect over the same-host transport: the request goes out now and the answer is read
    /// by `poll` (never waited for here: the listener may be driven by this very thread). Nothing
    /// listening, or an address of another host, is an error entry as a core reports it.
    private func connectSameHost(_ place: (host: String, port: UInt16), destination: [UInt8], userData: [UInt8], _ s: inout State) -> Int32 {
        let me = fidOf(handle)
        guard LocalAddress.isLocal(place.host) else {
            s.phase = .failed
            post(.failure(fid: me, code: Int32(FI_EHOSTUNREACH), data: []), s)
            return 0
        }
        do throws(RStreamError) {
            guard let attempt = try SameHostConnectAttempt(destinations: [destination], shape: s.shape, userData: userData) else {
                s.phase = .failed
                post(.failure(fid: me, code: Int32(FI_ECONNREFUSED), data: []), s)
                return 0
            }
            s.phase = .connectingSameHost(attempt)
            s.eventQueue?.watch(attempt.socket)
            if !attempt.requestSent { s.eventQueue?.watch(nil) } // a full backlog: the queue ticks, and its reads retry
            return 0
        } catch {
            return returnCode(error)
        }
    }

    /// fi_accept of a same-host request: answered at once (the peer's segments are checked and
    /// mapped here), and FI_CONNECTED is posted.
    private func acceptSameHost(_ pending: SameHostRequest, userData: [UInt8], _ s: inout State) -> Int32 {
        do throws(RStreamError) {
            let engine = try SameHostHandshake.answer(pending, shape: s.shape, userData: userData)
            _ = self.engine.storeIfNil(engine)
            s.phase = .connected
            if let events = engine.transport.connectionEventDescriptor { s.eventQueue?.watch(events) }
            post(.connection(event: UInt32(FI_CONNECTED), fid: fidOf(handle), info: nil, data: []), s)
            return 0
        } catch {
            s.phase = .failed
            return returnCode(error)
        }
    }

    private func accept(_ param: UnsafeRawPointer?, _ length: Int) -> Int32 {
        guard let request else { return -Int32(FI_EOPBADSTATE) }
        return state.withCheckedLock(key: lockKey(self)) { s -> Int32 in
            guard case .idle = s.phase else { return -Int32(FI_EISCONN) }
            guard s.eventQueue != nil else { return -Int32(FI_ENOEQ) }
            guard length <= (s.dataLimit ?? coreDataLimit()) else { return -Int32(FI_EINVAL) }
            if request.isSameHost {
                guard let pending = request.claimSameHost() else { return -Int32(FI_EOPBADSTATE) }
                s.enabled = true
                return acceptSameHost(pending, userData: Self.bytes(param, length), &s)
            }
            guard let pending = request.claim(), let listener = request.listener else { return -Int32(FI_EOPBADSTATE) }
            s.enabled = true
            do throws(RStreamError) {
                let transport = try listener.beginAccept(pending, peer: request.peer, shape: s.shape,
                                                                 userData: Self.bytes(param, length))
                s.phase = .accepting(transport, peer: request.peer)
                s.eventQueue?.watch(transport.eventQueue.waitDescriptor)
                return 0
            } catch {
                s.phase = .failed
                return returnCode(error)
            }
        }
    }

    private func shutdown(_ flags: UInt64) -> Int32 {
        guard let engine = connectedEngine() else { return -Int32(FI_ENOTCONN) }
        engine.shutdown()
        return 0
    }

    /// How long `fi_close` waits for the FIN and every write to leave (a socket's lingering close).
    static let linger = Duration.seconds(2)

    private func close() -> Int32 {
        let (queue, phase) = state.withCheckedLock(key: lockKey(self)) { s -> (ProviderEventQueue?, Phase) in
            defer { s.eventQueue = nil; s.phase = .failed }
            return (s.eventQueue, s.phase)
        }
        queue?.detach(self)
        // Events still queued name this endpoint's fid, which is freed below: a later read must
        // not hand them out (libfabric's own providers purge them too).
        queue?.purge(fidOf(handle))
        if let engine = engine.load() {
            engine.closeLingering(for: Self.linger)
        } else {
            switch phase {
            case .connecting(let transport, _), .accepting(let transport, _): transport.disconnect()
            default: break
            }
            request?.rejectIfUnanswered()
        }
        CHandle.free(UnsafeRawPointer(handle))
        return 0
    }

    private func control(_ command: Int32, _ argument: UnsafeMutableRawPointer?) -> Int32 {
        switch command {
        case Int32(FI_ENABLE):
            return enable()
        case Int32(FI_GETWAIT):
            guard let argument else { return -Int32(FI_EINVAL) }
            guard let waitSet = waitSet() else { return -Int32(FI_EOPBADSTATE) }
            // A flat set's eventfd is made now: no descriptor left (or no reactor to ring it) is
            // an error, not a -1 to poll for ever.
            let descriptor = waitSet.descriptor
            guard descriptor >= 0 else { return -Int32(EMFILE) }
            argument.storeBytes(of: descriptor, as: Int32.self)
            return 0
        default:
            return -Int32(FI_ENOSYS)
        }
    }

    // MARK: Names

    private func sockaddrBytes(_ address: UnsafeRawPointer) -> [UInt8] {
        let family = address.load(as: sockaddr.self).sa_family
        let length = family == sa_family_t(AF_INET6) ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size
        return Array(UnsafeRawBufferPointer(start: address, count: length))
    }

    /// Copies `bytes` out the way `fi_getname` does: -FI_ETOOSMALL (with the length needed) when
    /// the caller's buffer is short.
    static func copyAddress(_ bytes: [UInt8]?, _ address: UnsafeMutableRawPointer?, _ length: UnsafeMutablePointer<Int>?) -> Int32 {
        guard let length else { return -Int32(FI_EINVAL) }
        guard let bytes else { return -Int32(FI_EADDRNOTAVAIL) }
        let capacity = length.pointee
        length.pointee = bytes.count
        guard let address, capacity >= bytes.count else { return -Int32(FI_ETOOSMALL) }
        bytes.withUnsafeBytes { address.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        return 0
    }

    private func transportAddress(ofPeer: Bool) -> [UInt8]? {
        transport?.address(ofPeer: ofPeer)
    }

    // MARK: Options

    private func getOption(_ level: Int32, _ name: Int32, _ value: UnsafeMutableRawPointer?, _ length: UnsafeMutablePointer<Int>?) -> Int32 {
        guard level == FI_OPT_ENDPOINT else { return -Int32(FI_ENOPROTOOPT) }
        guard let value, let length, length.pointee >= MemoryLayout<Int>.size else { return -Int32(FI_EINVAL) }
        let result: Int? = state.withCheckedLock(key: lockKey(self)) { s in
            switch name {
            case Int32(FI_OPT_SEND_BUF_SIZE): return s.shape.sendRingSize
            case Int32(FI_OPT_RECV_BUF_SIZE): return s.shape.receiveRingSize
            case Int32(FI_OPT_TX_SIZE): return s.shape.txQueueSize
            case Int32(FI_OPT_RX_SIZE): return s.shape.rxCredits
            case Int32(FI_OPT_CM_DATA_SIZE): return s.dataLimit ?? coreDataLimit()
            default: return nil
            }
        }
        guard let result else { return -Int32(FI_ENOPROTOOPT) }
        value.storeBytes(of: result, as: Int.self)
        length.pointee = MemoryLayout<Int>.size
        return 0
    }

    private func setOption(_ level: Int32, _ name: Int32, _ value: UnsafeRawPointer?, _ length: Int) -> Int32 {
        guard level == FI_OPT_ENDPOINT else { return -Int32(FI_ENOPROTOOPT) }
        let range: ClosedRange<Int>
        switch name {
        case Int32(FI_OPT_SEND_BUF_SIZE), Int32(FI_OPT_RECV_BUF_SIZE): range = EndpointShape.ringSizes
        case Int32(FI_OPT_TX_SIZE): range = EndpointShape.txQueueSizes
        case Int32(FI_OPT_RX_SIZE): range = EndpointShape.rxCreditCounts
        case Int32(FI_OPT_CM_DATA_SIZE): range = 0...coreDataLimit()
        default: return -Int32(FI_ENOPROTOOPT)
        }
        guard let value, length == MemoryLayout<Int>.size else { return -Int32(FI_EINVAL) }
        let wanted = value.loadUnaligned(as: Int.self)
        guard range.contains(wanted) else { return -Int32(FI_EINVAL) }
        return state.withCheckedLock(key: lockKey(self)) { s -> Int32 in
            guard !s.enabled else { return -Int32(FI_EOPBADSTATE) }
            switch name {
            case Int32(FI_OPT_SEND_BUF_SIZE): s.shape.sendRingSize = wanted
            case Int32(FI_OPT_RECV_BUF_SIZE): s.shape.receiveRingSize = wanted
            case Int32(FI_OPT_TX_SIZE): s.shape.txQueueSize = wanted
            case Int32(FI_OPT_RX_SIZE): s.shape.rxCredits = wanted
            default: s.dataLimit = wanted
            }
            return 0
        }
    }

    // MARK: Tables

    @inline(__always)
    static func owner(_ fid: UnsafeMutableRawPointer?) -> ProviderEndpoint {
        CHandle.owner(of: fid!, as: ProviderEndpoint.self)
    }

    nonisolated(unsafe) static let fidOps = table(fi_ops(
        size: MemoryLayout<fi_ops>.size,
        close: { fid in owner(fid).close() },
        bind: { fid, object, flags in owner(fid).bind(object, flags) },
        control: { fid, command, argument in owner(fid).control(command, argument) },
        ops_open: rs_no_ops_open, tostr: rs_no_tostr, ops_set: rs_no_ops_set))

    nonisolated(unsafe) static let endpointOps = table(fi_ops_ep(
        size: MemoryLayout<fi_ops_ep>.size,
        cancel: rs_no_cancel,
        getopt: { fid, level, name, value, length in owner(fid).getOption(level, name, value, length) },
        setopt: { fid, level, name, value, length in owner(fid).setOption(level, name, value, length) },
        tx_ctx: rs_no_tx_ctx, rx_ctx: rs_no_rx_ctx, rx_size_left: rs_no_size_left, tx_size_left: rs_no_size_left))

    nonisolated(unsafe) static let connectionOps = table(fi_ops_cm(
        size: MemoryLayout<fi_ops_cm>.size,
        setname: rs_no_setname,
        getname: { fid, address, length in
            copyAddress(owner(fid).transportAddress(ofPeer: false), address, length)
        },
        getpeer: { ep, address, length in
            let me = owner(ep)
            return copyAddress(me.transportAddress(ofPeer: true) ?? me.facts.destination, address, length)
        },
        connect: { ep, address, param, length in owner(ep).connect(address, param, length) },
        listen: rs_no_listen,
        accept: { ep, param, length in owner(ep).accept(param, length) },
        reject: rs_no_reject,
        shutdown: { ep, flags in owner(ep).shutdown(flags) },
        join: rs_no_join))
}
