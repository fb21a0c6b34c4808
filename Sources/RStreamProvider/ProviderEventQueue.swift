import CLibfabric
import CFabricShim
import CProviderSupport
import RStreamKernel
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// An object whose connection events an event queue collects: it looks at its kernel queue and
/// posts what it finds. Progress is manual, so this happens when the queue is read.
protocol ConnectionEventSource: AnyObject, Sendable {
    func pollConnection()
}

/// One queued event, as `fi_eq_read`/`fi_eq_readerr` will hand it out.
enum QueuedEvent: @unchecked Sendable {
    /// FI_CONNREQ (with the request's info, which the reader then owns), FI_CONNECTED, FI_SHUTDOWN.
    case connection(event: UInt32, fid: UnsafeMutablePointer<fid>, info: UnsafeMutablePointer<fi_info>?, data: [UInt8])
    /// A failed connection: a positive error code and what the peer sent with its refusal.
    case failure(fid: UnsafeMutablePointer<fid>, code: Int32, data: [UInt8])
    /// What the application wrote with `fi_eq_write`.
    case written(event: UInt32, bytes: [UInt8])

    func names(_ object: UnsafeMutablePointer<fid>) -> Bool {
        switch self {
        case .connection(_, let fid, _, _), .failure(let fid, _, _): return fid == object
        case .written: return false
        }
    }
}

/// An event queue a caller opened (`fi_eq_open`). Endpoints and passive endpoints bound to it post
/// their connection events here; reading it first lets each of them look at its kernel queue.
///
/// Its descriptor (`FI_GETWAIT`) is an epoll set over the kernel queues' descriptors and a private
/// eventfd rung whenever an event is posted; `fi_trywait` on the queue is the arming step.
///
/// Invariants: `state` is never held while a source is polled (a source posts under its own lock,
/// so the order is source → queue); an info of an unread FI_CONNREQ is freed with the queue.
final class ProviderEventQueue: @unchecked Sendable {
    let handle: UnsafeMutablePointer<fid_eq>
    let waitSet: WaitSet?
    private let acceptsWrites: Bool

    private struct State: @unchecked Sendable {
        var events: [QueuedEvent] = []
        var sources: [ObjectIdentifier: ConnectionEventSource] = [:]
        /// The error data of the last `fi_eq_readerr`, valid until the next one.
        var errorData: UnsafeMutableRawPointer?
        var closed = false
    }
    private let state = Mutex(State())
    private static let dataOffset = rs_eq_cm_entry_data_offset()

    private init(attr: fi_eq_attr, context: UnsafeMutableRawPointer?) {
        acceptsWrites = attr.flags & UInt64(FI_WRITE) != 0
        waitSet = attr.wait_obj == FI_WAIT_NONE ? nil : WaitSet(waitDescriptors: [])
        handle = CHandle.allocate(fid_eq.self)
        CHandle.attach(self, to: handle)
        handle.pointee.fid = fid(fclass: Int(FI_CLASS_EQ), context: context, ops: Self.fidOps)
        handle.pointee.ops = Self.eventOps
    }

    static func open(
        _ attr: UnsafeMutablePointer<fi_eq_attr>?, _ out: UnsafeMutablePointer<UnsafeMutablePointer<fid_eq>?>?,
        _ context: UnsafeMutableRawPointer?
    ) -> Int32 {
        guard let attr, let out else { return -Int32(FI_EINVAL) }
        switch attr.pointee.wait_obj {
        case FI_WAIT_NONE, FI_WAIT_UNSPEC, FI_WAIT_FD: break
        default: return -Int32(FI_ENOSYS)
        }
        guard attr.pointee.flags & ~UInt64(FI_WRITE) == 0 else { return -Int32(FI_EBADFLAGS) }
        out.pointee = ProviderEventQueue(attr: attr.pointee, context: context).handle
        return 0
    }

    deinit {
        state.withCheckedLock(key: lockKey(self)) { s in
            for case .connection(_, _, let info?, _) in s.events { fi_freeinfo(info) }
            free(s.errorData)
        }
    }

    // MARK: What sources do

    func attach(_ source: ConnectionEventSource) {
        state.withCheckedLock(key: lockKey(self)) { $0.sources[ObjectIdentifier(source)] = source }
    }

    func detach(_ source: ConnectionEventSource) {
        state.withCheckedLock(key: lockKey(self)) { _ = $0.sources.removeValue(forKey: ObjectIdentifier(source)) }
    }

    /// Sleeps on `descriptor` (a kernel queue's) too; a queue without one (a core that signals
    /// nothing) makes the descriptor tick every 10 ms instead.
    func watch(_ descriptor: Int32?) {
        if let descriptor { waitSet?.watch(descriptor) } else { waitSet?.addTicker(milliseconds: 10) }
    }

    /// Sleeps on a connection's events too (a same-host set-up socket for its hang-up alone).
    func watch(_ descriptor: ConnectionEventDescriptor) { waitSet?.watch(descriptor.fd, hangUpOnly: descriptor.hangUpOnly) }

    /// Stops sleeping on `descriptor` (one that stays readable once its news was taken).
    func unwatch(_ descriptor: Int32) { waitSet?.unwatch(descriptor) }

    /// Drops every queued event that names `fid` (an object about to be freed).
    func purge(_ fid: UnsafeMutablePointer<fid>) {
        let purged = state.withCheckedLock(key: lockKey(self)) { s -> [QueuedEvent] in
            let (gone, kept) = s.events.reduce(into: ([QueuedEvent](), [QueuedEvent]())) { parts, event in
                if event.names(fid) { parts.0.append(event) } else { parts.1.append(event) }
            }
            s.events = kept
            return gone
        }
        for case .connection(_, _, let info?, _) in purged { fi_freeinfo(info) }
    }

    func post(_ event: QueuedEvent) {
        let posted = state.withCheckedLock(key: lockKey(self)) { s -> Bool in
            guard !s.closed else { return false }
            s.events.append(event)
            return true
        }
        if posted { waitSet?.ring() } else if case .connection(_, _, let info?, _) = event { fi_freeinfo(info) }
    }

    // MARK: The calls

    private func pollSources() {
        let sources = state.withCheckedLock(key: lockKey(self)) { Array($0.sources.values) }
        for source in sources { source.pollConnection() }
    }

    func read(_ event: UnsafeMutablePointer<UInt32>?, _ buffer: UnsafeMutableRawPointer?, _ length: Int, _ flags: UInt64) -> Int {
        guard flags & ~UInt64(FI_PEEK) == 0 else { return -Int(FI_EBADFLAGS) }
        if state.withCheckedLock(key: lockKey(self), { $0.events.isEmpty }) { pollSources() }
        return state.withCheckedLock(key: lockKey(self)) { s -> Int in
            guard let first = s.events.first else { return -Int(FI_EAGAIN) }
            let written: Int
            switch first {
            case .failure: return -Int(FI_EAVAIL)
            case .connection(let kind, let fid, let info, let data):
                let needed = Self.dataOffset + data.count
                guard let buffer, length >= needed else { return -Int(FI_ETOOSMALL) }
                buffer.storeBytes(of: fid, as: UnsafeMutablePointer<fid>.self)
                buffer.storeBytes(of: info, toByteOffset: MemoryLayout<fid_t>.stride, as: UnsafeMutablePointer<fi_info>?.self)
                data.withUnsafeBytes { if $0.count > 0 { (buffer + Self.dataOffset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
                event?.pointee = kind
                written = needed
            case .written(let kind, let bytes):
                guard let buffer, length >= bytes.count else { return -Int(FI_ETOOSMALL) }
                bytes.withUnsafeBytes { if $0.count > 0 { buffer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
                event?.pointee = kind
                written = bytes.count
            }
            if flags & UInt64(FI_PEEK) == 0 { s.events.removeFirst() }
            return written
        }
    }

    func readError(_ entry: UnsafeMutablePointer<fi_eq_err_entry>?, _ flags: UInt64) -> Int {
        guard let entry else { return -Int(FI_EINVAL) }
        guard flags & ~UInt64(FI_PEEK) == 0 else { return -Int(FI_EBADFLAGS) }
        return state.withCheckedLock(key: lockKey(self)) { s -> Int in
            guard case .failure(let fid, let code, let data)? = s.events.first else { return -Int(FI_EAGAIN) }
            let callerBuffer = entry.pointee.err_data_size > 0 ? entry.pointee.err_data : nil
            let callerCapacity = entry.pointee.err_data_size
            entry.pointee.fid = fid
            entry.pointee.context = fid.pointee.context
            entry.pointee.data = 0
            entry.pointee.err = code
            entry.pointee.prov_errno = code
            if let callerBuffer {
                // Since API 1.5 a caller may lend its own buffer for the error data.
                let n = min(callerCapacity, data.count)
                data.withUnsafeBytes { if n > 0 { callerBuffer.copyMemory(from: $0.baseAddress!, byteCount: n) } }
                entry.pointee.err_data_size = n
            } else {
                free(s.errorData)
                s.errorData = data.isEmpty ? nil : ProviderInfo.duplicate(data).0
                entry.pointee.err_data = s.errorData
                entry.pointee.err_data_size = data.count
            }
            if flags & UInt64(FI_PEEK) == 0 { s.events.removeFirst() }
            return MemoryLayout<fi_eq_err_entry>.size
        }
    }

    func write(_ event: UInt32, _ buffer: UnsafeRawPointer?, _ length: Int, _ flags: UInt64) -> Int {
        guard acceptsWrites else { return -Int(FI_EINVAL) }
        guard flags == 0 else { return -Int(FI_EBADFLAGS) }
        let bytes = buffer.map { Array(UnsafeRawBufferPointer(start: $0, count: length)) } ?? []
        post(.written(event: event, bytes: bytes))
        return length
    }

    /// `fi_eq_sread`: reads, sleeping on the descriptor between looks (the kernel's one wait), up
    /// to `timeout` ms (<0: for ever). Sleeps last at most 10 ms: a kernel queue's signal may be
    /// taken by a data call of a bound endpoint, which then cannot ring this queue.
    func blockingRead(_ event: UnsafeMutablePointer<UInt32>?, _ buffer: UnsafeMutableRawPointer?, _ length: Int,
                      _ timeout: Int32, _ flags: UInt64) -> Int {
        let deadline = timeout >= 0 ? ContinuousClock.now + .milliseconds(Int(timeout)) : nil
        let wait = BlockingWait(deadline: deadline, waitSet: waitSet, longestSleep: 10, what: "an event")
        do {
            return try wait.run(prepare: { tryWait(sleeper: true) == 0 }) { _ -> Int? in
                let rc = read(event, buffer, length, flags)
                return rc == -Int(FI_EAGAIN) ? nil : rc
            }
        } catch {
            return -Int(FI_EAGAIN)
        }
    }

    /// The arming step for the descriptor: 0 when nothing is queued (and the eventfd has been
    /// drained), -FI_EAGAIN when an event is waiting. A `sleeper` is counted (it sleeps next).
    func tryWait(sleeper: Bool = false) -> Int32 {
        pollSources()
        guard let waitSet else { return -Int32(FI_ENOSYS) }
        return state.withCheckedLock(key: lockKey(self)) { s -> Int32 in
            waitSet.arm()
            guard s.events.isEmpty else { return -Int32(FI_EAGAIN) }
            if sleeper { waitSet.willSleep() }
            return 0
        }
    }

    func close() -> Int32 {
        state.withCheckedLock(key: lockKey(self)) { s in
            s.closed = true
            s.sources.removeAll()
        }
        CHandle.free(UnsafeRawPointer(handle))
        return 0
    }

    // MARK: Tables

    nonisolated(unsafe) static let fidOps = table(fi_ops(
        size: MemoryLayout<fi_ops>.size,
        close: { fid in CHandle.owner(of: fid!, as: ProviderEventQueue.self).close() },
        bind: rs_no_bind,
        control: { fid, command, arg in
            let queue = CHandle.owner(of: fid!, as: ProviderEventQueue.self)
            guard command == FI_GETWAIT else { return -Int32(FI_ENOSYS) }
            guard let waitSet = queue.waitSet else { return -Int32(FI_ENODATA) }
            guard let arg else { return -Int32(FI_EINVAL) }
            arg.storeBytes(of: waitSet.descriptor, as: Int32.self)
            return 0
        },
        ops_open: rs_no_ops_open, tostr: rs_no_tostr, ops_set: rs_no_ops_set))

    nonisolated(unsafe) static let eventOps = table(fi_ops_eq(
        size: MemoryLayout<fi_ops_eq>.size,
        read: { eq, event, buffer, length, flags in
            CHandle.owner(of: eq!, as: ProviderEventQueue.self).read(event, buffer, length, flags)
        },
        readerr: { eq, entry, flags in
            CHandle.owner(of: eq!, as: ProviderEventQueue.self).readError(entry, flags)
        },
        write: { eq, event, buffer, length, flags in
            CHandle.owner(of: eq!, as: ProviderEventQueue.self).write(event, buffer, length, flags)
        },
        sread: { eq, event, buffer, length, timeout, flags in
            CHandle.owner(of: eq!, as: ProviderEventQueue.self).blockingRead(event, buffer, length, timeout, flags)
        },
        strerror: { _, providerErrno, _, buffer, length in
            let text = fi_strerror(providerErrno)
            guard let buffer, length > 0, let text else { return text }
            strncpy(buffer, text, length - 1)
            buffer[length - 1] = 0
            return UnsafePointer(buffer)
        }))
}
