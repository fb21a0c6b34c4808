import Foundation
import RStream
import Testing

/// One side of a full-duplex run: sends `total` bytes of pattern `sendSeed` in random-sized requests
/// (1 B to `maxRequest`) while checking that the peer's `total` bytes of pattern `receiveSeed`
/// arrive whole and in order; then exchanges FINs. Returns a description of the first fault, or nil.
func duplex(_ stream: StreamConnection, total: Int, sendSeed: UInt64, receiveSeed: UInt64, maxRequest: Int = 1 << 20) -> String? {
    let outgoing = PatternStream(seed: sendSeed), incoming = PatternStream(seed: receiveSeed)
    var rng = SystemRandomNumberGenerator()
    var sendBuffer = [UInt8](repeating: 0, count: maxRequest)
    var receiveBuffer = [UInt8](repeating: 0, count: 1 << 20)
    var sent = 0, received = 0
    var request = 0..<0
    var idle = 0
    do {
        while sent < total || received < total {
            var moved = false
            if sent < total {
                if request.isEmpty {
                    let n = min(Int.random(in: 1...maxRequest, using: &rng), total - sent)
                    outgoing.fill(&sendBuffer, count: n, from: UInt64(sent))
                    request = 0..<n
                }
                if case .sent(let n) = try stream.trySend(sendBuffer[request]) {
                    request = request.dropFirst(n)
                    sent += n
                    moved = true
                }
            }
            if received < total {
                switch try stream.tryReceive(into: &receiveBuffer) {
                case .received(let n):
                    if let bad = incoming.firstMismatch(receiveBuffer, count: n, from: UInt64(received)) {
                        return "byte \(received + bad) is wrong"
                    }
                    received += n
                    moved = true
                case .endOfStream: return "end of stream after \(received) of \(total) bytes"
                case .wouldBlock: break
                }
            }
            idle = moved ? 0 : idle + 1
            if idle > 64 { usleep(50) }
        }
        try stream.shutdown()
        try stream.flush(timeout: .seconds(30))
        let tail = try stream.receive(into: &receiveBuffer)
        if tail != 0 { return "\(tail) bytes beyond the end" }
        stream.close()
        return nil
    } catch {
        return "after sending \(sent) and receiving \(received): \(error)"
    }
}

/// Connects a pair over loopback and runs `duplex` on both ends at once.
func runDuplex(options: StreamOptions, total: Int, maxRequest: Int = 1 << 20) throws -> [String] {
    let listener = try StreamListener(host: "127.0.0.1", port: 0, options: options)
    let server = Background { () throws -> String? in
        let stream = try listener.accept(timeout: .seconds(10))
        return duplex(stream, total: total, sendSeed: 2, receiveSeed: 1, maxRequest: maxRequest)
    }
    let client = try StreamConnection.connect(host: "127.0.0.1", port: listener.port, options: options)
    let clientFault = duplex(client, total: total, sendSeed: 1, receiveSeed: 2, maxRequest: maxRequest)
    return [clientFault.map { "client: \($0)" }, try server.value().map { "server: \($0)" }].compactMap { $0 }
}

@Suite(.serialized) struct StressTests {
    static let volume = Int(ProcessInfo.processInfo.environment["RSTREAM_STRESS_MIB"] ?? "256")! << 20

    @Test(arguments: [(4096, false), ((1 << 20) - 1, false), (4096, true), ((1 << 20) - 1, true)])
    func fullDuplexVolumeArrivesExactly(ring: Int, iwarp: Bool) throws {
        let options = loopbackOptions {
            $0.sendRingSize = ring
            $0.receiveRingSize = ring
            $0.iwarp = iwarp
        }
        let faults = try runDuplex(options: options, total: Self.volume)
        #expect(faults.isEmpty, "\(faults)")
    }

    @Test func smallestCreditsAndQueues() throws {
        let options = loopbackOptions {
            $0.sendRingSize = 4096
            $0.receiveRingSize = 4096
            $0.rxCredits = 4
            $0.txQueueSize = 8
        }
        let faults = try runDuplex(options: options, total: 8 << 20, maxRequest: 10_000)
        #expect(faults.isEmpty, "\(faults)")
    }
}
