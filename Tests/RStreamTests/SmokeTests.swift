import Foundation
import RStream
import Testing

@Suite struct SmokeTests {
    @Test func greetingBothWays() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: loopbackOptions())
        #expect(listener.port != 0)
        let port = listener.port
        let server = Background { () throws -> [UInt8] in
            let stream = try listener.accept(timeout: .seconds(10))
            let got = try stream.receive(maxBytes: 100)
            try stream.sendAll(Array("world".utf8))
            try stream.shutdown()
            var rest = [UInt8](repeating: 0, count: 16)
            #expect(try stream.receive(into: &rest) == 0)
            stream.close()
            return got
        }
        let client = try StreamConnection.connect(host: "127.0.0.1", port: port, options: loopbackOptions())
        try client.sendAll(Array("hello".utf8))
        var reply: [UInt8] = []
        while true {
            let chunk = try client.receive(maxBytes: 100)
            if chunk.isEmpty { break }
            reply += chunk
        }
        try client.shutdown()
        try client.flush(timeout: .seconds(10))
        client.close()
        #expect(String(decoding: reply, as: UTF8.self) == "world")
        #expect(String(decoding: try server.value(), as: UTF8.self) == "hello")
    }
}

@Suite struct ZeroCopyAndDiscoveryTests {
    /// The scoped zero-copy calls write straight into the registered send ring and read straight
    /// from the receive ring; a stream carried that way arrives exactly.
    @Test func zeroCopySendAndReceiveCarryAStream() throws {
        let (client, server) = try connectedPair(loopbackOptions { $0.sendRingSize = 4096; $0.receiveRingSize = 4096 })
        let total = 1 << 20
        let pattern = PatternStream(seed: 11)
        var sent = 0, received = 0
        var chunk = [UInt8](repeating: 0, count: 4096)
        while received < total {
            if sent < total, case .sent(let n) = try client.withSendBuffer({ buffer in
                let n = min(buffer.count, total - sent, 1000)
                pattern.fill(&chunk, count: n, from: UInt64(sent))
                buffer.copyBytes(from: chunk[0..<n])
                return n
            }) {
                #expect(n > 0)
                sent += n
            }
            if case .received(let n) = try server.withReceivedBytes({ bytes in
                let take = min(bytes.count, 777) // consume less than offered: the rest stays in the ring
                let copy = Array(bytes[0..<take])
                if let bad = pattern.firstMismatch(copy, count: take, from: UInt64(received)) {
                    Issue.record("byte \(received + bad) wrong")
                }
                return take
            }) {
                received += n
            }
        }
        #expect(received == total)
        try client.shutdown()
        #expect(try server.receive(maxBytes: 1).isEmpty)
        client.close()
        server.close()
    }

    @Test func discoveryListsTheTcpCore() throws {
        let cores = CoreProvider.available()
        let tcp = try #require(cores.first { $0.name == "tcp" })
        #expect(tcp.cqDataSize >= 4 && tcp.maxTxQueueSize > 0 && tcp.maxRxQueueSize > 0)
        #expect(!tcp.writeConsumesReceive && !tcp.virtualAddressing) // what tcp answers: offsets, no FI_RX_CQ_DATA
        let info = rstream(["info"])
        let output = Pipe()
        info.standardOutput = output
        try info.run()
        let table = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        info.waitUntilExit()
        #expect(info.terminationStatus == 0)
        #expect(table.hasPrefix("provider") && table.contains("tcp") && table.contains("offset"), "\(table)")
    }
}
