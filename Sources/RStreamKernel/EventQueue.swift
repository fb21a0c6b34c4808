import CLibfabric
import CFabricShim
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A connection-management event for one endpoint.
package enum ConnectionEvent: Sendable, Equatable {
    case connected(peerData: [UInt8])
    case shutdown
    case failed(code: Int32, data: [UInt8])
}

/// Names one endpoint to the event queue for as long as it is open; never reused in a process.
package struct EndpointToken: Hashable, Sendable {
    package let value: UInt
    private static let next = Atomic<UInt>(1)
    package static func make() -> EndpointToken { EndpointToken(value: next.add(1, ordering: .relaxed).oldValue) }
    private init(value: UInt) { self.value = value }
    /// The token as the context pointer given to `fi_endpoint`.
    package var context: UnsafeMutableRawPointer? { UnsafeMutableRawPointer(bitPattern: value) }
}

/// A connection request read from a listener's queue. Its `info` must be handed to an endpoint
/// (which then owns it) or to `fi_reject` and freed.
package struct ConnectionRequest: @unchecked Sendable {
    package let info: UnsafeMutablePointer<fi_info>
    package let peerData: [UInt8]
}

/// Owner of one event queue, which may serve a listener and every endpoint it accepted. Whoever
/// reads the queue routes each event to the endpoint or listener it belongs to, so that many
/// connections share it without stealing each other's events.
///
/// Endpoints are known by a token of our own (`EndpointToken`, also the context given to
/// `fi_endpoint`), never by their fid's address alone: a closed endpoint's address can be reused
/// by the next one opened, and a late `forget` of the old one must not delete the new one's events.
/// The fid address is only the way to find the token while the endpoint is open.
///
/// Invariant: the queue is read only under `demux`'s lock; an endpoint is registered before it
/// can have events (before `fi_connect`/`fi_accept`) and forgotten before it is closed (the core
/// purges a closed endpoint's queued events, so no later event can name its address); events for
/// a fid that is not registered are dropped; an undelivered request's `info` is freed in deinit.
package final class EventQueue: @unchecked Sendable {
    package let handle: UnsafeMutablePointer<fid_eq>
    package let domain: Domain

    private struct Demux {
        var requests: [ConnectionRequest] = []
        /// Open endpoints: fid address → token.
        var tokens: [UInt: EndpointToken] = [:]
        var events: [EndpointToken: [ConnectionEvent]] = [:]
        /// The wait sets to ring when an event is routed to their endpoint: whoever reads the
        /// queue may not be the one waiting for the event.
        var wakers: [EndpointToken: WaitSet] = [:]
        /// Rung when a connection request is queued.
        var requestWaker: WaitSet?
    }
    private let demux = Mutex(Demux())

    private static let dataOffset = rs_eq_cm_entry_data_offset()
    private static let entryCapacity = dataOffset + 512

    /// The queue's wait descriptor (`FI_WAIT_FD`), nil where the core offers none.
    package let waitDescriptor: Int32?

    /// Events the queue holds: room for a connection event of every endpoint of a process at
    /// the scale issue 11 asks for (a shared queue of 1,024 overflowed at 1,000 connecting
    /// endpoints, and the core then failed connections that had been made).
    package static let defaultSize = 65536

    package init(domain: Domain, size: Int = EventQueue.defaultSize) throws(RStreamError) {
        self.domain = domain
        var attr = fi_eq_attr()
        attr.size = size
        attr.wait_obj = FI_WAIT_FD
        var eq: UnsafeMutablePointer<fid_eq>?
        if fabricCall(.eqOpen, { fi_eq_open(domain.fabric, &attr, &eq, nil) }) < 0 {
            attr.wait_obj = FI_WAIT_NONE // a core without wait descriptors: waiters sleep in steps
            try fabricCheck(.eqOpen, "fi_eq_open") { fi_eq_open(domain.fabric, &attr, &eq, nil) }
        }
        handle = eq!
        var fd: Int32 = -1
        if attr.wait_obj == FI_WAIT_FD, fi_control(fidOf(eq!), Int32(FI_GETWAIT), &fd) == 0, fd >= 0 {
            waitDescriptor = fd
        } else {
            waitDescriptor = nil
        }
    }

    /// Starts routing the events of `endpoint` to `token`, ringing `waitSet` (if any) for each.
    package func register(_ endpoint: UnsafeMutablePointer<fid>, as token: EndpointToken, waitSet: WaitSet?) {
        demux.withCheckedLock(key: lockKey(self)) { d in
            d.tokens[Self.address(endpoint)] = token
            d.wakers[token] = waitSet
        }
    }

    /// Rings `waitSet` whenever a connection request is queued.
    package func registerRequestWaker(_ waitSet: WaitSet) {
        demux.withCheckedLock(key: lockKey(self)) { $0.requestWaker = waitSet }
    }

    /// `fi_trywait` on this queue: 0 when a caller may sleep on its descriptor.
    package func tryWait() -> Int {
        var fid: UnsafeMutablePointer<fid>? = fidOf(handle)
        return Int(fi_trywait(domain.fabric, &fid, 1))
    }

    /// True when a connection request is queued.
    package var hasRequest: Bool {
        (try? demux.withCheckedLock(key: lockKey(self)) { (d: inout Demux) throws(RStreamError) -> Bool in
            if d.requests.isEmpty { try drain(&d) }
            return !d.requests.isEmpty
        }) ?? true
    }

    deinit {
        closeFabricObject(fidOf(handle), "event queue")
        demux.withCheckedLock(key: lockKey(self)) { d in for r in d.requests { fi_freeinfo(r.info) } }
    }

    private static func address(_ object: UnsafeMutablePointer<fid>) -> UInt { UInt(bitPattern: object) }

    /// Reads every event now waiting and routes it.
    private func drain(_ d: inout Demux) throws(RStreamError) {
        try withUnsafeTemporaryAllocation(byteCount: Self.entryCapacity, alignment: 16) { (raw) throws(RStreamError) in
            try drain(&d, into: raw.baseAddress!, capacity: raw.count)
        }
    }

    private func drain(_ d: inout Demux, into buffer: UnsafeMutableRawPointer, capacity: Int) throws(RStreamError) {
        while true {
            var event: UInt32 = 0
            let n = fabricCall(.eqRead) { fi_eq_read(handle, &event, buffer, capacity, 0) }
            if n == -Int(FI_EAGAIN) { return }
            if n == -Int(FI_EAVAIL) {
                var err = fi_eq_err_entry()
                let rc = fi_eq_readerr(handle, &err, 0)
                if rc < 0 { throw RStreamError.fabric(rc, "fi_eq_readerr") }
                var data: [UInt8] = []
                if let p = err.err_data, err.err_data_size > 0 {
                    data = Array(UnsafeRawBufferPointer(start: p, count: err.err_data_size))
                }
                if let f = err.fid { route(.failed(code: err.err, data: data), from: f, &d) }
                continue
            }
            if n < 0 { throw RStreamError.fabric(n, "fi_eq_read") }
            let fid = buffer.load(as: UnsafeMutablePointer<fid>?.self)
            let info = buffer.load(fromByteOffset: MemoryLayout<fid_t>.stride, as: UnsafeMutablePointer<fi_info>?.self)
            let dataCount = max(0, n - Self.dataOffset)
            let data = Array(UnsafeRawBufferPointer(start: buffer + Self.dataOffset, count: dataCount))
            switch event {
            case UInt32(FI_CONNREQ):
                if let info {
                    d.requests.append(ConnectionRequest(info: info, peerData: data))
                    d.requestWaker?.stateMayHaveChanged()
                }
            case UInt32(FI_CONNECTED):
                if let fid { route(.connected(peerData: data), from: fid, &d) }
            case UInt32(FI_SHUTDOWN):
                if let fid { route(.shutdown, from: fid, &d) }
            default:
                if let info { fi_freeinfo(info) }
            }
        }
    }

    /// Queues `event` for the endpoint `fid` is; dropped when it is no endpoint still open here.
    private func route(_ event: ConnectionEvent, from fid: UnsafeMutablePointer<fid>, _ d: inout Demux) {
        guard let token = d.tokens[Self.address(fid)] else { return }
        d.events[token, default: []].append(event)
        d.wakers[token]?.stateMayHaveChanged()
    }

    /// The next event for the endpoint `key`, if one has arrived.
    package func takeEvent(for key: EndpointToken) throws(RStreamError) -> ConnectionEvent? {
        try demux.withCheckedLock(key: lockKey(self)) { (d: inout Demux) throws(RStreamError) -> ConnectionEvent? in
            if d.events[key]?.isEmpty ?? true { try drain(&d) }
            guard var list = d.events[key], !list.isEmpty else { return nil }
            let first = list.removeFirst()
            d.events[key] = list.isEmpty ? nil : list
            return first
        }
    }

    /// True when an event for `key` is queued (reading the queue first).
    package func hasEvent(for key: EndpointToken) -> Bool {
        (try? demux.withCheckedLock(key: lockKey(self)) { (d: inout Demux) throws(RStreamError) -> Bool in
            try drain(&d)
            return !(d.events[key]?.isEmpty ?? true)
        }) ?? true
    }

    /// Stops routing to an endpoint about to be closed and drops what is queued for it. Called
    /// before `fi_close`, so that an endpoint opened afterwards at the same address is a stranger.
    package func forget(_ endpoint: UnsafeMutablePointer<fid>, token: EndpointToken) {
        demux.withCheckedLock(key: lockKey(self)) { d in
            if d.tokens[Self.address(endpoint)] == token { d.tokens.removeValue(forKey: Self.address(endpoint)) }
            d.events.removeValue(forKey: token)
            d.wakers.removeValue(forKey: token)
        }
    }

    /// How many endpoints are registered (for tests: a closed endpoint leaves nothing behind).
    package var registeredEndpoints: Int { demux.withCheckedLock(key: lockKey(self)) { $0.tokens.count } }

    package func takeRequest() throws(RStreamError) -> ConnectionRequest? {
        try demux.withCheckedLock(key: lockKey(self)) { (d: inout Demux) throws(RStreamError) -> ConnectionRequest? in
            if d.requests.isEmpty { try drain(&d) }
            return d.requests.isEmpty ? nil : d.requests.removeFirst()
        }
    }

    /// Polls `body` until it yields a value or `deadline` passes (nil: wait for ever), through the
    /// kernel's one wait (naps: no wait set is armed for one connection's event).
    package static func wait<T>(
        until deadline: ContinuousClock.Instant?, _ what: @autoclosure () -> String,
        _ body: () throws(RStreamError) -> T?
    ) throws(RStreamError) -> T {
        try BlockingWait(deadline: deadline, waitSet: nil, what: what()).run { (_) throws(RStreamError) in try body() }
    }
}
