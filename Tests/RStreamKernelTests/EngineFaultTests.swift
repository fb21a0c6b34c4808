import Testing
#if canImport(Glibc)
import Glibc
#endif
@_spi(Benchmarks) @testable import RStreamKernel
import RStreamFakeWire

// Swift 6.3.1 crashes (LLVM "Invalid bitcast") compiling the fake wire with -sanitize=thread;
// these single-threaded tests gain nothing from ThreadSanitizer, so its build leaves them out.
#if !RSTREAM_TSAN
/// The engine over a fake wire that reports a full queue or throws at chosen operations: every
/// retry, undo and throw, with no byte lost or duplicated and the caller told what happened.
@Suite struct EngineFaultTests {
    static func bytes(_ n: Int, from start: Int = 0) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: ($0 + start) * 13 + 1) } }

    /// DATA words side `side` posted, as lengths.
    static func dataLengths(_ wire: FakeWire, side: Int) -> [Int] {
        wire.posted[side].filter { $0 & 0x8000_0000 != 0 }.map { Int($0 & 0x7FFF_FFFF) }
    }

    // Before the fix a staged write waited for the next send: a sender that stopped after it
    // held its peer up for ever.
    @Test func aWriteThatFoundTheQueueFullIsPostedByProgressAlone() throws {
        let pair = EnginePair()
        pair.wire.fail(0, .write, with: .queueFull, times: 20) // the queue stays full for a while
        #expect(try pair.a.send(Self.bytes(50)) == 50) // accepted: accounted and staged
        #expect(try pair.b.receiveAll().1 == .wouldBlock)
        pair.wire.faults.removeAll()
        pair.a.progress()
        #expect(try pair.b.receiveAll().0 == Self.bytes(50))
        #expect(Self.dataLengths(pair.wire, side: 0) == [50])
    }

    // iWarp posts a write's bytes, then its DATA word. A word that found the queue full is posted
    // once, later, by progress alone, and no data write overtakes it. (The two-thread race that
    // once posted it twice is the subject of the iWarp pipe and the 4+4-thread iWarp test.)
    @Test func anIwarpDataWordThatFoundTheQueueFullIsPostedOnce() throws {
        let pair = EnginePair(ringSize: 8192, wire: FakeWire(iwarp: true))
        pair.wire.fail(0, .dataWord, with: .queueFull, times: 20) // the queue stays full for a while
        #expect(try pair.a.send(Self.bytes(100)) == 100)
        #expect(try pair.a.send(Self.bytes(10)) == 0) // the word still waits: nothing overtakes it
        #expect(try pair.b.receiveAll().1 == .wouldBlock)
        pair.wire.faults.removeAll() // room again
        pair.a.progress()
        #expect(try pair.b.receiveAll().0 == Self.bytes(100))
        #expect(try pair.a.send(Self.bytes(10, from: 100)) == 10)
        #expect(try pair.b.receiveAll().0 == Self.bytes(10, from: 100))
        #expect(Self.dataLengths(pair.wire, side: 0) == [100, 10])
        pair.a.progress()
        #expect(pair.a.failure == nil && pair.a.isQuiescent)
    }

    // A whole record spans up to three writes (the rings wrap); a write staged on the way must not
    // split it, and the rest follows in order.
    @Test(arguments: [FakeFault.queueFull, .pass])
    func aWholeRecordIsTakenEvenWhenOneOfItsWritesIsStaged(second: FakeFault) throws {
        let pair = EnginePair(ringSize: 4096)
        #expect(try pair.a.send(Self.bytes(3500)) == 3500)
        #expect(try pair.b.receiveAll().0.count == 3500)
        pair.a.progress()
        pair.wire.fail(0, .write, with: .pass)
        pair.wire.fail(0, .write, with: second)
        let record = Self.bytes(1000, from: 7)
        #expect(try pair.a.sendWhole(record.withUnsafeBytes { UnsafeRawBufferPointer($0) }) == 1000)
        pair.a.progress()
        var got: [UInt8] = []
        while got.count < 1000, case let (bytes, .bytes) = try pair.b.receiveAll() { got += bytes }
        #expect(got == record)
        #expect(Self.dataLengths(pair.wire, side: 0).suffix(2) == [596, 404])
    }

    @Test func aControlWordThatFoundTheQueueFullIsUndoneAndSentLater() throws {
        let pair = EnginePair(ringSize: 4096)
        #expect(try pair.a.send(Self.bytes(4096)) == 4096)
        #expect(pair.a.writableCount == 0)
        pair.wire.fail(1, .controlWord, with: .queueFull, times: 20)
        #expect(try pair.b.receiveAll().0.count == 4096) // owes a CONTROL, whose post finds the queue full
        #expect(pair.wire.posted[1].isEmpty)
        pair.a.progress()
        #expect(pair.a.writableCount == 0)
        pair.wire.faults.removeAll()
        pair.b.progress() // the request stood: now it goes, reporting everything freed, once
        // (bit 29, BEAT, masked: a stall of a second on a loaded machine makes this word a heartbeat too)
        #expect(pair.wire.posted[1].map { $0 & ~(1 << 29) } == [NotificationWord.control(freed: 4096, credits: 0, fin: false).encoded])
        pair.a.progress()
        #expect(pair.a.writableCount == 4096)
    }

    static let thrown = RStreamError(.fabric, code: 5, "injected")

    @Test(arguments: [FakeOperation.write, .controlWord, .poll])
    func aThrowEndsTheStreamWithItsErrorAfterTheBytesThatArrived(operation: FakeOperation) throws {
        let pair = EnginePair(ringSize: 4096)
        #expect(try pair.a.send(Self.bytes(3000)) == 3000)
        #expect(try pair.b.receiveAll(max: 1000).0 == Self.bytes(1000))
        // The next operation of that kind on the receiving side's peer, or on the receiver, throws.
        let side = operation == .write ? 0 : 1
        pair.wire.fail(side, operation, with: .error(Self.thrown))
        let victim = side == 0 ? pair.a : pair.b
        switch operation {
        case .write: _ = try? pair.a.send(Self.bytes(10))
        case .controlWord: _ = try pair.b.receiveAll(max: 2000) // frees half the ring: a CONTROL is due
        default: victim.progress()
        }
        #expect(victim.failure == Self.thrown)
        // Bytes that arrived before the failure are handed out exactly once, then the error.
        switch operation {
        case .write:
            #expect { _ = try pair.a.send(Self.bytes(1)) } throws: { ($0 as? RStreamError) == Self.thrown }
            #expect(try pair.b.receiveAll().0 == Array(Self.bytes(3000)[1000...]))
        case .controlWord: // the receive that owed the word took bytes 1000..<3000 first
            #expect { _ = try pair.b.receiveAll() } throws: { ($0 as? RStreamError) == Self.thrown }
        default: // the poll failed before the receiver took the rest: the rest is still handed out
            #expect(try pair.b.receiveAll().0 == Array(Self.bytes(3000)[1000...]))
            #expect { _ = try pair.b.receiveAll() } throws: { ($0 as? RStreamError) == Self.thrown }
        }
    }

    // A core that reports completions nobody posted fails the stream; it does not stop the program.
    @Test func aCompletionBeyondThosePostedFailsTheStream() throws {
        let pair = EnginePair()
        pair.wire.inject(to: 0, .transmitted(writeSlot: nil))
        pair.a.progress()
        #expect(pair.a.failure?.kind == .fabric)
        #expect(pair.a.failure?.context.contains("more transmit completions than operations posted") == true)
    }

    @Test func aCompletionForAWriteSlotWithNothingInFlightFailsTheStream() throws {
        let pair = EnginePair()
        pair.wire.holdCompletions = true
        #expect(try pair.a.send([1, 2, 3]) == 3) // one write in flight, in slot 0
        pair.wire.inject(to: 0, .transmitted(writeSlot: 3))
        pair.a.progress()
        #expect(pair.a.failure?.kind == .fabric)
        #expect(pair.a.failure?.context.contains("write slot 3") == true, "\(String(describing: pair.a.failure))")
    }

    // Review finding: a stream whose peer sent FIN and left was failed with `.timedOut` by a reader
    // slower than the peer timeout, instead of ending.
    @Test func aStreamThePeerFinishedAndLeftEndsInsteadOfTimingOut() throws {
        let pair = EnginePair(peerTimeout: .seconds(3))
        #expect(try pair.a.send([1, 2, 3]) == 3)
        pair.a.shutdown()
        pair.b.progress()
        pair.b.peerDidDisconnect() // the peer closed after its FIN
        let start = ContinuousClock.now
        while ContinuousClock.now - start < .milliseconds(3600) {
            pair.b.progress()
            usleep(100_000)
        }
        #expect(pair.b.failure == nil)
        #expect(try pair.b.receiveAll().0 == [1, 2, 3])
        #expect(try pair.b.receiveAll().1 == .endOfStream)
    }

    // Issue 11's C server over 1,000 connections: the peer sent its FIN and closed, a CONTROL
    // word of ours then failed (tcp: ENOTCONN), and a reader that had every byte got a reset
    // instead of the end. Now the bytes and the end are read; the send side reports the
    // failure with its code (a send, a flush), and so does the close (nothing is claimed
    // delivered).
    @Test func aWordThatFailsAfterThePeersFinLeavesTheEndToRead() throws {
        let pair = EnginePair()
        #expect(try pair.a.send([1, 2, 3]) == 3)
        pair.a.shutdown()
        pair.b.progress()
        pair.wire.inject(to: 1, .failed(code: 107, transmit: true))
        pair.b.progress()
        #expect(pair.b.failure?.code == 107)
        #expect(try pair.b.receiveAll().0 == [1, 2, 3])
        #expect(try pair.b.receiveAll().1 == .endOfStream)
        #expect(throws: RStreamError.self) { try pair.b.send([4]) }
        #expect(throws: RStreamError.self) { try pair.b.progressAndCheckFlushed() }
        #expect(!pair.b.hasDeliveredEverything)
    }

    // Before the FIN, a failure is reported to the reader once the bytes before it are read.
    @Test func aWriteThatFailsBeforeThePeersFinIsReportedAfterTheBytes() throws {
        let pair = EnginePair()
        #expect(try pair.a.send([1, 2]) == 2)
        pair.b.progress()
        pair.wire.inject(to: 1, .failed(code: 107, transmit: true))
        pair.b.progress()
        #expect(pair.b.failure?.kind == .connectionReset)
        #expect(try pair.b.receiveAll().0 == [1, 2])
        #expect(throws: RStreamError.self) { try pair.b.receiveAll() }
    }

    // Before the fix, a record longer than the tail that the FIN left would block for ever.
    @Test func receivingExactlyReportsTheEndWhenOnlyAShorterTailIsLeft() throws {
        let pair = EnginePair()
        #expect(try pair.a.send(Self.bytes(5)) == 5)
        pair.a.shutdown()
        var record = [UInt8](repeating: 0, count: 8)
        #expect(try pair.b.receive(exactlyInto: &record) == .endOfStream)
        #expect(pair.b.readableCount == 5)
        #expect(try pair.b.receiveAll().0 == Self.bytes(5))
        #expect(try pair.b.receive(exactlyInto: &record) == .endOfStream)
    }

    @Test func receivingExactlyStillWaitsWhileTheRecordCanCome() throws {
        let pair = EnginePair()
        #expect(try pair.a.send(Self.bytes(5)) == 5)
        var record = [UInt8](repeating: 0, count: 8)
        #expect(try pair.b.receive(exactlyInto: &record) == .wouldBlock)
        #expect(try pair.a.send(Self.bytes(3, from: 5)) == 3)
        #expect(try pair.b.receive(exactlyInto: &record) == .bytes(8))
        #expect(record == Self.bytes(8))
    }
}

/// Protocol v4's liveness, judged on given instants (checked every half second, as a library
/// wait does).
@Suite struct LivenessTests {
    let start = Duration.seconds(1000)

    /// Checks every 500 ms from `from` to `to`, as a driven stream; true if any look found the
    /// peer gone.
    static func drive(_ liveness: inout Liveness, from: Duration, to: Duration, heard: Bool = false, posted: Int = 0) -> Bool {
        var t = from, silent = false
        while t <= to {
            if case .peerSilent = liveness.check(heard: heard, posted: posted, finished: false, now: t) { silent = true }
            t += .milliseconds(500)
        }
        return silent
    }

    @Test func aHeartbeatIsDueAfterASecondWithoutAPost() {
        var liveness = Liveness(peerTimeout: .seconds(5), now: start)
        #expect(liveness.check(heard: false, posted: 0, finished: false, now: start + .milliseconds(999)) == .quiet)
        #expect(liveness.check(heard: false, posted: 0, finished: false, now: start + .seconds(1)) == .beatDue)
        #expect(liveness.check(heard: true, posted: 1, finished: false, now: start + .milliseconds(1500)) == .quiet)
        #expect(liveness.check(heard: false, posted: 1, finished: false, now: start + .milliseconds(2400)) == .quiet)
        #expect(liveness.check(heard: false, posted: 1, finished: false, now: start + .milliseconds(2500)) == .beatDue)
    }

    @Test func aPeerSilentForTheTimeoutWhileThisSideIsDrivenIsGone() {
        var liveness = Liveness(peerTimeout: .seconds(5), now: start)
        #expect(!Self.drive(&liveness, from: start, to: start + .seconds(2), heard: true, posted: 1))
        var posted = 1
        for t in stride(from: 2500, through: 6500, by: 500) {
            posted += 1 // this side goes on posting (heartbeats): only the peer is silent
            #expect(liveness.check(heard: false, posted: posted, finished: false, now: start + .milliseconds(t)) == .quiet)
        }
        #expect(liveness.check(heard: false, posted: posted + 1, finished: false, now: start + .seconds(7)) == .peerSilent(.seconds(5)))
    }

    // Review finding: a side that was not driven for 40 s took that for the peer's silence and
    // failed a healthy stream the moment it was used again.
    @Test func timeThisSideWasNotDrivenIsNotThePeersSilence() {
        var liveness = Liveness(peerTimeout: .seconds(5), now: start)
        #expect(liveness.check(heard: false, posted: 0, finished: false, now: start + .seconds(40)) == .beatDue)
        #expect(!Self.drive(&liveness, from: start + .milliseconds(40_500), to: start + .milliseconds(44_500), posted: 1))
        #expect(liveness.check(heard: false, posted: 1, finished: false, now: start + .seconds(45)) == .peerSilent(.seconds(5)))
    }

    @Test func noTimeoutMeansNever() {
        var liveness = Liveness(peerTimeout: nil, now: start)
        #expect(!Self.drive(&liveness, from: start, to: start + .seconds(100)))
        #expect(liveness.check(heard: false, posted: 0, finished: false, now: start + .seconds(101)) == .beatDue)
    }

    @Test func nothingOwedOweNothing() {
        var liveness = Liveness(peerTimeout: .seconds(5), now: start)
        var t = start
        while t < start + .seconds(60) {
            #expect(liveness.check(heard: false, posted: 0, finished: true, now: t) == .quiet)
            t += .milliseconds(500)
        }
    }
}

/// The engine keeps protocol v4's liveness duty on its own clock (these wait real seconds).
@Suite struct EngineLivenessTests {
    @Test func aDrivenIdleStreamSendsOneHeartbeatASecondAndTheWordsSettle() throws {
        let pair = EnginePair(peerTimeout: .seconds(3))
        let start = ContinuousClock.now
        while ContinuousClock.now - start < .milliseconds(3500) {
            pair.a.progress()
            pair.b.progress()
            usleep(20_000)
        }
        let beats = pair.wire.posted.map { $0.filter { $0 & (1 << 29) != 0 && $0 & 0x8000_0000 == 0 }.count }
        // Three due in 3.5 s; one fewer if the machine stalls past a beat; never more than one a second.
        #expect(beats.allSatisfy { (2...3).contains($0) }, "\(beats)")
        #expect(pair.wire.posted.allSatisfy { (2...3).contains($0.count) }, "at most one word a second each way: \(pair.wire.posted)")
        #expect(pair.a.failure == nil && pair.b.failure == nil)
    }

    @Test func aSilentPeerTimesOutAfterTheBytesThatArrived() throws {
        let pair = EnginePair(peerTimeout: .seconds(3))
        #expect(try pair.a.send([1, 2, 3]) == 3)
        let start = ContinuousClock.now
        while pair.b.failure == nil && ContinuousClock.now - start < .seconds(6) {
            pair.b.progress() // a is never driven again: it sends no heartbeat
            usleep(50_000)
        }
        #expect(ContinuousClock.now - start >= .seconds(3))
        #expect(pair.b.failure?.kind == .timedOut)
        #expect(pair.b.fake.disconnected)
        #expect(try pair.b.receiveAll().0 == [1, 2, 3])
        #expect { _ = try pair.b.receiveAll() } throws: { ($0 as? RStreamError)?.kind == .timedOut }
    }
}
#endif
