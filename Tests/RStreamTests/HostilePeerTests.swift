import Foundation
import RStream
@_spi(Benchmarks) @testable import RStreamKernel
import Testing

/// A test plays a raw peer: its own `tcp` core endpoint, offering whatever connection block and
/// words it likes to a real listener.
@Suite(.serialized) struct HostilePeerTests {
    static let shape = EndpointShape(sendRingSize: 4096, receiveRingSize: 4096, txQueueSize: 64, rxCredits: 64, iwarp: false)
    static let requirements = CoreRequirements(provider: "tcp", iwarp: false)

    static func block(_ change: (inout [UInt8]) -> Void) -> [UInt8] {
        var bytes = ConnectionBlock(baseAddress: 0, key: 1, ringSize: 4096, rxCredits: 64, iwarp: false).encoded
        change(&bytes)
        return bytes
    }

    static let badBlocks: [(String, [UInt8], String)] = [
        ("short", Array(block { _ in }.prefix(16)), "is 16 bytes"),
        ("version 2", block { $0[22] = 2 }, "version 2"),
        ("unknown flags", block { $0[23] = 0x40 }, "unknown flags"),
        ("iWarp asked", block { $0[23] = 0x01 }, "asks for iWarp mode"),
        ("ring 0", block { $0[16] = 0; $0[17] = 0; $0[18] = 0; $0[19] = 0 }, "ring size 0 "),
        ("ring 2^20", block { $0[16] = 0; $0[17] = 0x10; $0[18] = 0; $0[19] = 0 }, "ring size 1048576"),
        ("2 credits", block { $0[20] = 0; $0[21] = 2 }, "rx credits 2 "),
        ("512 credits", block { $0[20] = 2; $0[21] = 0 }, "rx credits 512"),
    ]

    @Test func everyBadBlockIsRefusedWithItsReasonAndTheListenerGoesOn() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: loopbackOptions())
        let port = listener.port
        for (name, bytes, reason) in Self.badBlocks {
            let acceptor = Background { () -> String in
                do {
                    _ = try listener.accept(timeout: .seconds(10))
                    return "accepted"
                } catch {
                    return "\(error)"
                }
            }
            let offered = try ActiveConnector.offer(host: "127.0.0.1", port: port, shape: Self.shape, requirements: Self.requirements,
                                                    block: bytes, deadline: .now + .seconds(10))
            guard case .failed(let code, let data) = offered.event else {
                Issue.record("\(name): expected a rejection, got \(offered.event)")
                continue
            }
            #expect(code == ECONNREFUSED, "\(name)")
            #expect(String(decoding: data, as: UTF8.self).contains(reason), "\(name): reason \(String(decoding: data, as: UTF8.self))")
            let failure = try acceptor.value()
            #expect(failure.contains("protocolViolation") && failure.contains(reason), "\(name): \(failure)")
        }
        // Then a good connection is served.
        let server = Background { () throws -> [UInt8] in
            let stream = try listener.accept(timeout: .seconds(10))
            defer { stream.close() }
            return try stream.receive(maxBytes: 16)
        }
        let client = try StreamConnection.connect(host: "127.0.0.1", port: port, options: loopbackOptions())
        try client.sendAll(Array("good".utf8))
        #expect(try server.value() == Array("good".utf8))
        client.close()
    }

    /// What the raw peer does after a good block.
    enum Misdeed: Sendable, CustomTestStringConvertible {
        case word(UInt32)
        case write(length: Int, word: UInt32)
        case finThen(UInt32)
        var testDescription: String {
            switch self {
            case .word(let w): "word 0x\(String(w, radix: 16))"
            case .write(let n, let w): "write \(n) with 0x\(String(w, radix: 16))"
            case .finThen(let w): "FIN then 0x\(String(w, radix: 16))"
            }
        }
    }

    @Test(arguments: [
        (Misdeed.word(0x8000_0000), "length 0"),                               // DATA of 0
        (Misdeed.write(length: 16, word: 0x8000_0000 | 40000), "beyond"),      // DATA beyond the free ring
        (Misdeed.word(1 << 20), "returns 1 credits"),                          // CONTROL overflowing credits
        (Misdeed.word(1), "frees 1 bytes"),                                    // CONTROL overflowing ring space
        (Misdeed.word(0), "CONTROL word of 0"),
        (Misdeed.finThen(0x8000_0001), "after FIN"),                           // anything after FIN
    ])
    func invalidWordsEndTheConnectionWithAProtocolError(misdeed: Misdeed, reason: String) throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, options: loopbackOptions { $0.receiveRingSize = 32768 })
        let server = Background { () throws -> String in
            let stream = try listener.accept(timeout: .seconds(10))
            defer { stream.close() }
            var got: [UInt8] = []
            let deadline = ContinuousClock.now + .seconds(20)
            while ContinuousClock.now < deadline {
                do {
                    var buffer = [UInt8](repeating: 0, count: 64)
                    switch try stream.tryReceive(into: &buffer) {
                    case .received(let n): got += buffer[0..<n]
                    case .endOfStream: continue // a word after FIN may land after the end was read
                    case .wouldBlock: continue
                    }
                } catch {
                    return "\(got.count) bytes then \(error)"
                }
            }
            return "no error within 20 s after \(got.count) bytes"
        }
        let raw = try ActiveConnector.offer(host: "127.0.0.1", port: listener.port, shape: Self.shape,
                                            requirements: Self.requirements, deadline: .now + .seconds(10))
        guard case .connected(let data) = raw.event else {
            Issue.record("expected to connect, got \(raw.event)")
            return
        }
        raw.transport.connect(to: try ConnectionBlock.decode(data, expectIwarp: false))
        // Two honest bytes first: they must be delivered before the error.
        raw.transport.sendRing.storeBytes(of: 0x4142, as: UInt16.self)
        #expect(try raw.transport.write(sendOffset: 0, length: 2, remoteOffset: 0, word: 0x8000_0002, writeSlot: 0) == .complete)
        switch misdeed {
        case .word(let word):
            #expect(try raw.transport.send(word: word))
        case .write(let length, let word):
            #expect(try raw.transport.write(sendOffset: 0, length: length, remoteOffset: 2, word: word, writeSlot: 1) == .complete)
        case .finThen(let word):
            #expect(try raw.transport.send(word: 0x4000_0000))
            #expect(try raw.transport.send(word: word))
        }
        let outcome = try server.value()
        #expect(outcome.hasPrefix("2 bytes then protocolViolation"), "\(outcome)")
        #expect(outcome.contains(reason), "\(outcome)")
    }
}
