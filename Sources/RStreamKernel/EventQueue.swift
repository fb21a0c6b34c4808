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

/// A connection request read from a listener's queue. Its `info` must be handed to an endpoint
/// (which then owns it) or to `fi_reject` and freed.
package struct ConnectionRequest: @unchecked Sendable {
    package let info: UnsafeMutablePointer<fi_info>
    package let peerData: [UInt8]
}

/// Owner of one event queue, which may serve a listener and every endpoint it accepted. Whoever
/// reads the queue routes each event to the endpoint (by fid) or listener it belongs to, so that
/// many connections share it without stealing each other's events.
///
/// Invariant: the queue is read only under `demux`'s lock; an undelivered request's `info` is
/// freed in deinit.
package final class EventQueue: @unchecked Sendable {
    package let handle: UnsafeMutablePointer<fid_eq>
    package let domain: Domain

    private struct Demux {
        var requests: [ConnectionRequest] = []
        var events: [UInt: [ConnectionEvent]] = [:]
        /// The wait sets to ring when an event is routed to their endpoint (or, at key 0, a request
        /// to the listener): whoever reads the queue may not be the one waiting for the event.
        var wakers: [UInt: WaitSet] = [:]
    }
    private let demux = Mutex(Demux())

    private static let dataOffset = rs_eq_cm_entry_data_offset()
    private static let entryCapacity = dataOffset + 512

    /// The queue's wait descriptor (`FI_WAIT_FD`), nil where the core offers none.
    package let waitDescriptor: Int32?

    package init(domain: Domain, size: Int = 1024) throws(RStreamError) {
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

    /// Rings `waitSet` whenever an event is routed to `key` (0: connection requests).
    package func register(_ waitSet: WaitSet, for key: UInt) {
        demux.withCheckedLock(key: lockKey(self)) { $0.wakers[key] = waitSet }
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
        _ = fi_close(fidOf(handle))
        demux.withCheckedLock(key: lockKey(self)) { d in for r in d.requests { fi_freeinfo(r.info) } }
    }

    package static func key(_ object: UnsafeMutablePointer<fid>) -> UInt { UInt(bitPattern: object) }

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
                if let f = err.fid { route(.failed(code: err.err, data: data), to: Self.key(f), &d) }
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
                    d.wakers[0]?.stateMayHaveChanged()
                }
            case UInt32(FI_CONNECTED):
                if let fid { route(.connected(peerData: data), to: Self.key(fid), &d) }
            case UInt32(FI_SHUTDOWN):
                if let fid { route(.shutdown, to: Self.key(fid), &d) }
            default:
                if let info { fi_freeinfo(info) }
            }
        }
    }

    private func route(_ event: ConnectionEvent, to key: UInt, _ d: inout Demux) {
        d.events[key, default: []].append(event)
        d.wakers[key]?.stateMayHaveChanged()
    }

    /// The next event for the endpoint `key`, if one has arrived.
    package func takeEvent(for key: UInt) throws(RStreamError) -> ConnectionEvent? {
        try demux.withCheckedLock(key: lockKey(self)) { (d: inout Demux) throws(RStreamError) -> ConnectionEvent? in
            if d.events[key]?.isEmpty ?? true { try drain(&d) }
            guard var list = d.events[key], !list.isEmpty else { return nil }
            let first = list.removeFirst()
            d.events[key] = list.isEmpty ? nil : list
            return first
        }
    }

    /// True when an event for `key` is queued (reading the queue first).
    package func hasEvent(for key: UInt) -> Bool {
        (try? demux.withCheckedLock(key: lockKey(self)) { (d: inout Demux) throws(RStreamError) -> Bool in
            try drain(&d)
            return !(d.events[key]?.isEmpty ?? true)
        }) ?? true
    }

    /// Drops whatever is still queued for a closed endpoint.
    package func forget(_ key: UInt) {
        demux.withCheckedLock(key: lockKey(self)) { d in
            d.events.removeValue(forKey: key)
            d.wakers.removeValue(forKey: key)
        }
    }

    package func takeRequest() throws(RStreamError) -> ConnectionRequest? {
        try demux.withCheckedLock(key: lockKey(self)) { (d: inout Demux) throws(RStreamError) -> ConnectionRequest? in
            if d.requests.isEmpty { try drain(&d) }
            return d.requests.isEmpty ? nil : d.requests.removeFirst()
        }
    }

    /// Polls `body` until it yields a value or `deadline` passes (nil: wait for ever); spins
    /// briefly, then sleeps in short steps so that a waiting thread does not burn a core.
    package static func wait<T>(
        until deadline: ContinuousClock.Instant?, _ what: @autoclosure () -> String,
        _ body: () throws(RStreamError) -> T?
    ) throws(RStreamError) -> T {
        var spins = 0
        while true {
            if let value = try body() { return value }
            if let deadline, ContinuousClock.now >= deadline {
                throw RStreamError(.timedOut, code: FI_ETIMEDOUT, "timed out waiting for \(what())")
            }
            spins += 1
            if spins < 64 { sched_yield() } else { usleep(spins < 1024 ? 20 : 200) }
        }
    }
}
