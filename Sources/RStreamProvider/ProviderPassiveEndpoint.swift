import CLibfabric
import CProviderSupport
import RStreamKernel
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A connection request handed to the application as FI_CONNREQ's `info->handle`: the kernel's
/// request and the peer's checked block, until `fi_accept` (through an endpoint opened with that
/// info) or `fi_reject` claims it.
///
/// Invariant: the request is claimed at most once; the handle is freed when it is claimed, or
/// with its passive endpoint when nobody did.
final class ProviderConnectionRequest: @unchecked Sendable {
    let handle: UnsafeMutablePointer<fid>
    /// The fabric listener a fabric request came through (nil for a same-host one).
    let listener: PassiveListener?
    let peer: ConnectionBlock
    private let request: Mutex<ConnectionRequest?>
    private let sameHost: Mutex<SameHostRequest?>

    private init(listener: PassiveListener?, request: ConnectionRequest?, sameHost: SameHostRequest?, peer: ConnectionBlock) {
        self.listener = listener
        self.peer = peer
        self.request = Mutex(request)
        self.sameHost = Mutex(sameHost)
        handle = CHandle.allocate(fid.self)
        CHandle.attach(self, to: handle)
        handle.pointee = fid(fclass: Int(FI_CLASS_CONNREQ), context: nil, ops: Self.fidOps)
    }

    convenience init(listener: PassiveListener, request: ConnectionRequest, peer: ConnectionBlock) {
        self.init(listener: listener, request: request, sameHost: nil, peer: peer)
    }

    convenience init(sameHost: SameHostRequest) {
        self.init(listener: nil, request: nil, sameHost: sameHost, peer: sameHost.peer)
    }

    var isSameHost: Bool { listener == nil }

    /// Takes the fabric request for an answer; nil when it was answered already (or is a
    /// same-host one). Frees the handle.
    func claim() -> ConnectionRequest? {
        let taken = request.withCheckedLock(key: lockKey(self)) { r -> ConnectionRequest? in
            defer { r = nil }
            return r
        }
        if taken != nil { CHandle.free(UnsafeRawPointer(handle)) }
        return taken
    }

    /// Takes the same-host request for an answer; nil when it was answered already. Frees the handle.
    func claimSameHost() -> SameHostRequest? {
        let taken = sameHost.withCheckedLock(key: lockKey(self) + 1) { r -> SameHostRequest? in
            defer { r = nil }
            return r
        }
        if taken != nil { CHandle.free(UnsafeRawPointer(handle)) }
        return taken
    }

    /// True once `fi_accept` or `fi_reject` has taken the request.
    var isAnswered: Bool {
        request.withCheckedLock(key: lockKey(self)) { $0 == nil } && sameHost.withCheckedLock(key: lockKey(self) + 1) { $0 == nil }
    }

    /// Refuses the request if nobody answered it.
    func rejectIfUnanswered(_ data: [UInt8] = []) {
        if let request = claim() { listener?.reject(request, data: data) }
        if let request = claimSameHost() { SameHostHandshake.refuse(request, data: data) }
    }

    nonisolated(unsafe) static let fidOps = table(fi_ops(
        size: MemoryLayout<fi_ops>.size,
        close: { _ in -Int32(FI_EINVAL) }, // answered with fi_accept or fi_reject, never closed
        bind: rs_no_bind, control: rs_no_control, ops_open: rs_no_ops_open, tostr: rs_no_tostr, ops_set: rs_no_ops_set))
}

/// A passive endpoint a caller opened (`fi_passive_ep`): the kernel listener once `fi_listen`
/// runs, and the requests it has announced and not seen answered.
final class ProviderPassiveEndpoint: ConnectionEventSource, @unchecked Sendable {
    let handle: UnsafeMutablePointer<fid_pep>
    private let facts: ProviderInfo.Facts
    /// The caller's info, a copy of which each FI_CONNREQ carries.
    private let info: UnsafeMutablePointer<fi_info>

    private struct State: @unchecked Sendable {
        var backlog = 128
        var name: [UInt8]?
        var listener: PassiveListener?
        /// For a same-host entry: the Unix socket served beside the fabric listener.
        var sameHost: SameHostListener?
        var eventQueue: ProviderEventQueue?
        var requests: [ObjectIdentifier: ProviderConnectionRequest] = [:]
        var dataLimit: Int?
    }
    private let state = Mutex(State())

    private init(info: UnsafeMutablePointer<fi_info>, context: UnsafeMutableRawPointer?) {
        self.info = info
        facts = ProviderInfo.Facts(info)
        handle = CHandle.allocate(fid_pep.self)
        CHandle.attach(self, to: handle)
        handle.pointee.fid = fid(fclass: Int(FI_CLASS_PEP), context: context, ops: Self.fidOps)
        handle.pointee.ops = Self.endpointOps
        handle.pointee.cm = Self.connectionOps
    }

    deinit { fi_freeinfo(info) }

    static func open(
        _ fabric: ProviderFabric, _ info: UnsafeMutablePointer<fi_info>?,
        _ out: UnsafeMutablePointer<UnsafeMutablePointer<fid_pep>?>?, _ context: UnsafeMutableRawPointer?
    ) -> Int32 {
        guard let info, let out, let copy = fi_dupinfo(info) else { return -Int32(FI_EINVAL) }
        if let type = info.pointee.ep_attr?.pointee.type, type != FI_EP_UNSPEC && type != FI_EP_SOCK_STREAM {
            fi_freeinfo(copy)
            return -Int32(FI_EINVAL)
        }
        out.pointee = ProviderPassiveEndpoint(info: copy, context: context).handle
        return 0
    }

    // MARK: Connection events

    func pollConnection() {
        state.withCheckedLock(key: lockKey(self)) { s in
            guard let listener = s.listener, let queue = s.eventQueue else { return }
            // Requests answered through an endpoint are forgotten here, so a long-lived listener
            // holds only the ones still waiting for an answer.
            s.requests = s.requests.filter { !$0.value.isAnswered }
            while let (request, peer) = try? listener.takeCheckedRequest(expectIwarp: facts.iwarp) {
                let pending = ProviderConnectionRequest(listener: listener, request: request, peer: peer)
                s.requests[ObjectIdentifier(pending)] = pending
                guard let announced = fi_dupinfo(info) else {
                    pending.rejectIfUnanswered()
                    continue
                }
                if let peerAddress = request.info.pointee.dest_addr, request.info.pointee.dest_addrlen > 0 {
                    free(announced.pointee.dest_addr)
                    announced.pointee.dest_addr = ProviderInfo.duplicate(peerAddress, request.info.pointee.dest_addrlen)
                    announced.pointee.dest_addrlen = request.info.pointee.dest_addrlen
                }
                if let bound = s.listener?.boundAddress {
                    free(announced.pointee.src_addr)
                    (announced.pointee.src_addr, announced.pointee.src_addrlen) = ProviderInfo.duplicate(bound)
                }
                announced.pointee.handle = pending.handle
                queue.post(.connection(event: UInt32(FI_CONNREQ), fid: fidOf(handle), info: announced,
                                       data: Array(request.peerData.dropFirst(ConnectionBlock.size))))
            }
            guard let sameHost = s.sameHost else { return }
            while true {
                let request: SameHostRequest
                do throws(RStreamError) {
                    guard let next = try sameHost.takeRequest() else { break }
                    request = next
                } catch where error.kind == .protocolViolation {
                    continue // refused with its reason already; look at the next
                } catch {
                    break // the listener itself failed (out of descriptors): look again at the next read
                }
                let pending = ProviderConnectionRequest(sameHost: request)
                s.requests[ObjectIdentifier(pending)] = pending
                guard let announced = fi_dupinfo(info) else {
                    pending.rejectIfUnanswered()
                    continue
                }
                announced.pointee.handle = pending.handle
                free(announced.pointee.src_addr)
                (announced.pointee.src_addr, announced.pointee.src_addrlen) = ProviderInfo.duplicate(request.localAddress)
                free(announced.pointee.dest_addr)
                (announced.pointee.dest_addr, announced.pointee.dest_addrlen) = ProviderInfo.duplicate(request.peerAddress)
                queue.post(.connection(event: UInt32(FI_CONNREQ), fid: fidOf(handle), info: announced, data: request.userData))
            }
        }
    }

    /// Forgets a request an endpoint took over (it answers or refuses it from now on).
    func handOver(_ request: ProviderConnectionRequest) {
        _ = state.withCheckedLock(key: lockKey(self)) { $0.requests.removeValue(forKey: ObjectIdentifier(request)) }
    }

    func tryWait() -> Int32 {
        guard let listener = state.withCheckedLock(key: lockKey(self), { $0.listener }) else { return -Int32(FI_EOPBADSTATE) }
        if listener.waitSet == nil {
            // A core without wait descriptors: the event queue's descriptor ticks instead.
            return listener.eventQueue.hasRequest ? -Int32(FI_EAGAIN) : 0
        }
        return listener.prepareToWait() ? 0 : -Int32(FI_EAGAIN)
    }

    // MARK: Calls

    private func bind(_ object: UnsafeMutablePointer<fid>?, _ flags: UInt64) -> Int32 {
        guard CHandle.isOurs(object, ops: ProviderEventQueue.fidOps) else { return -Int32(FI_EINVAL) }
        let queue = CHandle.owner(of: object!, as: ProviderEventQueue.self)
        state.withCheckedLock(key: lockKey(self)) { $0.eventQueue = queue }
        queue.attach(self)
        return 0
    }

    private func listen() -> Int32 {
        state.withCheckedLock(key: lockKey(self)) { s -> Int32 in
            guard s.listener == nil else { return -Int32(FI_EOPBADSTATE) }
            guard let queue = s.eventQueue else { return -Int32(FI_ENOEQ) }
            let place = (s.name ?? facts.source).flatMap { bytes in
                bytes.withUnsafeBytes { numericAddress($0.baseAddress!, length: $0.count) }
            } ?? (host: "0.0.0.0", port: 0)
            do throws(RStreamError) {
                // A same-host entry listens on the best core too (the port is the fabric's), and
                // on the Unix socket named for that port.
                var requirements = facts.requirements
                if facts.isSameHost { requirements.provider = nil }
                let listener = try PassiveListener(host: place.host, port: place.port, backlog: s.backlog, requirements: requirements)
                s.listener = listener
                queue.watch(listener.eventQueue.waitDescriptor)
                if facts.isSameHost {
                    guard let sameHost = try SameHostListener(boundTo: listener.boundAddress, backlog: s.backlog, waitSet: queue.waitSet) else {
                        s.listener = nil
                        return -Int32(FI_EADDRINUSE)
                    }
                    // The passive endpoint's own descriptor (FI_GETWAIT, fi_trywait) wakes for
                    // same-host requests too.
                    if let own = listener.waitSet, !sameHost.alsoWake(own) {
                        s.listener = nil
                        return -Int32(FI_ENOMEM) // the kernel could not watch its sockets
                    }
                    s.sameHost = sameHost
                }
                return 0
            } catch {
                return returnCode(error)
            }
        }
    }

    private func reject(_ handle: UnsafeMutablePointer<fid>?, _ param: UnsafeRawPointer?, _ length: Int) -> Int32 {
        guard CHandle.isOurs(handle, ops: ProviderConnectionRequest.fidOps) else { return -Int32(FI_EINVAL) }
        let pending = CHandle.owner(of: handle!, as: ProviderConnectionRequest.self)
        guard length <= connectionDataLimit() else { return -Int32(FI_EINVAL) }
        let data = param.map { Array(UnsafeRawBufferPointer(start: $0, count: length)) } ?? []
        handOver(pending)
        if pending.isSameHost {
            guard let request = pending.claimSameHost() else { return -Int32(FI_EOPBADSTATE) }
            SameHostHandshake.refuse(request, data: data)
            return 0
        }
        guard let request = pending.claim(), let listener = pending.listener else { return -Int32(FI_EOPBADSTATE) }
        listener.reject(request, data: data)
        return 0
    }

    /// Bytes of the caller's own connection data a request or refusal may carry.
    private func connectionDataLimit() -> Int {
        state.withCheckedLock(key: lockKey(self)) { s in
            if let limit = s.dataLimit { return limit }
            if facts.isSameHost { return SameHostHandshake.userDataLimit }
            let limit = max(0, ((try? CoreLimits.connectionData(facts.requirements)) ?? 0) - ConnectionBlock.size)
            s.dataLimit = limit
            return limit
        }
    }

    private func name(_ address: UnsafeMutableRawPointer?, _ length: UnsafeMutablePointer<Int>?) -> Int32 {
        let bytes = state.withCheckedLock(key: lockKey(self)) { $0.listener?.boundAddress ?? $0.name } ?? facts.source
        return ProviderEndpoint.copyAddress(bytes, address, length)
    }

    private func setName(_ address: UnsafeMutableRawPointer?, _ length: Int) -> Int32 {
        guard let address, length >= MemoryLayout<sockaddr_in>.size else { return -Int32(FI_EINVAL) }
        return state.withCheckedLock(key: lockKey(self)) { s -> Int32 in
            guard s.listener == nil else { return -Int32(FI_EOPBADSTATE) }
            s.name = Array(UnsafeRawBufferPointer(start: address, count: length))
            return 0
        }
    }

    private func control(_ command: Int32, _ argument: UnsafeMutableRawPointer?) -> Int32 {
        guard let argument else { return -Int32(FI_EINVAL) }
        switch command {
        case Int32(FI_BACKLOG):
            let depth = Int(argument.load(as: Int32.self))
            guard depth > 0 else { return -Int32(FI_EINVAL) }
            state.withCheckedLock(key: lockKey(self)) { $0.backlog = depth }
            return 0
        case Int32(FI_GETWAIT):
            guard let waitSet = state.withCheckedLock(key: lockKey(self), { $0.listener?.waitSet }) else { return -Int32(FI_EOPBADSTATE) }
            argument.storeBytes(of: waitSet.descriptor, as: Int32.self)
            return 0
        default:
            return -Int32(FI_ENOSYS)
        }
    }

    private func getOption(_ level: Int32, _ name: Int32, _ value: UnsafeMutableRawPointer?, _ length: UnsafeMutablePointer<Int>?) -> Int32 {
        guard level == FI_OPT_ENDPOINT else { return -Int32(FI_ENOPROTOOPT) }
        guard name == Int32(FI_OPT_CM_DATA_SIZE) else { return -Int32(FI_ENOPROTOOPT) }
        guard let value, let length, length.pointee >= MemoryLayout<Int>.size else { return -Int32(FI_EINVAL) }
        value.storeBytes(of: connectionDataLimit(), as: Int.self)
        length.pointee = MemoryLayout<Int>.size
        return 0
    }

    private func close() -> Int32 {
        let (queue, requests) = state.withCheckedLock(key: lockKey(self)) { s -> (ProviderEventQueue?, [ProviderConnectionRequest]) in
            defer { s.requests.removeAll(); s.listener = nil; s.eventQueue = nil }
            return (s.eventQueue, Array(s.requests.values))
        }
        queue?.detach(self)
        queue?.purge(fidOf(handle)) // its unread FI_CONNREQs name the fid freed below
        for request in requests { request.rejectIfUnanswered() }
        CHandle.free(UnsafeRawPointer(handle))
        return 0
    }

    // MARK: Tables

    private static func owner(_ fid: UnsafeMutableRawPointer?) -> ProviderPassiveEndpoint {
        CHandle.owner(of: fid!, as: ProviderPassiveEndpoint.self)
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
        setopt: { _, _, _, _, _ in -Int32(FI_ENOPROTOOPT) },
        tx_ctx: rs_no_tx_ctx, rx_ctx: rs_no_rx_ctx, rx_size_left: rs_no_size_left, tx_size_left: rs_no_size_left))

    nonisolated(unsafe) static let connectionOps = table(fi_ops_cm(
        size: MemoryLayout<fi_ops_cm>.size,
        setname: { fid, address, length in owner(fid).setName(address, length) },
        getname: { fid, address, length in owner(fid).name(address, length) },
        getpeer: rs_no_getpeer, connect: rs_no_connect,
        listen: { pep in owner(pep).listen() },
        accept: rs_no_accept,
        reject: { pep, handle, param, length in owner(pep).reject(handle, param, length) },
        shutdown: rs_no_shutdown, join: rs_no_join))
}
