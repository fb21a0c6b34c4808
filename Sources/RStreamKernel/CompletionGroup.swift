import CLibfabric
import Synchronization

/// One completion queue shared by many streams of a domain, and the routing of its completions
/// to each stream's `CompletionInbox` by their context.
///
/// Only streams whose every completion carries a context of ours may join: local completions
/// always do, and arrivals do when each uses up a posted receive (iWarp mode, where words are
/// sends, or a core that asks for `FI_RX_CQ_DATA`, such as verbs). Over a core that reports a
/// remote write's data without a receive (tcp in normal mode) the arrival's `op_context` is NULL
/// (`fi_cq(3)`), so it could not be routed: such streams keep a queue of their own.
///
/// Why: a queue of its own costs a stream the queue's wait object (three descriptors on tcp) and
/// its entries; sharing one, 10,000 streams fit a 20,000-descriptor limit, and one descriptor (the
/// queue's) tells the reactor that any of them has news.
///
/// Whoever drives progress on any member reads the queue for all of them (one reader at a time:
/// a stream that finds another reading leaves it to that one) and pushes each completion into
/// its stream's inbox, ringing that stream's wait set if a waiter armed it. It posts nothing:
/// each stream's own progress takes its inbox and reposts its receives.
///
/// Invariants: `capacity` is the queue's size, and the members' reserved entries (each its
/// transmit queue plus its posted receives, all it can have outstanding) never exceed it, so the
/// queue cannot overrun (the member table's rules are `CompletionMembers`'); `leave` runs after
/// the member's endpoint is closed and reads the queue first, and a number whose last read failed
/// is never given out again. A read that fails, or an error entry that names no stream, fails
/// every member (`failure`): nobody can tell whose completion was lost.
package final class CompletionGroup: @unchecked Sendable {
    package let domain: Domain
    package let cq: UnsafeMutablePointer<fid_cq>
    /// The queue's wait descriptor (`FI_WAIT_FD`), nil when opened without one.
    package let waitDescriptor: Int32?
    package let capacity: Int
    /// Member numbers fit the top 24 bits of a 64-bit context.
    package static let maxMembers = (1 << 24) - 1
    /// The queue's size: what members may reserve in all (default tcp streams: 128 of them).
    package static let defaultCapacity = 65536
    private static let batch = 32

    private let members: Mutex<CompletionMembers>
    private let entries: UnsafeMutablePointer<fi_cq_data_entry>
    private let pumpToken = Atomic<UInt64>(0)
    /// Set when the queue failed for everyone (see the invariants).
    private let failed = Atomic<Bool>(false)
    private let failureText = Mutex<RStreamError?>(nil)

    /// The error that failed every member, if one did.
    package var failure: RStreamError? {
        guard failed.load(ordering: .sequentiallyConsistent) else { return nil }
        return failureText.withCheckedLock(key: lockKey(self) + 1) { $0 }
    }

    /// Fails every member and wakes their waiters to see it (the members lock held). Stored
    /// before the rings, sequentially consistent: a waiter's last look (`tryWait`) sees it, or
    /// its arming came before the ring.
    private func failEveryone(_ error: RStreamError, _ m: inout CompletionMembers) {
        failureText.withCheckedLock(key: lockKey(self) + 1) { if $0 == nil { $0 = error } }
        failed.store(true, ordering: .sequentiallyConsistent)
        for inbox in m.everyInbox { inbox.waitSet?.ring() }
    }

    package init(domain: Domain, waitDescriptor wantsDescriptor: Bool, capacity: Int = CompletionGroup.defaultCapacity) throws(RStreamError) {
        var attr = fi_cq_attr()
        attr.size = capacity
        attr.format = FI_CQ_FORMAT_DATA
        attr.wait_obj = wantsDescriptor ? FI_WAIT_FD : FI_WAIT_NONE
        var cq: UnsafeMutablePointer<fid_cq>?
        try fabricCheck(.cqOpen, "fi_cq_open(shared, \(capacity) entries)") { fi_cq_open(domain.domain, &attr, &cq, nil) }
        var fd: Int32 = -1
        if wantsDescriptor, fi_control(fidOf(cq!), Int32(FI_GETWAIT), &fd) == 0, fd >= 0 {
            waitDescriptor = fd
        } else {
            waitDescriptor = nil
        }
        self.domain = domain
        self.cq = cq!
        self.capacity = capacity
        members = Mutex(CompletionMembers(capacity: capacity, maxMembers: Self.maxMembers))
        entries = .allocate(capacity: Self.batch)
    }

    deinit {
        let token = pumpToken.load(ordering: .acquiring)
        if token != 0 { _ = Reactor.shared.cancel(token) } // before the descriptor closes
        closeFabricObject(fidOf(cq), "shared completion queue")
        entries.deallocate()
    }

    /// Reserves room for a stream that may have `reserving` completions outstanding: its member
    /// number, or nil when the queue has no room for it (the caller tries another group). The
    /// stream's inbox is attached before its endpoint can have completions.
    package func reserve(_ reserving: Int) -> (number: Int, generation: UInt16)? {
        members.withCheckedLock(key: lockKey(self)) { m in m.reserve(reserving) }
    }

    /// Routes member `number`'s completions to `inbox` from now on.
    package func attach(_ inbox: CompletionInbox, as number: Int) {
        members.withCheckedLock(key: lockKey(self)) { m in m.attach(inbox, as: number) }
    }

    /// Removes a member whose endpoint is closed: its last completions are read (and dropped)
    /// before its number is free for another stream.
    package func leave(_ number: Int, generation: UInt16) {
        members.withCheckedLock(key: lockKey(self)) { m in
            var read = true
            do throws(RStreamError) { try readAll(&m, batches: .max, untilEmpty: true) } catch {
                failEveryone(error, &m)
                read = false
            }
            let released = m.release(number, generation: generation, reusable: read) // else its late entries could reach a successor
            assert(released, "member \(number) of generation \(generation) left twice, or was never here")
        }
    }

    /// True once the reactor reads this queue whenever its descriptor fires.
    package var isPumped: Bool { pumpToken.load(ordering: .acquiring) != 0 }

    /// Reads what is waiting (at most `batchesPerDrain` batches) and routes it, unless another
    /// thread is reading (it routes them: a waiter it finds armed is rung), or this is the
    /// reactor's thread and the reactor reads the queue anyway. The group's failure is thrown.
    package func drain() throws(RStreamError) {
        if let failure { throw failure }
        if isPumped && Reactor.shared.isCurrentThread { return }
        _ = members.withCheckedLockIfAvailable(key: lockKey(self)) { (m: inout CompletionMembers) in
            readOrFail(&m, batches: Self.batchesPerDrain)
        }
        if let failure { throw failure }
    }

    /// Batches one drain reads at most: a reader under steady load does not route for everyone
    /// for ever (the queue's descriptor stays readable, so the reactor comes back for the rest).
    private static let batchesPerDrain = 8

    /// `readAll`, failing every member when the read fails.
    private func readOrFail(_ m: inout CompletionMembers, batches: Int) {
        do throws(RStreamError) { try readAll(&m, batches: batches) } catch { failEveryone(error, &m) }
    }

    /// Reads until the queue is empty (or a batch comes back short, unless `untilEmpty`) or
    /// `batches` were read (the caller holds the members lock).
    private func readAll(_ m: inout CompletionMembers, batches: Int, untilEmpty: Bool = false) throws(RStreamError) {
        for _ in 0..<batches {
            let n = fabricCall(.cqRead) { fi_cq_read(cq, entries, Self.batch) }
            if n == -Int(FI_EAGAIN) { return }
            if n == -Int(FI_EAVAIL) {
                var err = fi_cq_err_entry()
                let rc = fi_cq_readerr(cq, &err, 0)
                if rc < 0 { throw .fabric(rc, "fi_cq_readerr(shared)") }
                var flags = RoutedCompletion.FlagBits.error
                if err.flags & UInt64(FI_RECV) != 0 { flags.insert(.receive) }
                if err.op_context == nil {
                    throw RStreamError.fabric(Int(err.err), "an error completion on the shared completion queue named no stream")
                }
                route(RoutedCompletion(context: UInt(bitPattern: err.op_context), data: UInt32(bitPattern: err.err),
                                       flags: flags, length: 0), &m)
                continue
            }
            if n < 0 { throw .fabric(n, "fi_cq_read(shared)") }
            for i in 0..<n {
                let entry = entries[i]
                var flags: RoutedCompletion.FlagBits = []
                if entry.flags & UInt64(FI_RECV) != 0 { flags.insert(.receive) }
                if entry.flags & UInt64(FI_REMOTE_WRITE) != 0 { flags.insert(.remoteWrite) }
                if entry.flags & UInt64(FI_REMOTE_CQ_DATA) != 0 { flags.insert(.remoteData) }
                if entry.data <= UInt64(UInt32.max) { flags.insert(.dataFits) }
                route(RoutedCompletion(context: UInt(bitPattern: entry.op_context),
                                       data: flags.contains(.dataFits) ? UInt32(entry.data) : 0,
                                       flags: flags, length: entry.len), &m)
            }
            // A short batch emptied the queue as it was: another read to hear "empty" would be
            // one more progress step over every endpoint of the domain (tcp). Whatever came
            // since is seen by the caller's `fi_trywait` (the reactor's) or its next read.
            if n < Self.batch && !untilEmpty { return }
        }
    }

    @inline(__always)
    private func route(_ completion: RoutedCompletion, _ m: inout CompletionMembers) {
        guard let inbox = m.inbox(for: completion.context) else {
            return // a member gone since (its number free, or given to a newer member)
        }
        _ = inbox.push(completion) // a full inbox marks itself: its stream fails
        // Any waiter, a reader too: a local completion can free the transmit slot that a CONTROL
        // word owed to the peer waits for, and only the stream's own progress sends it.
        inbox.announce()
    }

    /// The member number a context names (0: none), and its generation.
    @inline(__always)
    package static func member(of context: UInt) -> Int { Int(context >> 40) }
    @inline(__always)
    package static func generation(of context: UInt) -> UInt16 { UInt16(truncatingIfNeeded: context >> 16) }

    /// The context bits that name member `number` of `generation`.
    package static func contextBits(member number: Int, generation: UInt16) -> UInt {
        UInt(number) << 40 | UInt(generation) << 16
    }

    /// `fi_trywait` on the queue (it also clears the queue's signal): true when a caller may
    /// sleep on `waitDescriptor`.
    package func tryWait() -> Bool {
        var fid: UnsafeMutablePointer<fid>? = fidOf(cq)
        return fi_trywait(domain.fabric, &fid, 1) == 0
    }

    /// Has the reactor read the queue whenever its descriptor fires (once; for members whose
    /// waiters sleep on their own descriptors: an async task's, or one a C program polls), so
    /// that nobody needs to sleep on the shared descriptor itself.
    @discardableResult
    package func startPump() -> Bool {
        if pumpToken.load(ordering: .acquiring) != 0 { return true }
        guard let fd = waitDescriptor else { return false }
        let token = Reactor.shared.keepPumping(fd, pump: { [weak self] in
            guard let self else { return false }
            // Read, then clear the signal (`fi_trywait` clears it before it looks, so a failed
            // one clears it too); entries that came meanwhile are read again.
            for _ in 0..<8 {
                self.members.withCheckedLock(key: lockKey(self)) { (m: inout CompletionMembers) in self.readOrFail(&m, batches: Self.batchesPerDrain) }
                if self.failure != nil {
                    _ = self.tryWait()
                    return false // every member failed and was rung: nothing more to read for
                }
                if self.tryWait() { return true }
            }
            // Still busy: signal the queue again, so that the reactor comes back for the rest
            // (its signal was cleared by the failed `fi_trywait`).
            _ = fi_cq_signal(self.cq)
            return true
        }, ended: { [weak self] in
            self?.pumpToken.store(0, ordering: .sequentiallyConsistent) // the next sleeper starts it again
        })
        guard let token else { return false }
        if !pumpToken.compareExchange(expected: 0, desired: token, ordering: .acquiringAndReleasing).exchanged {
            _ = Reactor.shared.cancel(token) // another thread started it first
        }
        return true
    }
}
