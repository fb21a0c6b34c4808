import Testing
@_spi(Benchmarks) @testable import RStreamKernel

@Suite struct RingCursorTests {
    /// For every start offset and every length, a produce/consume pair behaves like a reference
    /// model of a ring, including wrap-around exactly at the end.
    @Test(arguments: [7, 64, 4096])
    func wrapAroundAtEveryOffset(capacity: Int) {
        let lengths = capacity <= 64 ? Array(0...capacity) : [0, 1, 2, 511, 4095, 4096]
        for start in 0..<capacity {
            for length in lengths {
                var ring = RingCursor(capacity: capacity)
                ring.produce(min(start, ring.contiguousFree))
                ring.consume(start)
                #expect(ring.writeOffset == start && ring.readOffset == start && ring.isEmpty)
                // Fill `length` bytes in as many contiguous pieces as the wrap needs.
                var left = length
                var pieces = 0
                while left > 0 {
                    let piece = min(left, ring.contiguousFree)
                    #expect(piece == min(left, capacity - ring.writeOffset))
                    ring.produce(piece)
                    left -= piece
                    pieces += 1
                }
                #expect(pieces <= 2)
                #expect(ring.used == length && ring.free == capacity - length)
                #expect(ring.writeOffset == (start + length) % capacity)
                #expect(ring.contiguousUsed == min(length, capacity - start))
                ring.consume(length)
                #expect(ring.isEmpty && ring.readOffset == ring.writeOffset)
            }
        }
    }

    @Test func fullRingHasNoContiguousFreeAndEmptyRingNothingToRead() {
        var ring = RingCursor(capacity: 4096)
        #expect(ring.contiguousUsed == 0)
        ring.produce(4096)
        #expect(ring.contiguousFree == 0 && ring.free == 0 && ring.writeOffset == 0)
        ring.consume(1)
        #expect(ring.contiguousFree == 1 && ring.free == 1 && ring.writeOffset == 0) // the byte just read
        ring.produce(1)
        ring.consume(4095)
        #expect(ring.readOffset == 0 && ring.used == 1 && ring.contiguousFree == 4095)
    }

    @Test func overrunsTrap() async {
        await #expect(processExitsWith: .failure) {
            var ring = RingCursor(capacity: 16)
            ring.produce(17)
        }
        await #expect(processExitsWith: .failure) {
            var ring = RingCursor(capacity: 16)
            ring.produce(4)
            ring.consume(5)
        }
    }
}

@Suite struct WriteLedgerTests {
    @Test func freesInPostingOrderEvenWhenCompletedOutOfOrder() {
        let fifo = WriteLedger(capacity: 4)
        let a = fifo.push(length: 10), b = fifo.push(length: 20), c = fifo.push(length: 30)
        #expect(fifo.complete(slot: b) == 0)
        #expect(fifo.complete(slot: c) == 0)
        #expect(fifo.complete(slot: a) == 60)
        #expect(fifo.inFlight == 0)
        for round in 0..<10 {   // slots wrap round the capacity
            let s = fifo.push(length: round + 1)
            #expect(fifo.complete(slot: s) == round + 1)
        }
    }

    @Test func overfillingTraps() async {
        await #expect(processExitsWith: .failure) {
            let fifo = WriteLedger(capacity: 1)
            _ = fifo.push(length: 1)
            _ = fifo.push(length: 1)
        }
    }

    // A completion comes from the core, not from this side's code: one for a slot with nothing in
    // flight is reported, and the ledger is left as it was.
    @Test func anUnknownOrRepeatedSlotIsRefused() {
        let fifo = WriteLedger(capacity: 2)
        #expect(fifo.complete(slot: 0) == nil)
        #expect(fifo.complete(slot: 7) == nil)
        #expect(fifo.complete(slot: -1) == nil)
        let a = fifo.push(length: 5)
        #expect(fifo.complete(slot: a) == 5)
        #expect(fifo.complete(slot: a) == nil)
        #expect(fifo.inFlight == 0)
    }
}
