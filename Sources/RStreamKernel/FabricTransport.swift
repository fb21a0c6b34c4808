import CLibfabric
import CFabricShim
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// How a fabric endpoint is sized and which mode it speaks.
package struct EndpointShape: Sendable, Equatable {
    /// The ring sizes the protocol allows, and the transmit-queue sizes the kernel accepts.
    package static let ringSizes = ConnectionBlock.ringSizes
    package static let txQueueSizes = 8...65536
    package static let rxCreditCounts = ConnectionBlock.rxCreditRange
    package var sendRingSize: Int
    package var receiveRingSize: Int
    package var txQueueSize: Int
    package var rxCredits: Int
    package var iwarp: Bool
    /// The node for the rings; nil: the NIC's node where the core reports it, else the calling
    /// thread's node, else (no NUMA support) the default policy.
    package var numaNode: Int?
    /// Open the completion queue with a wait descriptor (`FI_WAIT_FD`). Some cores (tcp) then
    /// signal it on every completion, which costs latency; busy-pollers may do without.
    package var waitDescriptor = true
    /// Share a completion queue with the process's other streams where every completion can name
    /// its stream (`CompletionGroup`); false: a queue of its own.
    package var sharedCompletions = true
    /// Touch every page of the rings when the stream is made (resident before the first byte);
    /// false: each page comes in on first use, on the same node, and an idle stream's untouched
    /// pages cost no memory.
    package var prefaultRings = false
    /// How long the peer may be silent before the stream fails with `.timedOut` (protocol v4's
    /// liveness); nil: for ever.
    package var peerTimeout: Duration? = EndpointShape.defaultPeerTimeout
    package static let defaultPeerTimeout: Duration = .seconds(30)
    package init(sendRingSize: Int, receiveRingSize: Int, txQueueSize: Int, rxCredits: Int, iwarp: Bool, numaNode: Int? = nil) {
        self.sendRingSize = sendRingSize
        self.receiveRingSize = receiveRingSize
        self.txQueueSize = txQueueSize
        self.rxCredits = rxCredits
        self.iwarp = iwarp
        self.numaNode = numaNode
    }
}

/// The libfabric transport of one connection: an `FI_EP_MSG` endpoint, its completion queue (its
/// own, or a share of a `CompletionGroup`'s, whose reader routes this stream's completions to its
/// `inbox`), and three registered regions (send ring: local write source; receive ring: remote write target;
/// word area: iWarp receive payloads and word sends).
///
/// Invariants: every handle is open until deinit, which closes the endpoint first (so no operation
/// can still refer to the regions), then the completion queue, then the registrations; the regions
/// themselves are freed after that, as the object's fields are destroyed. Exactly `rxCredits`
/// receives are posted while connected. In iWarp mode a word being sent lives in a word slot taken
/// from `wordSlots` until its completion returns it. `peer` is set once, before the engine shares
/// the transport; `completions` and the inbox's consumer side are touched only by `poll` (under
/// the progress lock), which posts nothing but receives. A grouped transport leaves its group
/// after its endpoint is closed and before its registrations are.
package final class FabricTransport: StreamTransport, @unchecked Sendable {
    package let domain: Domain
    package let eventQueue: EventQueue
    package let endpoint: UnsafeMutablePointer<fid_ep>
    /// The completion queue this endpoint reports to: its own, or its group's.
    private let cq: UnsafeMutablePointer<fid_cq>
    /// Where the group's reader routes this stream's completions; nil with a queue of its own.
    private let grouped: (group: CompletionGroup, member: Int, generation: UInt16, inbox: CompletionInbox)?
    private let routed: UnsafeMutablePointer<RoutedCompletion>
    private let sendRegistration: UnsafeMutablePointer<fid_mr>
    private let receiveRegistration: UnsafeMutablePointer<fid_mr>
    private let wordRegistration: UnsafeMutablePointer<fid_mr>
    private let sendRegion: PageAlignedRegion
    private let receiveRegion: PageAlignedRegion
    /// iWarp: rxCredits receive slots, then txQueueSize send slots, 4 bytes each.
    private let wordRegion: PageAlignedRegion
    private let completions: UnsafeMutablePointer<fi_cq_data_entry>
    /// iWarp word slots: taken under the send lock, returned under the progress lock.
    private struct WordSlots {
        var free: [Int32]
        var inUse: [Bool]
    }
    private let wordSlots: Mutex<WordSlots>
    private var peer: ConnectionBlock?

    /// What waiters on this endpoint sleep on; nil where the core offers no wait descriptors.
    package let waitSet: WaitSet?
    package let shape: EndpointShape
    package let costs: TransportCosts
    private let attributes: CoreAttributes
    private static let completionBatch = 16

    private enum Tag: UInt {
        case write = 1, wordSend = 2, receive = 3
    }

    /// An operation's context: the group member number (0: a queue of its own) in bits 40-63,
    /// the tag in bits 32-39, the member number's generation in bits 16-31, the slot below (a
    /// transmit queue has at most 65,536 slots).
    private let memberBits: UInt

    @inline(__always)
    private func context(_ tag: Tag, _ slot: Int) -> UnsafeMutableRawPointer? {
        UnsafeMutableRawPointer(bitPattern: memberBits | tag.rawValue << 32 | UInt(slot))
    }

    @inline(__always)
    private static func decode(_ context: UnsafeMutableRawPointer?) -> (Tag, Int)? {
        let raw = UInt(bitPattern: context)
        guard let tag = Tag(rawValue: (raw >> 32) & 0xFF) else { return nil }
        return (tag, Int(raw & 0xFFFF))
    }

    /// Whether streams of `shape` over a core of `attributes` share a completion queue: only
    /// where every arrival uses up a posted receive, whose context names the stream (iWarp mode,
    /// or a core asking for `FI_RX_CQ_DATA`); over tcp in normal mode a remote write's data comes
    /// with a NULL context (`fi_cq(3)`).
    package static func sharesCompletions(_ shape: EndpointShape, over attributes: CoreAttributes) -> Bool {
        shape.sharedCompletions && (shape.iwarp || attributes.writeConsumesReceive)
    }

    /// What the event queue knows this endpoint by.
    package let eventKey: EndpointToken
    package var ringNode: Int? { shape.numaNode }
    package var name: String { attributes.provider }
    /// Bytes go from the local send ring, through the core, into the peer's ring.
    package var sendRingIsPeerRing: Bool { false }
    /// The completion queue is the only place to look (a poll is the look).
    package var mayHaveNews: Bool { true }

    /// Opens and enables an endpoint for `info` (fi_getinfo's answer, or a connection request's),
    /// and registers its rings. The caller posts the receives and makes the connection.
    package init(info: UnsafeMutablePointer<fi_info>, domain: Domain, eventQueue: EventQueue, shape: EndpointShape) throws(RStreamError) {
        let attributes = FabricInfo.attributes(of: info)
        let opsPerWord = shape.iwarp ? 2 : 1
        // The core's queue limits win over the options; the connection block announces the result.
        let rxCredits = min(shape.rxCredits, attributes.maxRxSize)
        guard ConnectionBlock.rxCreditRange.contains(rxCredits) else {
            throw RStreamError(.invalidOption, "the core's receive queue of \(attributes.maxRxSize) is too small")
        }
        let node: Int?
        if let asked = shape.numaNode {
            try NUMAPlacement.check(node: asked)
            node = asked
        } else {
            node = NUMAPlacement.isAvailable ? NUMAPlacement.node(ofNICIn: info) ?? NUMAPlacement.currentNode : nil
        }
        var shape = shape
        shape.rxCredits = rxCredits
        shape.numaNode = node
        let txSize = min(shape.txQueueSize, attributes.maxTxSize)
        guard txSize >= 2 + 2 * opsPerWord else {
            throw RStreamError(.invalidOption, "the core's transmit queue of \(attributes.maxTxSize) is too small")
        }
        info.pointee.tx_attr.pointee.size = txSize
        info.pointee.rx_attr.pointee.size = shape.rxCredits

        var undo: [() -> Void] = []
        func fail(_ error: RStreamError) -> RStreamError {
            for step in undo.reversed() { step() }
            return error
        }

        let token = EndpointToken.make()
        let wantsDescriptor = eventQueue.waitDescriptor != nil && shape.waitDescriptor
        var group: (group: CompletionGroup, member: Int, generation: UInt16, inbox: CompletionInbox)?
        var flatSet: WaitSet?
        let outstanding = txSize + shape.rxCredits
        // A core that cannot open the shared queue leaves the stream a queue of its own.
        if Self.sharesCompletions(shape, over: attributes),
           let (shared, member, generation) = try? domain.reserveCompletionGroup(reserving: outstanding, waitDescriptor: wantsDescriptor) {
            if shared.waitDescriptor != nil, eventQueue.waitDescriptor != nil {
                // Waiters sleep on a flat set, whose eventfd the reactor rings as it reads the
                // shared completion queue for everyone (started when someone first sleeps on
                // the set). The shared event queue is not read for them: a connection event is
                // seen at the next look (a sleep's 500 ms cap, a task's tick each second, a C
                // program's event queue), and a peer that goes away fails the stream's posted
                // receives, which the completion queue brings at once.
                flatSet = WaitSet(flatStartingReaders: { [weak shared] in shared?.startPump() ?? false })
            }
            let inbox = CompletionInbox(capacity: outstanding, waitSet: flatSet)
            shared.attach(inbox, as: member)
            group = (shared, member, generation, inbox)
            memberBits = CompletionGroup.contextBits(member: member, generation: generation)
        } else {
            memberBits = 0
        }
        undo.append { if let group { group.group.leave(group.member, generation: group.generation) } } // runs after the endpoint's close
        var ep: UnsafeMutablePointer<fid_ep>?
        let rcEp = fabricCall(.endpoint) { fi_endpoint(domain.domain, info, &ep, token.context) }
        if rcEp < 0 { throw fail(.fabric(rcEp, "fi_endpoint")) }
        undo.append { closeFabricObject(fidOf(ep!), "endpoint") }

        var cqAttr = fi_cq_attr()
        cqAttr.size = txSize + shape.rxCredits + 16
        cqAttr.format = FI_CQ_FORMAT_DATA
        cqAttr.wait_obj = wantsDescriptor ? FI_WAIT_FD : FI_WAIT_NONE
        var cq: UnsafeMutablePointer<fid_cq>? = group?.group.cq
        if group == nil {
            var rcCq = fabricCall(.cqOpen) { fi_cq_open(domain.domain, &cqAttr, &cq, nil) }
            if rcCq < 0 && cqAttr.wait_obj == FI_WAIT_FD {
                cqAttr.wait_obj = FI_WAIT_NONE // a core without wait descriptors: waiters sleep in steps
                rcCq = fabricCall(.cqOpen) { fi_cq_open(domain.domain, &cqAttr, &cq, nil) }
            }
            if rcCq < 0 { throw fail(.fabric(rcCq, "fi_cq_open")) }
            undo.insert({ closeFabricObject(fidOf(cq!), "completion queue") }, at: 0) // closes after the endpoint
        }

        for (object, flags, what) in [(fidOf(cq!), UInt64(FI_TRANSMIT | FI_RECV), "completion queue"), (fidOf(eventQueue.handle), 0, "event queue")] {
            let rc = fabricCall(.bind) { fi_ep_bind(ep, object, flags) }
            if rc < 0 { throw fail(.fabric(rc, "fi_ep_bind(\(what))")) }
        }
        let rcEnable = fabricCall(.enable) { fi_enable(ep) }
        if rcEnable < 0 { throw fail(.fabric(rcEnable, "fi_enable")) }

        let sendRegion: PageAlignedRegion
        do throws(RStreamError) { sendRegion = try PageAlignedRegion(byteCount: shape.sendRingSize, node: node, prefault: shape.prefaultRings) } catch { throw fail(error) }
        let receiveRegion: PageAlignedRegion
        do throws(RStreamError) { receiveRegion = try PageAlignedRegion(byteCount: shape.receiveRingSize, node: node, prefault: shape.prefaultRings) } catch { throw fail(error) }
        let wordRegion: PageAlignedRegion
        do throws(RStreamError) { wordRegion = try PageAlignedRegion(byteCount: 4 * (shape.rxCredits + txSize), node: node, prefault: shape.prefaultRings) } catch { throw fail(error) }

        func register(_ region: borrowing PageAlignedRegion, access: UInt64, _ what: String) throws(RStreamError) -> UnsafeMutablePointer<fid_mr> {
            var mr: UnsafeMutablePointer<fid_mr>?
            let key = attributes.providerKeys ? 0 : domain.makeKey()
            let rc = fabricCall(.memoryRegister) {
                fi_mr_reg(domain.domain, region.base, region.count, access, 0, key, 0, &mr, nil)
            }
            if rc < 0 { throw .fabric(rc, "fi_mr_reg(\(what), \(region.count) bytes)") }
            return mr!
        }
        let sendMR: UnsafeMutablePointer<fid_mr>
        let receiveMR: UnsafeMutablePointer<fid_mr>
        let wordMR: UnsafeMutablePointer<fid_mr>
        do throws(RStreamError) {
            sendMR = try register(sendRegion, access: FI_WRITE, "send ring")
            undo.append { closeFabricObject(fidOf(sendMR), "send ring registration") }
            receiveMR = try register(receiveRegion, access: FI_REMOTE_WRITE, "receive ring")
            undo.append { closeFabricObject(fidOf(receiveMR), "receive ring registration") }
            wordMR = try register(wordRegion, access: FI_SEND | FI_RECV, "word area")
            undo.append { closeFabricObject(fidOf(wordMR), "word area registration") }
        } catch {
            throw fail(error)
        }

        var cqDescriptor: Int32 = -1
        if group != nil {
            waitSet = flatSet
        } else if cqAttr.wait_obj == FI_WAIT_FD, let eqDescriptor = eventQueue.waitDescriptor,
           fi_control(fidOf(cq!), Int32(FI_GETWAIT), &cqDescriptor) == 0, cqDescriptor >= 0 {
            waitSet = WaitSet(ownMembers: [cqDescriptor, eqDescriptor])
        } else {
            waitSet = nil
        }
        eventQueue.register(fidOf(ep!), as: token, waitSet: waitSet)
        eventKey = token
        self.domain = domain
        self.eventQueue = eventQueue
        self.endpoint = ep!
        self.cq = cq!
        self.grouped = group
        self.routed = .allocate(capacity: Self.completionBatch)
        self.sendRegistration = sendMR
        self.receiveRegistration = receiveMR
        self.wordRegistration = wordMR
        self.sendRegion = sendRegion
        self.receiveRegion = receiveRegion
        self.wordRegion = wordRegion
        self.completions = .allocate(capacity: Self.completionBatch)
        self.wordSlots = Mutex(WordSlots(free: (0..<Int32(txSize)).reversed(), inUse: [Bool](repeating: false, count: txSize)))
        var finalShape = shape
        finalShape.txQueueSize = txSize
        self.shape = finalShape
        self.attributes = attributes
        self.costs = TransportCosts(
            txPerDataWrite: opsPerWord,
            peerReceivesPerDataWrite: shape.iwarp || attributes.writeConsumesReceive ? 1 : 0,
            txQueueSize: txSize,
            postedReceives: rxCredits)
    }

    /// Posts the `rxCredits` receives; called once, before the connection block is sent.
    package func postInitialReceives() throws(RStreamError) {
        for slot in 0..<shape.rxCredits {
            try postReceive(slot: slot)
        }
    }

    deinit {
        eventQueue.forget(fidOf(endpoint), token: eventKey) // before the close: the address may be reused
        closeFabricObject(fidOf(endpoint), "endpoint")
        if let grouped {
            grouped.group.leave(grouped.member, generation: grouped.generation) // its last completions read before the number is reused
        } else {
            closeFabricObject(fidOf(cq), "completion queue")
        }
        closeFabricObject(fidOf(sendRegistration), "send ring registration")
        closeFabricObject(fidOf(receiveRegistration), "receive ring registration")
        closeFabricObject(fidOf(wordRegistration), "word area registration")
        completions.deallocate()
        routed.deallocate()
    }

    /// This side's connection block: where the peer may write, under which key.
    package var localBlock: ConnectionBlock {
        ConnectionBlock(
            baseAddress: attributes.virtualAddressing ? UInt64(UInt(bitPattern: receiveRegion.base)) : 0,
            key: fi_mr_key(receiveRegistration),
            ringSize: shape.receiveRingSize, rxCredits: shape.rxCredits, iwarp: shape.iwarp)
    }

    /// Called once the peer's block has been checked: from now on writes go to its ring.
    package func connect(to peer: ConnectionBlock) { self.peer = peer }

    package var sendRing: UnsafeMutableRawBufferPointer { sendRegion.buffer }

    /// The node each page of the send and receive rings is on (`move_pages`).
    package var ringPageNodes: (send: [Int], receive: [Int]) {
        (NUMAPlacement.nodes(ofPagesIn: UnsafeRawBufferPointer(sendRegion.buffer)),
         NUMAPlacement.nodes(ofPagesIn: UnsafeRawBufferPointer(receiveRegion.buffer)))
    }
    package var receiveRing: UnsafeRawBufferPointer { UnsafeRawBufferPointer(receiveRegion.buffer) }

    private func postReceive(slot: Int) throws(RStreamError) {
        let rc: Int
        if shape.iwarp {
            rc = fabricCall(.receive) {
                fi_recv(endpoint, wordRegion.base + 4 * slot, 4, fi_mr_desc(wordRegistration), 0, context(.receive, slot))
            }
        } else {
            rc = fabricCall(.receive) { fi_recv(endpoint, nil, 0, nil, 0, context(.receive, slot)) }
        }
        if rc < 0 { throw .fabric(rc, "fi_recv(slot \(slot))") }
    }

    package func write(sendOffset: Int, length: Int, remoteOffset: Int, word: UInt32, writeSlot: Int) throws(RStreamError) -> WritePost {
        guard let peer else { preconditionFailure("write before the peer's block was accepted") }
        let source = sendRegion.base + sendOffset
        let desc = fi_mr_desc(sendRegistration)
        let address = peer.baseAddress &+ UInt64(remoteOffset)
        let context = context(.write, writeSlot)
        let rc: Int
        if shape.iwarp {
            guard wordSlots.withCheckedLock(key: lockKey(self), { !$0.free.isEmpty }) else { return .notPosted }
            rc = fabricCall(.write) { fi_write(endpoint, source, length, desc, rs_fi_addr_unspec(), address, peer.key, context) }
        } else {
            rc = fabricCall(.write) {
                fi_writedata(endpoint, source, length, desc, UInt64(word), rs_fi_addr_unspec(), address, peer.key, context)
            }
        }
        if rc == -Int(FI_EAGAIN) { return .notPosted }
        if rc < 0 { throw .fabric(rc, "fi_write(\(length) bytes)") }
        // iWarp: the write is placed; its DATA word follows (the engine retries it if it cannot).
        guard shape.iwarp else { return .complete }
        return try sendWordPayload(word) ? .complete : .bytesOnly
    }

    package func sendDataWord(_ word: UInt32) throws(RStreamError) -> Bool {
        precondition(shape.iwarp, "only iWarp mode posts a DATA word apart from its write")
        return try sendWordPayload(word)
    }

    package func send(word: UInt32) throws(RStreamError) -> Bool {
        if shape.iwarp { return try sendWordPayload(word) }
        let rc = fabricCall(.send) { fi_senddata(endpoint, nil, 0, nil, UInt64(word), rs_fi_addr_unspec(), context(.wordSend, 0)) }
        if rc == -Int(FI_EAGAIN) { return false }
        if rc < 0 { throw .fabric(rc, "fi_senddata(word)") }
        return true
    }

    private func sendWordPayload(_ word: UInt32) throws(RStreamError) -> Bool {
        let taken = wordSlots.withCheckedLock(key: lockKey(self)) { (slots: inout WordSlots) -> Int32? in
            guard let slot = slots.free.popLast() else { return nil }
            slots.inUse[Int(slot)] = true
            return slot
        }
        guard let slot32 = taken else { return false }
        let slot = Int(slot32)
        let payload = wordRegion.base + 4 * (shape.rxCredits + slot)
        payload.storeBytes(of: word.bigEndian, as: UInt32.self)
        let rc = fabricCall(.send) {
            fi_send(endpoint, payload, 4, fi_mr_desc(wordRegistration), rs_fi_addr_unspec(), context(.wordSend, slot))
        }
        if rc < 0 { try returnWordSlot(slot) }
        if rc == -Int(FI_EAGAIN) { return false }
        if rc < 0 { throw .fabric(rc, "fi_send(word)") }
        return true
    }

    package func poll(into events: UnsafeMutableBufferPointer<TransportEvent>) throws(RStreamError) -> Int {
        if let grouped { return try pollInbox(grouped.group, grouped.inbox, into: events) }
        let batch = min(events.count, Self.completionBatch)
        let n = fabricCall(.cqRead) { fi_cq_read(cq, completions, batch) }
        if n == -Int(FI_EAGAIN) { return 0 }
        if n == -Int(FI_EAVAIL) {
            var err = fi_cq_err_entry()
            let rc = fi_cq_readerr(cq, &err, 0)
            if rc < 0 { throw .fabric(rc, "fi_cq_readerr") }
            events[0] = try failure(context: err.op_context, code: err.err, flags: err.flags)
            waitSet?.stateMayHaveChanged()
            return 1
        }
        if n < 0 { throw .fabric(n, "fi_cq_read") }
        for i in 0..<n {
            let entry = completions[i]
            events[i] = try event(context: entry.op_context, flags: entry.flags, length: entry.len, data: entry.data)
        }
        waitSet?.stateMayHaveChanged()
        return n
    }

    /// A grouped stream's poll: reads the shared queue for every member (unless another thread
    /// is), then takes what was routed here.
    private func pollInbox(_ group: CompletionGroup, _ inbox: CompletionInbox,
                           into events: UnsafeMutableBufferPointer<TransportEvent>) throws(RStreamError) -> Int {
        try group.drain()
        if inbox.hasOverflowed {
            throw RStreamError(.fabric, code: EPROTO, "the core reported more completions than this stream can have outstanding")
        }
        let n = inbox.take(into: UnsafeMutableBufferPointer(start: routed, count: min(events.count, Self.completionBatch)))
        for i in 0..<n {
            let entry = routed[i]
            let context = UnsafeMutableRawPointer(bitPattern: entry.context)
            var flags: UInt64 = 0
            if entry.flags.contains(.receive) { flags |= UInt64(FI_RECV) }
            if entry.flags.contains(.error) {
                events[i] = try failure(context: context, code: Int32(bitPattern: entry.data), flags: flags)
                continue
            }
            if entry.flags.contains(.remoteWrite) { flags |= UInt64(FI_REMOTE_WRITE) }
            if entry.flags.contains(.remoteData) { flags |= UInt64(FI_REMOTE_CQ_DATA) }
            let data = entry.flags.contains(.dataFits) ? UInt64(entry.data) : UInt64.max
            events[i] = try event(context: context, flags: flags, length: entry.length, data: data)
        }
        if n > 0 { waitSet?.stateMayHaveChanged() }
        return n
    }

    /// `fi_trywait` on the completion and event queues: true when a caller may sleep on `waitSet`.
    /// A grouped stream's caller may sleep when the reactor reads the shared queues (it rings
    /// the set for whatever it routes here after the arming) and nothing routed here waits: the
    /// shared queues' own `fi_trywait` fails while any neighbour's completion is unread, which
    /// kept idle waiters from sleeping beside a busy stream.
    package func tryWait(for interest: WaitInterest) -> Bool {
        if let grouped {
            guard let waitSet, waitSet.descriptor >= 0 else { return false } // the eventfd, and the reactor reading
            return grouped.inbox.isEmpty && grouped.group.failure == nil
        }
        return fabricTryWait() == 0
    }

    /// This endpoint's connection event, if one is queued: a shutdown or a failure is the peer's leaving.
    package func takePeerLeft() -> Bool {
        switch try? eventQueue.takeEvent(for: eventKey) {
        case .shutdown?, .failed?: return true
        case .connected?, nil: return false
        }
    }

    package var hasConnectionEvent: Bool { eventQueue.hasEvent(for: eventKey) }
    package var connectionEventDescriptor: ConnectionEventDescriptor? {
        eventQueue.waitDescriptor.map { ConnectionEventDescriptor(fd: $0, hangUpOnly: false) }
    }

    /// `fi_trywait` on the completion and event queues: 0 when a caller may sleep on `waitSet`.
    package func fabricTryWait() -> Int {
        withUnsafeTemporaryAllocation(of: UnsafeMutablePointer<fid>?.self, capacity: 2) { fids in
            fids[0] = fidOf(cq)
            fids[1] = fidOf(eventQueue.handle)
            return Int(fi_trywait(domain.fabric, fids.baseAddress, 2))
        }
    }

    /// What an error completion means: a failed transmit or receive (a word slot it held is free).
    private func failure(context: UnsafeMutableRawPointer?, code: Int32, flags: UInt64) throws(RStreamError) -> TransportEvent {
        let transmit = Self.decode(context).map { $0.0 != .receive } ?? (flags & UInt64(FI_RECV) == 0)
        if let (tag, slot) = Self.decode(context), tag == .wordSend, shape.iwarp { try returnWordSlot(slot) }
        return .failed(code: code, transmit: transmit)
    }

    /// What a completion means (the fields of a `fi_cq_data_entry`; `data` above 32 bits brings
    /// no word). A consumed receive is posted again here.
    @inline(__always)
    private func event(context: UnsafeMutableRawPointer?, flags: UInt64, length: Int, data: UInt64) throws(RStreamError) -> TransportEvent {
        // A local completion may carry FI_REMOTE_CQ_DATA too; only these two mark an arrival.
        let incoming = flags & UInt64(FI_RECV | FI_REMOTE_WRITE) != 0
        guard incoming else {
            guard let (tag, slot) = Self.decode(context) else {
                throw RStreamError(.fabric, "completion with an unknown context \(String(describing: context))")
            }
            switch tag {
            case .write: return .transmitted(writeSlot: slot)
            case .wordSend:
                if shape.iwarp { try returnWordSlot(slot) }
                return .transmitted(writeSlot: nil)
            case .receive: throw RStreamError(.fabric, "receive context on a transmit completion")
            }
        }
        let consumed = flags & UInt64(FI_RECV) != 0
            || (flags & UInt64(FI_REMOTE_WRITE) != 0 && attributes.writeConsumesReceive)
        var word: UInt32?
        if consumed {
            guard let (tag, slot) = Self.decode(context), tag == .receive, slot < shape.rxCredits else {
                throw RStreamError(.fabric, "a consumed receive without its context")
            }
            if shape.iwarp {
                // len is trustworthy for a send's payload; a payload of another size brings no word.
                if length == 4 {
                    word = UInt32(bigEndian: wordRegion.base.loadUnaligned(fromByteOffset: 4 * slot, as: UInt32.self))
                }
            } else if flags & UInt64(FI_REMOTE_CQ_DATA) != 0, data <= UInt64(UInt32.max) {
                word = UInt32(data)
            }
            try postReceive(slot: slot)
        } else if !shape.iwarp, flags & UInt64(FI_REMOTE_CQ_DATA) != 0, data <= UInt64(UInt32.max) {
            word = UInt32(data)
        }
        return .notified(word: word, consumedReceive: consumed)
    }

    /// Returns a word slot at its completion; a completion for a slot not in use (the core
    /// reporting one twice) is an error, not a trap.
    private func returnWordSlot(_ slot: Int) throws(RStreamError) {
        let returned = wordSlots.withCheckedLock(key: lockKey(self)) { (slots: inout WordSlots) -> Bool in
            guard slot >= 0, slot < slots.inUse.count, slots.inUse[slot] else { return false }
            slots.inUse[slot] = false
            slots.free.append(Int32(slot))
            return true
        }
        if !returned { throw RStreamError(.fabric, code: EPROTO, "the core completed word slot \(slot), which was not in use") }
    }

    /// The core endpoint's own address (`fi_getname`) or its peer's (`fi_getpeer`), as a sockaddr.
    package func address(ofPeer: Bool) -> [UInt8]? {
        var storage = sockaddr_storage()
        var length = MemoryLayout<sockaddr_storage>.size
        let rc = ofPeer ? fi_getpeer(endpoint, &storage, &length) : fi_getname(fidOf(endpoint), &storage, &length)
        guard rc == 0 else { return nil }
        return withUnsafeBytes(of: &storage) { Array($0.prefix(length)) }
    }

    package func disconnect() {
        _ = fi_shutdown(endpoint, 0)
    }
}
