import Synchronization

/// One completion as a shared completion queue's reader routed it to its stream: what the
/// stream's transport needs of a `fi_cq_data_entry` or of an error entry, in 16 bytes.
package struct RoutedCompletion: Sendable, Equatable {
    /// The operation's context (the stream's member number, the tag and the slot).
    package var context: UInt
    /// The remote CQ data (0 when it did not fit 32 bits: `dataFits` is then false), or the
    /// error's code.
    package var data: UInt32
    /// Bits 0-7: `FlagBits`; bits 16-31: the entry's `len`, clamped to 0xFFFF.
    private var info: UInt32

    package struct FlagBits: OptionSet, Sendable {
        package let rawValue: UInt32
        package init(rawValue: UInt32) { self.rawValue = rawValue }
        package static let receive = FlagBits(rawValue: 1)       // FI_RECV
        package static let remoteWrite = FlagBits(rawValue: 2)   // FI_REMOTE_WRITE
        package static let remoteData = FlagBits(rawValue: 4)    // FI_REMOTE_CQ_DATA
        package static let dataFits = FlagBits(rawValue: 8)      // the CQ data is at most 32 bits
        package static let error = FlagBits(rawValue: 16)        // an error entry: `data` is its code
    }

    package init(context: UInt, data: UInt32, flags: FlagBits, length: Int) {
        self.context = context
        self.data = data
        info = flags.rawValue & 0xFF | UInt32(min(max(length, 0), 0xFFFF)) << 16
    }

    package var flags: FlagBits { FlagBits(rawValue: info & 0xFF) }
    package var length: Int { Int(info >> 16) }
}

/// The two cursors of an inbox, each on a pair of cache lines of its own writer (adjacent-line
/// prefetch pairs lines).
private struct InboxCursor: ~Copyable {
    let value = Atomic<Int>(0)
}

/// A single-producer, single-consumer ring of routed completions: the completions a shared
/// completion queue's reader found for one stream, until the stream's own progress takes them.
///
/// The producer is whoever reads the shared queue, one thread at a time (the group's lock
/// serializes them, and hands the cursor from one to the next); the consumer is the stream's
/// progress, under its progress lock. The producer publishes an entry with a releasing store
/// of `tail`, the consumer frees a slot with a releasing store of `head`.
///
/// Invariant: 0 <= tail − head <= capacity. A stream never has more completions outstanding
/// than its transmit queue and posted receives (the size it is made with), so a push cannot find
/// the ring full unless the core reported something twice; that push is refused, and the stream
/// fails with a protocol error rather than losing a completion unseen.
package final class CompletionInbox: @unchecked Sendable {
    private let slots: UnsafeMutablePointer<RoutedCompletion>
    private let mask: Int
    private let cursors: UnsafeMutableRawPointer
    private var head: UnsafeMutablePointer<InboxCursor> { cursors.assumingMemoryBound(to: InboxCursor.self) }
    private var tail: UnsafeMutablePointer<InboxCursor> { (cursors + 128).assumingMemoryBound(to: InboxCursor.self) }
    /// Raised when a push found the ring full (read by the consumer: the stream then fails).
    private let overflowed = Atomic<Bool>(false)
    /// Rung after every push (if armed): the stream's waiters may be asleep.
    package let waitSet: WaitSet?

    package init(capacity: Int, waitSet: WaitSet?) {
        precondition(capacity > 0, "an inbox holds at least one completion")
        var size = 1
        while size < capacity { size <<= 1 }
        slots = .allocate(capacity: size)
        mask = size - 1
        cursors = .allocate(byteCount: 256, alignment: 128)
        (cursors.assumingMemoryBound(to: InboxCursor.self)).initialize(to: InboxCursor())
        ((cursors + 128).assumingMemoryBound(to: InboxCursor.self)).initialize(to: InboxCursor())
        self.waitSet = waitSet
    }

    deinit {
        _ = head.move()
        _ = tail.move()
        cursors.deallocate()
        slots.deallocate()
    }

    package var capacity: Int { mask + 1 }

    /// Producer side (the group's reader, under the group's lock): false when the ring is full.
    @inline(__always)
    package func push(_ completion: RoutedCompletion) -> Bool {
        let t = tail.pointee.value.load(ordering: .relaxed)
        guard t &- head.pointee.value.load(ordering: .acquiring) <= mask else {
            overflowed.store(true, ordering: .releasing)
            return false
        }
        slots[t & mask] = completion
        tail.pointee.value.store(t &+ 1, ordering: .releasing)
        return true
    }

    /// After a push: wakes the stream's waiters if any armed. The fence orders the pushes before
    /// the look at the armed flag (an arming orders itself before its look at the ring with its
    /// own read-modify-write): either the waiter's last look sees the entry, or this sees it armed.
    @inline(__always)
    package func announce() {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        waitSet?.stateMayHaveChanged()
    }

    /// Consumer side (the stream's progress): moves up to `into.count` completions out.
    @inline(__always)
    package func take(into buffer: UnsafeMutableBufferPointer<RoutedCompletion>) -> Int {
        let h = head.pointee.value.load(ordering: .relaxed)
        let available = tail.pointee.value.load(ordering: .acquiring) &- h
        let n = min(available, buffer.count)
        for i in 0..<n { buffer[i] = slots[(h &+ i) & mask] }
        if n > 0 { head.pointee.value.store(h &+ n, ordering: .releasing) }
        return n
    }

    /// True when no routed completion waits (any thread). Sequentially consistent: a waiter's
    /// last look after its arming, paired with `announce`'s fence after a push.
    package var isEmpty: Bool {
        tail.pointee.value.load(ordering: .sequentiallyConsistent) == head.pointee.value.load(ordering: .sequentiallyConsistent)
    }

    /// True once a push found the ring full: a completion was lost, the stream must fail.
    package var hasOverflowed: Bool { overflowed.load(ordering: .acquiring) }
}
