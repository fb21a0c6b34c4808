import Foundation
import RStream
@_spi(Benchmarks) @testable import RStreamKernel
import CFabricShim
import Testing

@Suite(.serialized) struct NUMATests {
    @Test func ringsArePlacedOnTheDefaultNodeAndOnAChosenOne() throws {
        let node = try #require(NUMAPlacement.nodes.first, "this test needs NUMA support")
        // The same-host segments too: each side binds its inbound ring to the node before the first
        // touch; the send "ring" is the peer's, mapped here.
        // Prefaulted, so every page is there to be asked about.
        for options in [loopbackOptions { $0.prefaultRings = true }, loopbackOptions { $0.numaNode = node; $0.prefaultRings = true },
                        sameHostOptions { $0.prefaultRings = true }, sameHostOptions { $0.numaNode = node; $0.prefaultRings = true }] {
            let (client, server) = try connectedPair(options)
            #expect(client.transport == (options.provider == "shm" ? "shm" : loopbackOptions().provider!))
            for stream in [client, server] {
                #expect(stream.ringNode == node)
                let pages = stream.ringPageNodes
                #expect(!pages.send.isEmpty && !pages.receive.isEmpty)
                #expect(pages.send.allSatisfy { $0 == node } && pages.receive.allSatisfy { $0 == node }, "\(pages)")
                let hot = stream.hotStatePageNodes // counters, locks, event buffer, write ledger
                #expect(!hot.isEmpty && hot.allSatisfy { $0 == node }, "\(hot)")
            }
            client.close()
            server.close()
        }
    }

    /// By default a ring's pages come in when first used: an idle stream holds none of its
    /// receive ring, the pages that bytes reached are resident and on the rings' node, and the
    /// bytes are intact. Prefaulted rings are resident from the start. (Before, every ring page
    /// was touched when the stream was made: 64 KiB resident per idle stream at the defaults.)
    /// Where pages not there yet will go is the mappings' binding to the node, which this checks
    /// directly (on a one-node machine every page is on that node anyway): over shared memory the
    /// sender's mapping of the peer's segment carries the segment's binding too, so the pages the
    /// sender touches first land on the receiver's node.
    @Test(arguments: ["core", "shm"])
    func ringPagesComeInOnFirstUse(transport: String) throws {
        let node = try #require(NUMAPlacement.nodes.first, "this test needs NUMA support")
        func options(_ configure: (inout StreamOptions) -> Void = { _ in }) -> StreamOptions {
            transport == "shm" ? sameHostOptions { $0.numaNode = node; configure(&$0) } : loopbackOptions { $0.numaNode = node; configure(&$0) }
        }
        let ringPages = StreamOptions().receiveRingSize / PageAlignedRegion.pageSize
        let (client, server) = try connectedPair(options())
        for (ring, binding) in [("client send", client.ringBindings.send), ("server receive", server.ringBindings.receive)] {
            let policy = try #require(binding, "\(ring): no policy")
            #expect(policy.mode != 0 && policy.nodes == [node], "\(ring) ring: mode \(policy.mode), nodes \(policy.nodes)")
        }
        // A core that pins what it registers (verbs) faults the rings in at once.
        let pins = client.transport.hasPrefix("verbs")
        if !pins { #expect(server.receiveRingResidentPages == 0, "an idle stream's receive ring is resident") }
        let bytes = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        try client.sendAll(bytes)
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while received.count < bytes.count {
            let n = try server.receive(into: &buffer)
            received += buffer[0..<n]
        }
        #expect(received == bytes)
        let used = server.receiveRingResidentPages
        if !pins { #expect(used >= 3 && used < ringPages, "\(used) of \(ringPages) pages resident after 10,000 bytes") }
        let placed = server.ringPageNodes.receive.filter { $0 >= 0 }
        #expect(placed.count >= 3 && placed.allSatisfy { $0 == node }, "\(placed)")
        client.close(linger: .zero)
        server.close(linger: .zero)

        let (eager, eagerServer) = try connectedPair(options { $0.prefaultRings = true })
        #expect(eagerServer.receiveRingResidentPages == ringPages)
        eager.close(linger: .zero)
        eagerServer.close(linger: .zero)
    }

    @Test func anAbsentNodeIsAClearError() throws {
        let absent = (NUMAPlacement.nodes.max() ?? 0) + 1
        var options = loopbackOptions()
        options.numaNode = absent
        expectError(.invalidOption, containing: "NUMA node \(absent) does not exist") { try options.validate() }
        expectError(.invalidOption, containing: "does not exist") { _ = try StreamListener(host: "127.0.0.1", options: options) }
        expectError(.invalidOption, containing: "NUMA node \(absent) does not exist") { try NUMAPlacement.pinCurrentThread(toNode: absent) }
        expectError(.invalidOption, containing: "CPU 100000 does not exist") { try NUMAPlacement.pinCurrentThread(toCPU: 100_000) }
    }

    @Test func aMachineWithoutNUMASupportIsAClearError() throws {
        NUMAPlacement.simulateNoNUMASupport(true)
        defer { NUMAPlacement.simulateNoNUMASupport(false) }
        var options = loopbackOptions()
        options.numaNode = 0
        expectError(.invalidOption, containing: "no NUMA support") { try options.validate() }
        // Without a node asked for, streams still work, on the default policy.
        let (client, server) = try connectedPair()
        #expect(client.ringNode == nil)
        try client.sendAll([9])
        #expect(try server.receive(maxBytes: 1) == [9])
        client.close()
        server.close()
    }

    @Test func pinningMovesTheCallingThread() throws {
        let cpus = ProcessInfo.processInfo.activeProcessorCount
        let last = cpus - 1
        let seen = Background { () throws -> Int32 in
            try NUMAPlacement.pinCurrentThread(toCPU: last)
            return rs_sched_getcpu()
        }
        #expect(try seen.value() == Int32(last))
    }

    @Test func theCommandNamesAnAbsentNode() throws {
        let (status, text) = try runToCompletion(["listen", "--port", "0", "--numa-node", "64"])
        #expect(status != 0)
        #expect(text.contains("NUMA node 64 does not exist"), "\(text)")
    }
}
