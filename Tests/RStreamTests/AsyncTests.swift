import Foundation
import RStream
import Testing

@Suite struct AsyncTests {
    @Test func asyncSendAndChunksCarryAStream() async throws {
        let (client, server) = try connectedPair()
        let total = 4 << 20
        let sender = Task {
            var bytes = [UInt8](repeating: 0, count: total)
            PatternStream(seed: 3).fill(&bytes, count: total, from: 0)
            try await client.sendAll(bytes)
            try client.shutdown()
        }
        var received = 0
        for try await chunk in server.chunks() {
            #expect(PatternStream(seed: 3).firstMismatch(chunk, count: chunk.count, from: UInt64(received)) == nil)
            received += chunk.count
        }
        try await sender.value
        #expect(received == total)
        client.close()
        server.close()
    }

    @Test func cancellingAWaitingReceiveLosesNoByte() async throws {
        let (client, server) = try connectedPair()
        let waiting = Task { try await server.receive(maxBytes: 100) }
        try await Task.sleep(for: .milliseconds(50))
        waiting.cancel()
        let outcome = await waiting.result
        #expect(throws: CancellationError.self) { try outcome.get() }
        // The stream is still usable, and the bytes sent after the cancel all arrive.
        try await client.sendAll(Array("after the cancel".utf8))
        try client.shutdown()
        var got: [UInt8] = []
        for try await chunk in server.chunks() { got += chunk }
        #expect(String(decoding: got, as: UTF8.self) == "after the cancel")
        client.close()
        server.close()
    }
}
