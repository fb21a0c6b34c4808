import CLibfabric
import Foundation
@testable import RStream
@testable import RStreamKernel
import Synchronization
import Testing

/// Failure paths through the public API: each ends in a clear error, in bounded time, and leaves
/// the library usable.
@Suite(.serialized) struct FailurePathTests {
    // An allocation that fails (a full NUMA node) is an error, not the end of the host program;
    // before, `PageAlignedRegion` called fatalError. (Fault injection exists in debug builds only.)
    #if DEBUG
    @Test func anAllocationFailureIsAnErrorAndTheLibraryGoesOn() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: loopbackOptions())
        let accepted = Background { try listener.accept(timeout: .seconds(10)) }
        FaultInjection.failNext(.allocation, code: ENOMEM)
        expectError(.outOfMemory) {
            _ = try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: loopbackOptions(), timeout: .seconds(5))
        }
        #expect(!FaultInjection.isArmed)
        // The listener saw nothing of the failed attempt (no endpoint was offered): a real one works.
        let client = try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: loopbackOptions())
        let server = try accepted.value()
        try client.sendAll([1, 2, 3])
        #expect(try server.receive(maxBytes: 3) == [1, 2, 3])
        client.close()
        server.close()
    }
    #endif

    // The event queue keys endpoints by a token of its own. Before, it keyed them by fid address and
    // forgot the key after `fi_close`: an endpoint accepted meanwhile at the reused address lost
    // its FI_CONNECTED, and its accept waited for ever.
    @Test func aLateForgetOfAClosedEndpointLeavesTheNextOneAtItsAddressAlone() throws {
        let listener = try PassiveListener(host: "127.0.0.1", port: 0, backlog: 4, requirements: loopbackOptions().requirements)
        let queue = listener.eventQueue
        let fake = UnsafeMutablePointer<fid>.allocate(capacity: 1)
        defer { fake.deallocate() }
        let old = EndpointToken.make(), new = EndpointToken.make()
        queue.register(fake, as: old, waitSet: nil)
        queue.forget(fake, token: old)
        queue.register(fake, as: new, waitSet: nil) // the next endpoint, at the same address
        queue.forget(fake, token: old)              // a late forget of the first
        #expect(queue.registeredEndpoints == 1)
        queue.forget(fake, token: new)
        #expect(queue.registeredEndpoints == 0)
    }

    /// Accepts racing closes of earlier streams on other threads, so fid addresses are reused
    /// while forgets run: every accept completes.
    @Test func acceptsRacingClosesAllComplete() throws {
        let rounds = Int(ProcessInfo.processInfo.environment["RSTREAM_CHURN"] ?? "5000")! / 5
        let options = loopbackOptions()
        let listener = try StreamListener(host: "127.0.0.1", port: 0, backlog: 64, options: options)
        let toClose = Locked<[StreamConnection]>([])
        let done = Atomic<Bool>(false)
        let closers = (0..<2).map { _ in
            Background { () -> Void in
                while !done.load(ordering: .acquiring) || !toClose.withLock({ $0.isEmpty }) {
                    if let stream = toClose.withLock({ $0.popLast() }) { stream.close(linger: .zero) } else { sched_yield() }
                }
            }
        }
        let acceptor = Background { () throws -> Int in
            for _ in 0..<rounds {
                let stream = try listener.accept(timeout: .seconds(10))
                toClose.withLock { $0.append(stream) }
            }
            return rounds
        }
        for _ in 0..<rounds {
            let client = try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: options)
            toClose.withLock { $0.append(client) }
        }
        #expect(try acceptor.value() == rounds)
        done.store(true, ordering: .releasing)
        for closer in closers { try closer.value() }
    }

    // Protocol v4: a peer that stops calling sends no heartbeat; the other side fails with
    // `.timedOut` after the peer timeout, having handed out every byte that arrived.
    @Test func aPeerThatStopsCallingTimesOutAfterItsBytes() throws {
        let (client, server) = try connectedPair(loopbackOptions { $0.peerTimeout = .seconds(3) })
        try client.sendAll([9, 8, 7])
        let start = ContinuousClock.now
        var got: [UInt8] = []
        let error = #expect(throws: RStreamError.self) {
            while true { got += try server.receive(maxBytes: 16) }
        }
        #expect(got == [9, 8, 7])
        #expect(error?.kind == .timedOut, "\(String(describing: error))")
        let waited = ContinuousClock.now - start
        #expect(waited >= .seconds(3) && waited < .seconds(8), "\(waited)")
        client.close(linger: .zero)
        server.close(linger: .zero)
    }

    // Both sides asleep in the library's own waits still send heartbeats, so an idle stream lives
    // past the peer timeout, and carries bytes afterwards.
    @Test func twoSidesWaitingIdlePastThePeerTimeoutStayConnected() throws {
        let (client, server) = try connectedPair(loopbackOptions { $0.peerTimeout = .seconds(3) })
        let clientWait = Background { try client.wait(for: .readable, timeout: .seconds(5)) }
        let serverReady = try server.wait(for: .readable, timeout: .seconds(5))
        #expect(try clientWait.value() == false && serverReady == false)
        try client.sendAll([1])
        #expect(try server.receive(maxBytes: 1) == [1])
        client.close()
        server.close()
    }

    // Found by the soak: a side that sent everything, shut down and closed at once reset the
    // connection under a peer still reading (its CONTROL words met a closed socket) and the
    // peer lost the tail. close() now lingers until the peer has consumed every byte.
    @Test func aCloseRightAfterTheLastSendLosesNoTailOfASlowReader() throws {
        for round in 0..<3 {
            let (client, server) = try connectedPair(loopbackOptions { $0.receiveRingSize = 65536 })
            var pattern = [UInt8](repeating: 0, count: 4 << 20)
            PatternStream(seed: UInt64(round)).fill(&pattern, count: pattern.count, from: 0)
            let bytes = pattern
            let sender = Background { () throws -> Void in
                try server.sendAll(bytes)
                server.close() // default linger
            }
            var got: [UInt8] = []
            got.reserveCapacity(bytes.count)
            while true {
                let chunk = try client.receive(maxBytes: 65536)
                if chunk.isEmpty { break }
                got += chunk
                if got.count % (1 << 20) < 65536 { usleep(10_000) } // a reader that pauses (well under the 250 ms quiet period)
            }
            try sender.value()
            #expect(got.count == bytes.count && got == bytes, "round \(round): \(got.count) of \(bytes.count)")
            client.close()
        }
    }

    @Test(arguments: [Duration.seconds(2), .zero, .seconds(86_401)])
    func aPeerTimeoutOutOfRangeIsNamed(timeout: Duration) {
        var options = loopbackOptions()
        options.peerTimeout = timeout
        expectError(.invalidOption, containing: "peer timeout") { try options.validate() }
    }
}
