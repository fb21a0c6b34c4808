import Foundation
import RStream
import Testing

@Suite(.serialized) struct ScaleTests {
    @Test func patternCheckCatchesAFlippedByte() {
        let pattern = PatternStream(seed: 9)
        var buffer = [UInt8](repeating: 0, count: 1000)
        pattern.fill(&buffer, count: 1000, from: 13)
        #expect(pattern.firstMismatch(buffer, count: 1000, from: 13) == nil)
        buffer[517] ^= 1
        #expect(pattern.firstMismatch(buffer, count: 1000, from: 13) == 517)
        #expect(pattern.firstMismatch(buffer, count: 1000, from: 14) == 0)
    }

    /// 64 streams live at once on one listener (one event queue), each with its own checksummed stream.
    @Test func sixtyFourConnectionsAtOnce() throws {
        let count = 64, perStream = 1 << 20
        let options = loopbackOptions { $0.sendRingSize = 8192; $0.receiveRingSize = 8192; $0.rxCredits = 16; $0.txQueueSize = 16 }
        let listener = try StreamListener(host: "127.0.0.1", port: 0, backlog: count, options: options)
        let server = Background { () throws -> [String] in
            var streams: [StreamConnection] = []
            for _ in 0..<count { streams.append(try listener.accept(timeout: .seconds(30))) }
            // Each stream announces its index in its first 8 bytes, then carries that index's pattern.
            var received = [Int](repeating: 0, count: count)
            var index = [Int?](repeating: nil, count: count)
            var done = 0
            var faults: [String] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            while done < count {
                for (i, stream) in streams.enumerated() where received[i] >= 0 {
                    switch try stream.tryReceive(into: &buffer) {
                    case .received(let n):
                        var start = 0
                        if index[i] == nil {
                            precondition(n >= 8 || received[i] > 0, "short header")
                            index[i] = Int(buffer.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
                            start = 8
                        }
                        let pattern = PatternStream(seed: UInt64(index[i]! + 100))
                        let body = Array(buffer[start..<n])
                        if let bad = pattern.firstMismatch(body, count: body.count, from: UInt64(received[i])) {
                            faults.append("stream \(index[i]!): byte \(received[i] + bad) wrong")
                        }
                        received[i] += body.count
                    case .endOfStream:
                        if received[i] != perStream { faults.append("stream \(index[i] ?? -1): \(received[i]) bytes") }
                        received[i] = -1
                        stream.close()
                        done += 1
                    case .wouldBlock: break
                    }
                }
            }
            return faults
        }
        var clients: [StreamConnection] = []
        for i in 0..<count {
            let client = try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: options)
            var header = [UInt8](repeating: 0, count: 8)
            header.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(i), as: UInt64.self) }
            try client.sendAll(header)
            clients.append(client)
        }
        var offsets = [Int](repeating: 0, count: count)
        var chunk = [UInt8](repeating: 0, count: 16384)
        while offsets.contains(where: { $0 < perStream }) {
            for i in 0..<count where offsets[i] < perStream {
                let n = min(chunk.count, perStream - offsets[i])
                PatternStream(seed: UInt64(i + 100)).fill(&chunk, count: n, from: UInt64(offsets[i]))
                if case .sent(let k) = try clients[i].trySend(chunk[0..<n]) { offsets[i] += k }
            }
        }
        for client in clients { try client.shutdown() }
        for client in clients { try client.flush(timeout: .seconds(30)) }
        let faults = try server.value()
        #expect(faults.isEmpty, "\(faults)")
        for client in clients { client.close() }
    }

    static func openDescriptors() -> Set<String> {
        Set((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [])
    }

    static func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return -1 }
        return Int(text.split(separator: " ")[1])! * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// Endpoints opened (connected, accepted) and closed many times leave memory and descriptors
    /// where they were.
    @Test func tenThousandEndpointsOpenedAndClosed() throws {
        let rounds = Int(ProcessInfo.processInfo.environment["RSTREAM_CHURN"] ?? "5000")!
        let options = loopbackOptions()
        let listener = try StreamListener(host: "127.0.0.1", port: 0, backlog: 64, options: options)
        func cycle() throws {
            let server = Background { () throws -> Void in
                let stream = try listener.accept(timeout: .seconds(10))
                _ = try stream.receive(maxBytes: 8)
                stream.close()
            }
            let client = try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: options)
            try client.sendAll([1])
            try server.value()
            client.close()
        }
        for _ in 0..<200 { try cycle() } // warm the allocator and the core's caches
        let fds = Self.openDescriptors(), rss = Self.residentBytes()
        for _ in 0..<rounds { try cycle() }  // each cycle opens and closes two endpoints
        let fdsAfter = Self.openDescriptors(), rssAfter = Self.residentBytes()
        // Another test's handles that Foundation closes late may go meanwhile; a leak can only add.
        #expect(fdsAfter.subtracting(fds).isEmpty && fdsAfter.count <= fds.count,
                "descriptors \(fds.count) -> \(fdsAfter.count), new: \(fdsAfter.subtracting(fds).sorted())")
        // A leaked pair of 32 KiB rings per endpoint would be 640 MB here; allow allocator noise.
        #expect(rssAfter - rss < 16 << 20, "resident \(rss >> 20) MiB -> \(rssAfter >> 20) MiB")
    }
}
