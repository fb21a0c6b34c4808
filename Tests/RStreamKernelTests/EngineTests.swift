import Testing
@_spi(Benchmarks) @testable import RStreamKernel
import RStreamFakeWire

// Swift 6.3.1 crashes (LLVM "Invalid bitcast") compiling the fake wire with -sanitize=thread;
// these single-threaded tests gain nothing from ThreadSanitizer, so its build leaves them out.
#if !RSTREAM_TSAN
@Suite struct EngineTests {
    @Test func bytesThenFinThenEndOfStream() throws {
        let pair = EnginePair()
        #expect(try pair.a.send(Array("hello".utf8)) == 5)
        pair.a.shutdown()
        let (bytes, outcome) = try pair.b.receiveAll()
        #expect(String(decoding: bytes, as: UTF8.self) == "hello" && outcome == .bytes(5))
        #expect(try pair.b.receiveAll().1 == .endOfStream)
        #expect(throws: RStreamError.self) { _ = try pair.a.send([1]) }
    }

    @Test func remoteRingSpaceStopsTheSenderUntilFreed() throws {
        let pair = EnginePair(ringSize: 4096)
        #expect(try pair.a.send([UInt8](repeating: 7, count: 5000)) == 4096)
        #expect(try pair.a.send([1]) == 0)
        #expect(pair.a.writableCount == 0)
        // Less than half the ring freed: no CONTROL yet, the sender still waits.
        var buffer = [UInt8](repeating: 0, count: 2047)
        #expect(try pair.b.receive(into: &buffer) == .bytes(2047))
        pair.a.progress()
        #expect(pair.a.writableCount == 0)
        buffer = [UInt8](repeating: 0, count: 1)
        #expect(try pair.b.receive(into: &buffer) == .bytes(1))
        pair.a.progress()
        #expect(pair.a.writableCount == 2048)
        #expect(try pair.a.send([UInt8](repeating: 8, count: 3000)) == 2048)
    }

    @Test func transmitCreditsKeepTwoForControlWords() throws {
        let pair = EnginePair(ringSize: 1 << 16, txQueueSize: 8)
        pair.wire.holdCompletions = true
        var writes = 0
        while try pair.a.send([UInt8](repeating: 1, count: 10)) > 0 { writes += 1 }
        #expect(writes == 8 - EngineTests.reserve)
        pair.wire.deliver()
        #expect(try pair.a.send([1]) == 1)
    }

    static let reserve = FakeEngine.reserve

    /// A transport that caps streaming writes and asks for a CONTROL word each quarter ring (the
    /// same-host one) gets both: a send goes out in parts the peer can copy out while the next
    /// is copied in, and space returns after a quarter ring is read.
    @Test func streamingWritesInPartsAndSpaceReturnedEachQuarterRing() throws {
        let pair = EnginePair(ringSize: 4096, wire: FakeWire(largestStreamingWrite: 1024, controlWordsPerRing: 4))
        #expect(try pair.a.send([UInt8](repeating: 7, count: 5000)) == 4096)
        let lengths = pair.wire.posted[0].compactMap { word -> Int? in
            if case .data(let n)? = try? NotificationWord.decode(word) { return n } else { return nil }
        }
        #expect(lengths == [1024, 1024, 1024, 1024])
        var buffer = [UInt8](repeating: 0, count: 1023)
        #expect(try pair.b.receive(into: &buffer) == .bytes(1023))
        pair.a.progress()
        #expect(pair.a.writableCount == 0)
        buffer = [UInt8](repeating: 0, count: 1)
        #expect(try pair.b.receive(into: &buffer) == .bytes(1))
        pair.a.progress()
        #expect(pair.a.writableCount == 1024)
    }

    /// The zero-copy send region is one streaming part at most.
    @Test func theSendRegionIsOneStreamingPartAtMost() throws {
        let pair = EnginePair(ringSize: 4096, wire: FakeWire(largestStreamingWrite: 1024))
        var offered = 0
        #expect(try pair.a.withWritableBytes { region in offered = region.count; return 0 } == 0)
        #expect(offered == 1024)
    }

    /// Where few writes are allowed (4 rx credits, receives consumed by data: two data writes),
    /// the count of writable bytes is what a streaming send then takes, not the free ring.
    @Test func theWritableCountIsWhatAStreamingSendTakes() throws {
        let pair = EnginePair(ringSize: 4096, txQueueSize: 64, rxCredits: 4,
                              wire: FakeWire(consumesOnData: true, largestStreamingWrite: 1024))
        let count = pair.a.writableCount
        #expect(count == 2048)
        #expect(try pair.a.send([UInt8](repeating: 3, count: 4096)) == count)
        #expect(pair.a.writableCount == 0)
    }

    /// A bulk send copied with cache-bypassing stores, starting at an odd offset of the ring and
    /// wrapping it, arrives byte for byte; its parts are cut at the ring's end, and the writable
    /// count at that offset is what the send takes.
    @Test func aBulkSendCopiedPastTheCacheArrivesWhole() throws {
        let ring = 1 << 16
        let pair = EnginePair(ringSize: ring, txQueueSize: 64, rxCredits: 32,
                              wire: FakeWire(largestStreamingWrite: 8192, controlWordsPerRing: 4, bulkCopyBypassesCache: true))
        let lead = 30_003
        #expect(try pair.a.send([UInt8](repeating: 1, count: lead)) == lead)
        var drain = [UInt8](repeating: 0, count: lead)
        #expect(try pair.b.receive(into: &drain) == .bytes(lead))
        pair.a.progress()
        pair.wire.posted[0] = []
        let bulk = (0..<65_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 8) }
        let writable = pair.a.writableCount
        let first = try bulk.withUnsafeBytes { bytes throws(RStreamError) in try pair.a.send(bytes) }
        #expect(first == min(bulk.count, writable) && first > ring - lead, "the send wraps the ring")
        let ends = pair.wire.posted[0].compactMap { word -> Int? in
            if case .data(let n)? = try? NotificationWord.decode(word) { return n } else { return nil }
        }.reduce(into: [lead]) { $0.append($0.last! + $1) }
        #expect(ends.contains(ring), "a part ends at the ring's end: \(ends)")
        var sent = first, received: [UInt8] = [], rounds = 0
        while received.count < bulk.count && rounds < 10_000 {
            rounds += 1
            var buffer = [UInt8](repeating: 0, count: 50_000)
            if case .bytes(let n) = try pair.b.receive(into: &buffer) { received += buffer[..<n] }
            pair.a.progress()
            sent += try bulk[sent...].withUnsafeBytes { bytes throws(RStreamError) in try pair.a.send(bytes) }
        }
        #expect(received == bulk)
    }

    /// A record (`sendWhole`) keeps its one write per contiguous span: it is not cut into parts.
    @Test func aRecordIsNotCutIntoStreamingParts() throws {
        let pair = EnginePair(ringSize: 4096, wire: FakeWire(largestStreamingWrite: 1024, controlWordsPerRing: 4))
        let record = [UInt8](repeating: 9, count: 3000)
        let sent = try record.withUnsafeBytes { bytes throws(RStreamError) in try pair.a.sendWhole(bytes) }
        #expect(sent == 3000)
        #expect(pair.wire.posted[0] == [NotificationWord.data(length: 3000).encoded])
    }

    @Test(arguments: [4, 5, 8])
    func targetCreditsWhenDataConsumesReceives(rxCredits: Int) throws {
        let pair = EnginePair(ringSize: 1 << 16, txQueueSize: 64, rxCredits: rxCredits, wire: FakeWire(consumesOnData: true))
        var writes = 0
        while try pair.a.send([UInt8](repeating: 1, count: 10)) > 0 { writes += 1 }
        #expect(writes == rxCredits - EngineTests.reserve)
        // The receiver returns credits once the sender would otherwise stall, without being read.
        pair.b.progress()
        pair.a.progress()
        #expect(try pair.a.send([1]) == 1)
    }

    // MARK: Hostile words

    static let hostile: [(String, TransportEvent, String)] = [
        ("DATA of 0", .notified(word: 0x8000_0000, consumedReceive: true), "length 0"),
        ("DATA beyond the ring", .notified(word: 0x8000_0000 | 4097, consumedReceive: true), "beyond"),
        ("CONTROL of 0", .notified(word: 0, consumedReceive: true), "CONTROL word of 0"),
        ("CONTROL overflowing credits", .notified(word: 1 << 20, consumedReceive: true), "returns 1 credits"),
        ("CONTROL overflowing ring space", .notified(word: 1, consumedReceive: true), "frees 1 bytes"),
        ("no word", .notified(word: nil, consumedReceive: true), "without a word"),
    ]

    @Test(arguments: hostile)
    func hostileWordEndsTheConnectionAfterTheBytesBeforeIt(name: String, event: TransportEvent, reason: String) throws {
        let pair = EnginePair(ringSize: 4096)
        #expect(try pair.a.send(Array("before".utf8)) == 6)
        pair.b.progress()
        pair.wire.inject(to: 1, event)
        let (bytes, _) = try pair.b.receiveAll()
        #expect(String(decoding: bytes, as: UTF8.self) == "before")
        #expect {
            _ = try pair.b.receiveAll()
        } throws: { error in
            guard let error = error as? RStreamError else { return false }
            return error.kind == .protocolViolation && error.context.contains(reason)
        }
        let disconnected = pair.b.fake.disconnected
        #expect(disconnected)
        #expect(throws: RStreamError.self) { _ = try pair.b.send([1]) }
    }

    @Test func dataBeyondTheFreePartOfARingThatHoldsBytes() throws {
        let pair = EnginePair(ringSize: 4096)
        #expect(try pair.a.send([UInt8](repeating: 1, count: 4000)) == 4000)
        pair.b.progress()
        pair.wire.inject(to: 1, .notified(word: 0x8000_0000 | 97, consumedReceive: false))
        _ = try pair.b.receiveAll(max: 4000)
        #expect(throws: RStreamError.self) { _ = try pair.b.receiveAll() }
    }

    @Test func anyWordAfterFin() throws {
        let pair = EnginePair()
        pair.a.shutdown()
        pair.b.progress()
        pair.wire.inject(to: 1, .notified(word: 0x8000_0001, consumedReceive: false))
        #expect {
            _ = try pair.b.receiveAll()
        } throws: { ($0 as? RStreamError)?.context.contains("after FIN") ?? false }
    }

    @Test func afterFinOnlyControlWordsRepeatingFinAreAccepted() throws {
        let pair = EnginePair(ringSize: 4096)
        #expect(try pair.b.send([UInt8](repeating: 1, count: 100)) == 100)
        pair.a.shutdown()
        pair.b.progress()
        // A half-closed peer returns ring space for what it goes on receiving: CONTROL|FIN.
        pair.wire.inject(to: 1, .notified(word: 0x4000_0000 | 100, consumedReceive: true))
        #expect(try pair.b.receiveAll().1 == .endOfStream)
        #expect(pair.b.writableCount == 4096)
        pair.wire.inject(to: 1, .notified(word: 1 << 20, consumedReceive: true)) // CONTROL without FIN
        #expect {
            _ = try pair.b.receiveAll()
        } throws: { ($0 as? RStreamError)?.context.contains("after FIN") ?? false }
    }

    @Test func aHalfClosedSideKeepsReceivingAndReturningSpace() throws {
        let pair = EnginePair(ringSize: 4096, rxCredits: 4, wire: FakeWire(consumesOnData: true))
        pair.a.shutdown()
        var received = 0
        for round in 0..<200 {
            let k = try pair.b.send([UInt8](repeating: UInt8(truncatingIfNeeded: round), count: 3000))
            var buffer = [UInt8](repeating: 0, count: 4096)
            if case .bytes(let n) = try pair.a.receive(into: &buffer) { received += n }
            #expect(k > 0 || received > 0)
        }
        #expect(received > 100_000)
        #expect(pair.b.failure == nil && pair.a.failure == nil)
    }

    @Test func morePeerReceivesThanCredited() throws {
        let pair = EnginePair(rxCredits: 4)
        pair.wire.holdCompletions = true
        for _ in 0..<5 { pair.wire.inject(to: 1, .notified(word: 0x8000_0001, consumedReceive: true)) }
        #expect {
            _ = try pair.b.receiveAll()
            _ = try pair.b.receiveAll()
        } throws: { ($0 as? RStreamError)?.context.contains("more than the 4 receives") ?? false }
    }

    @Test func aFailedCompletionIsAResetAfterTheBytes() throws {
        let pair = EnginePair()
        #expect(try pair.a.send([1, 2, 3]) == 3)
        pair.b.progress()
        pair.wire.inject(to: 1, .failed(code: 104, transmit: false))
        #expect(try pair.b.receiveAll().0 == [1, 2, 3])
        #expect { _ = try pair.b.receiveAll() } throws: { ($0 as? RStreamError)?.kind == .connectionReset }
    }

    // MARK: A randomized model run

    struct Mode: CustomTestStringConvertible, Sendable {
        var ring: Int, tx: Int, rx: Int, consumes: Bool, iwarp: Bool
        var testDescription: String { "ring \(ring) tx \(tx) rx \(rx)\(consumes ? " consumes" : "")\(iwarp ? " iwarp" : "")" }
    }

    @Test(arguments: [
        Mode(ring: 4096, tx: 8, rx: 4, consumes: false, iwarp: false),
        Mode(ring: 4096, tx: 8, rx: 4, consumes: true, iwarp: false),
        Mode(ring: 4096, tx: 8, rx: 4, consumes: false, iwarp: true),
        Mode(ring: 5000, tx: 16, rx: 511, consumes: true, iwarp: false),
        Mode(ring: 65536, tx: 384, rx: 384, consumes: false, iwarp: false),
    ])
    func randomTrafficBothWaysArrivesInOrder(mode: Mode) throws {
        let pair = EnginePair(ringSize: mode.ring, txQueueSize: mode.tx, rxCredits: mode.rx,
                              wire: FakeWire(consumesOnData: mode.consumes, iwarp: mode.iwarp))
        var rng = SplitMix(seed: UInt64(mode.ring * 31 + mode.rx))
        let total = 1 << 20
        var sent = [0, 0], received = [0, 0]
        var stalls = 0
        while received[0] < total || received[1] < total {
            var moved = false
            for side in 0..<2 {
                let n = min(Int(rng.next() % 9000) + 1, total - sent[side])
                if n > 0 {
                    let chunk = (0..<n).map { UInt8(truncatingIfNeeded: (sent[side] + $0) * 7 + side) }
                    let k = side == 0 ? try pair.a.send(chunk) : try pair.b.send(chunk)
                    sent[side] += k
                    moved = moved || k > 0
                }
                let want = Int(rng.next() % 9000) + 1
                var slice = [UInt8](repeating: 0, count: want)
                let outcome = side == 0 ? try pair.b.receive(into: &slice) : try pair.a.receive(into: &slice)
                if case .bytes(let k) = outcome {
                    for i in 0..<k where slice[i] != UInt8(truncatingIfNeeded: (received[side] + i) * 7 + side) {
                        Issue.record("byte \(received[side] + i) from side \(side) is wrong")
                        return
                    }
                    received[side] += k
                    moved = true
                }
            }
            #expect(pair.a.brokenInvariants().isEmpty && pair.b.brokenInvariants().isEmpty,
                    "\(pair.a.brokenInvariants()) \(pair.b.brokenInvariants())")
            stalls = moved ? 0 : stalls + 1
            try #require(stalls < 100, "no progress: sent \(sent) received \(received)")
        }
        pair.a.shutdown()
        pair.b.shutdown()
        #expect(try pair.a.receiveAll().1 == .endOfStream)
        #expect(try pair.b.receiveAll().1 == .endOfStream)
        // Idle peers settle: a bounded number of words, then silence.
        for _ in 0..<50 { pair.a.progress(); pair.b.progress() }
        #expect(pair.wire.pending[0].isEmpty && pair.wire.pending[1].isEmpty)
        #expect(pair.a.isQuiescent && pair.b.isQuiescent)
    }
}

struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

#endif
