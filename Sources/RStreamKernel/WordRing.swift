import Synchronization

/// The single-producer ring of words in shared memory (protocol v4, "Same host"): the sender
/// writes each word into the receiver's segment, the receiver reads them in order. It touches one
/// cache line per word and shares no index: each 64-bit slot holds the word and its sequence
/// number (its position in the stream plus one, so that zeroed memory reads as empty), written by
/// the producer alone with one release store. The producer needs no view of the consumer: protocol
/// v4's credits already bound the words in flight by the receiver's rx credits, which the ring
/// holds (`capacity` is the next power of two). The consumer keeps its position privately.
///
/// The slots lie in memory the peer writes, so the consumer believes nothing it has not checked: a
/// slot at its position holds the expected sequence (a word), the previous lap's (empty), or
/// anything else, which ends the stream: a later lap (the producer overfilled the ring), or a
/// sequence that fits neither (out of range or gone backwards).
package enum WordRing {
    package static let slotBytes = 8

    /// Slots for a receiver announcing `rxCredits` (4...511): a power of two, at most 512.
    package static func capacity(forCredits rxCredits: Int) -> Int {
        var capacity = 4
        while capacity < rxCredits { capacity <<= 1 }
        return capacity
    }

    @inline(__always)
    static func slot(_ base: UnsafeMutableRawPointer, _ index: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        (base + index * slotBytes).assumingMemoryBound(to: Atomic<UInt64>.self)
    }

    /// Initialises the slots of a ring this side made (zeroed memory already reads as empty).
    package static func initialize(at base: UnsafeMutableRawPointer, capacity: Int) {
        let slots = base.bindMemory(to: Atomic<UInt64>.self, capacity: capacity)
        for i in 0..<capacity { (slots + i).initialize(to: Atomic(0)) }
    }
}

/// The sender's end of a word ring in the peer's segment. Used under the engine's send lock.
///
/// Invariant: `position` counts the words pushed; the slot of word k holds (k + 1) << 32 | word.
package struct WordRingProducer {
    private let base: UnsafeMutableRawPointer
    private let mask: Int
    private var position: UInt64 = 0

    package init(base: UnsafeMutableRawPointer, capacity: Int) {
        precondition(capacity > 0 && capacity & (capacity - 1) == 0)
        self.base = base
        mask = capacity - 1
    }

    /// Publishes `word` (and the ring bytes written before it: the store releases them).
    @inline(__always)
    package mutating func push(_ word: UInt32) {
        position &+= 1
        let value = UInt64(truncatingIfNeeded: UInt32(truncatingIfNeeded: position)) << 32 | UInt64(word)
        WordRing.slot(base, Int(truncatingIfNeeded: position &- 1) & mask).pointee.store(value, ordering: .releasing)
    }
}

/// The receiver's end of a word ring in its own segment, which the peer writes. Used under the
/// engine's progress lock.
///
/// Invariant: `position` counts the words taken; every word taken was checked to be at its slot
/// with its sequence.
package struct WordRingConsumer {
    private let base: UnsafeMutableRawPointer
    private let capacity: Int
    private var position: UInt64 = 0

    package enum Next: Equatable {
        case word(UInt32)
        case empty
    }

    package init(base: UnsafeMutableRawPointer, capacity: Int) {
        precondition(capacity > 0 && capacity & (capacity - 1) == 0)
        self.base = base
        self.capacity = capacity
    }

    /// The words taken so far.
    package var taken: UInt64 { position }

    /// True when the slot at the position holds something (a word, or garbage to report).
    @inline(__always)
    package func hasNext() -> Bool { Self.slotHoldsSomething(base: base, capacity: capacity, position: position) }

    /// The same look from any thread, given a position published by the consumer: a hint for a
    /// waiter deciding whether to take the lock under which words are read.
    @inline(__always)
    package static func slotHoldsSomething(base: UnsafeMutableRawPointer, capacity: Int, position: UInt64) -> Bool {
        let value = WordRing.slot(base, Int(truncatingIfNeeded: position) & (capacity - 1)).pointee.load(ordering: .acquiring)
        return UInt32(truncatingIfNeeded: value >> 32) != emptySequence(position, capacity)
    }

    private var emptySequence: UInt32 { Self.emptySequence(position, capacity) }

    @inline(__always)
    private static func emptySequence(_ position: UInt64, _ capacity: Int) -> UInt32 {
        // The previous lap's sequence; in the first lap, zeroed memory.
        position < UInt64(capacity) ? 0 : UInt32(truncatingIfNeeded: position &+ 1 &- UInt64(capacity))
    }

    /// The next word, or empty; a slot that is neither is a protocol error.
    @inline(__always)
    package mutating func next() throws(RStreamError) -> Next {
        let index = Int(truncatingIfNeeded: position) & (capacity - 1)
        let value = WordRing.slot(base, index).pointee.load(ordering: .acquiring)
        let sequence = UInt32(truncatingIfNeeded: value >> 32)
        let expected = UInt32(truncatingIfNeeded: position &+ 1)
        if sequence == expected {
            position &+= 1
            return .word(UInt32(truncatingIfNeeded: value))
        }
        if sequence == emptySequence { return .empty }
        let lapsAhead = (sequence &- expected) / UInt32(capacity)
        if (sequence &- expected) % UInt32(capacity) == 0 && lapsAhead >= 1 && lapsAhead < 1 << 16 {
            throw .protocolViolation("the peer overfilled the word ring: slot \(index) holds word \(sequence &- 1), \(lapsAhead) lap(s) ahead of word \(expected &- 1)")
        }
        throw .protocolViolation("word ring slot \(index) holds sequence \(sequence); word \(expected &- 1) or an empty slot was due")
    }
}
