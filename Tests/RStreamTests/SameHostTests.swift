import Foundation
import RStream
import Testing

func sameHostOptions(_ configure: (inout StreamOptions) -> Void = { _ in }) -> StreamOptions {
    var options = StreamOptions()
    options.provider = "shm"
    configure(&options)
    return options
}

/// Streams between two endpoints of this host over shared memory.
@Suite struct SameHostTests {
    /// Sends of 10,000 bytes, and of 40,001 (bulk: copied with non-temporal stores, starting at
    /// odd offsets of the ring), arrive byte for byte.
    @Test(arguments: [10_000, 40_001])
    func aStreamOverSharedMemoryCarriesBytesBothWaysAndEnds(chunkSize: Int) throws {
        let (client, server) = try connectedPair(sameHostOptions())
        #expect(client.transport == "shm")
        #expect(server.transport == "shm")
        let pattern = PatternStream(seed: 7)
        let total = 1 << 20
        let sender = Background { () throws -> Void in
            var sent = 0
            var chunk = [UInt8](repeating: 0, count: chunkSize)
            while sent < total {
                let n = min(chunk.count, total - sent)
                pattern.fill(&chunk, count: n, from: UInt64(sent))
                try client.sendAll(chunk[0..<n])
                sent += n
            }
            try client.shutdown()
        }
        var received = 0
        var buffer = [UInt8](repeating: 0, count: 7_000)
        while true {
            let n = try server.receive(into: &buffer)
            if n == 0 { break }
            #expect(pattern.firstMismatch(buffer, count: n, from: UInt64(received)) == nil)
            received += n
        }
        try sender.value()
        #expect(received == total)
        try server.sendAll(Array("bye".utf8))
        try server.shutdown()
        #expect(try client.receive(maxBytes: 10) == Array("bye".utf8))
        #expect(try client.receive(maxBytes: 10).isEmpty)
        client.close()
        server.close()
    }

    /// A local address reaches a listener over shared memory without being told; naming a core
    /// keeps the fabric.
    @Test func aLocalAddressPicksSharedMemoryUnlessACoreIsNamed() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: loopbackOptions())
        #expect(listener.servesSameHost)
        for (options, expected) in [(StreamOptions(), "shm"), (loopbackOptions(), loopbackOptions().provider!)] {
            let accepted = Background { try listener.accept(timeout: .seconds(10)) }
            let client = try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: options)
            let server = try accepted.value()
            #expect(client.transport == expected)
            #expect(server.transport == expected)
            try client.sendAll([1, 2, 3])
            #expect(try server.receive(maxBytes: 3) == [1, 2, 3])
            client.close(linger: .zero)
            server.close(linger: .zero)
        }
    }

    @Test func sharedMemoryOnlyRefusesWhatItCannotReach() throws {
        #expect { _ = try StreamConnection.connect(host: "127.0.0.1", port: 1, options: sameHostOptions()) } throws: {
            ($0 as? RStreamError)?.kind == .connectionRefused
        }
        #expect { _ = try StreamConnection.connect(host: "192.0.2.1", port: 1, options: sameHostOptions()) } throws: {
            ($0 as? RStreamError)?.kind == .invalidOption
        }
    }
}
