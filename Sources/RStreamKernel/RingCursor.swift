import Synchronization

/// Position arithmetic of one byte ring: where the producer writes next, where the consumer reads
/// next, and how many bytes lie between. It owns no memory; a ring's bytes live in a
/// `RegisteredRegion` and are only touched at the offsets this cursor hands out.
///
/// Invariant: 0 <= used <= capacity; 0 <= writeOffset, readOffset < capacity;
/// (readOffset + used) % capacity == writeOffset.
@_spi(Benchmarks) public struct RingCursor: Sendable, Equatable {
    @_spi(Benchmarks) public let capacity: Int
    @_spi(Benchmarks) public private(set) var writeOffset = 0
    @_spi(Benchmarks) public private(set) var readOffset = 0
    @_spi(Benchmarks) public private(set) var used = 0

    @_spi(Benchmarks) public init(capacity: Int) {
        precondition(capacity > 0, "a ring needs a positive capacity")
        self.capacity = capacity
    }

    @_spi(Benchmarks) public var free: Int { capacity - used }
    @_spi(Benchmarks) public var isEmpty: Bool { used == 0 }

    /// Free bytes from `writeOffset` up to the ring's end: one write never wraps.
    @_spi(Benchmarks) public var contiguousFree: Int { min(free, capacity - writeOffset) }

    /// Used bytes from `readOffset` up to the ring's end.
    @_spi(Benchmarks) public var contiguousUsed: Int { min(used, capacity - readOffset) }

    @_spi(Benchmarks) public mutating func produce(_ n: Int) {
        precondition(n >= 0 && n <= contiguousFree, "produce(\(n)) beyond \(contiguousFree) contiguous free bytes")
        used += n
        writeOffset += n
        if writeOffset == capacity { writeOffset = 0 }
        checkInvariant()
    }

    @_spi(Benchmarks) public mutating func consume(_ n: Int) {
        precondition(n >= 0 && n <= used, "consume(\(n)) beyond \(used) used bytes")
        used -= n
        readOffset += n
        if readOffset >= capacity { readOffset -= capacity }
        checkInvariant()
    }

    @inline(__always)
    private func checkInvariant() {
        assert(used >= 0 && used <= capacity && writeOffset < capacity && readOffset < capacity
               && (readOffset + used) % capacity == writeOffset, "ring cursor invariant broken: \(self)")
    }
}

/// The data writes in flight, in the order they were posted, so that send-ring bytes are freed in
/// ring order even if a core completes writes out of order. Single producer, single consumer: the
/// send shard pushes, the progress shard completes. It lives where its owner puts it (the engine
/// keeps it in its NUMA-placed hot state); `lengths` is storage it is lent, or owns when
/// `ownsStorage`.
///
/// Invariant: retired <= posted <= retired + capacity; a slot between them holds the write's length,
/// negated once its completion has arrived. `posted` is written only by the pusher, `retired` only
/// by the completer.
package struct WriteLedger: ~Copyable {
    private let lengths: UnsafeMutableBufferPointer<Int32>
    private let ownsStorage: Bool
    private let posted = Atomic<Int>(0)
    private let retired = Atomic<Int>(0)

    /// A ledger over `storage` (zeroed), which must outlive it.
    package init(storage: UnsafeMutableBufferPointer<Int32>) {
        precondition(storage.count > 0)
        storage.initialize(repeating: 0)
        lengths = storage
        ownsStorage = false
    }

    package init(capacity: Int) {
        precondition(capacity > 0)
        lengths = .allocate(capacity: capacity)
        lengths.initialize(repeating: 0)
        ownsStorage = true
    }

    deinit { if ownsStorage { lengths.deallocate() } }

    package var inFlight: Int { posted.load(ordering: .acquiring) - retired.load(ordering: .acquiring) }
    package var isFull: Bool { inFlight >= lengths.count }
    package var freeSlots: Int { lengths.count - inFlight }
    package var isEmpty: Bool { inFlight == 0 }

    /// Records a posted write (pusher only); returns the slot its completion will name.
    package func push(length: Int) -> Int {
        let p = posted.load(ordering: .relaxed)
        precondition(p - retired.load(ordering: .acquiring) < lengths.count && length > 0, "write ledger overflow")
        let slot = p % lengths.count
        lengths[slot] = Int32(length)
        posted.store(p + 1, ordering: .releasing)
        return slot
    }

    /// Marks the write in `slot` complete (completer only); returns the bytes that may now leave
    /// the send ring, or nil for a slot with no write in flight (a completion the core should not
    /// have reported: the caller fails the stream, the ledger is unchanged).
    package func complete(slot: Int) -> Int? {
        let p = posted.load(ordering: .acquiring)
        var r = retired.load(ordering: .relaxed)
        guard slot >= 0, slot < lengths.count, lengths[slot] > 0 else { return nil }
        lengths[slot] = -lengths[slot]
        var freed = 0
        while r < p, case let len = lengths[r % lengths.count], len < 0 {
            freed += Int(-len)
            lengths[r % lengths.count] = 0
            r += 1
        }
        retired.store(r, ordering: .releasing)
        return freed
    }
}
