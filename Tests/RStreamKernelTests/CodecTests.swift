import Testing
@_spi(Benchmarks) @testable import RStreamKernel

@Suite struct NotificationWordTests {
    @Test func dataRoundTripsAtEveryLengthBoundary() throws {
        for n in [1, 2, 4095, 4096, 65535, 1 << 19, NotificationWord.maxDataLength] {
            let word = NotificationWord.data(length: n)
            #expect(try NotificationWord.decode(word.encoded) == word)
            #expect(word.encoded & 0x8000_0000 != 0)
        }
    }

    @Test func controlRoundTripsOverItsFields() throws {
        for freed in [0, 1, 4096, NotificationWord.maxFreed] {
            for credits in [0, 1, 255, NotificationWord.maxCredits] {
                for fin in [false, true] {
                    for beat in [false, true] where freed != 0 || credits != 0 || fin || beat {
                        let word = NotificationWord.control(freed: freed, credits: credits, fin: fin, beat: beat)
                        #expect(try NotificationWord.decode(word.encoded) == word)
                        #expect((word.encoded & (1 << 29) != 0) == beat)
                        #expect((word.encoded & (1 << 30) != 0) == fin)
                    }
                }
            }
        }
    }

    @Test(arguments: [
        (UInt32(0), "CONTROL word of 0"),
        (UInt32(0x8000_0000), "outside 1...1048575"),          // DATA of 0
        (UInt32(0x8010_0000), "outside 1...1048575"),          // DATA of 2^20
        (UInt32(0xFFFF_FFFF), "outside 1...1048575"),          // DATA of 2^31 - 1
    ])
    func everyInvalidWordIsAnError(word: UInt32, reason: String) {
        #expect {
            _ = try NotificationWord.decode(word)
        } throws: { error in
            guard let error = error as? RStreamError else { return false }
            return error.kind == .protocolViolation && error.context.contains(reason)
        }
    }

    // Protocol v4: bit 29 is BEAT, and a heartbeat may stand alone or carry what is owed.
    @Test func aHeartbeatDecodesAloneAndWithCredits() throws {
        #expect(try NotificationWord.decode(1 << 29) == .control(freed: 0, credits: 0, fin: false, beat: true))
        #expect(try NotificationWord.decode(0x7FFF_FFFF) == .control(freed: NotificationWord.maxFreed,
                                                                   credits: NotificationWord.maxCredits, fin: true, beat: true))
    }

    @Test func everyWordDecodesOrFailsWithoutTrapping() {
        // A sweep over the whole space, strided to stay quick: a peer's word never traps.
        var valid = 0
        var word: UInt64 = 0
        while word <= UInt64(UInt32.max) {
            if (try? NotificationWord.decode(UInt32(word))) != nil { valid += 1 }
            word += 997
        }
        #expect(valid > 0)
    }

    @Test func encodingOutOfRangeFieldsTraps() async {
        await #expect(processExitsWith: .failure) { _ = NotificationWord.data(length: 0).encoded }
        await #expect(processExitsWith: .failure) { _ = NotificationWord.control(freed: 0, credits: 0, fin: false).encoded }
        await #expect(processExitsWith: .failure) { _ = NotificationWord.control(freed: 1 << 20, credits: 0, fin: false).encoded }
    }
}

@Suite struct ConnectionBlockTests {
    let good = ConnectionBlock(baseAddress: 0x1122_3344_5566_7788, key: 0x99AA_BBCC_DDEE_FF00, ringSize: 32768, rxCredits: 384, iwarp: false)

    @Test func roundTripsBigEndian() throws {
        let bytes = good.encoded
        #expect(bytes.count == 24)
        #expect(Array(bytes[0..<8]) == [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88])
        #expect(Array(bytes[16..<20]) == [0, 0, 0x80, 0])
        #expect(Array(bytes[20..<22]) == [0x01, 0x80])
        #expect(bytes[22] == 4 && bytes[23] == 0)
        #expect(try ConnectionBlock.decode(bytes, expectIwarp: false) == good)
        var iwarp = good
        iwarp.iwarp = true
        #expect(try ConnectionBlock.decode(iwarp.encoded, expectIwarp: true) == iwarp)
    }

    static func mutated(_ change: (inout [UInt8]) -> Void) -> [UInt8] {
        var bytes = ConnectionBlock(baseAddress: 0, key: 1, ringSize: 32768, rxCredits: 384, iwarp: false).encoded
        change(&bytes)
        return bytes
    }

    @Test(arguments: [
        (mutated { $0.removeLast() }, "is 23 bytes"),
        ([UInt8](), "is 0 bytes"),
        (mutated { $0[22] = 2 }, "version 2"),
        (mutated { $0[22] = 3 }, "version 3"),
        (mutated { $0[22] = 5 }, "version 5"),
        (mutated { $0[23] = 0x02 }, "unknown flags"),
        (mutated { $0[23] = 0x81 }, "unknown flags"),
        (mutated { $0[23] = 0x01 }, "asks for iWarp mode"),
        (mutated { $0[16] = 0; $0[17] = 0; $0[18] = 0; $0[19] = 0 }, "ring size 0 "),
        (mutated { $0[16] = 0; $0[17] = 0x10; $0[18] = 0; $0[19] = 0 }, "ring size 1048576"),
        (mutated { $0[16] = 0; $0[17] = 0; $0[18] = 0x0F; $0[19] = 0xFF }, "ring size 4095"),
        (mutated { $0[20] = 0; $0[21] = 2 }, "rx credits 2 "),
        (mutated { $0[20] = 0; $0[21] = 3 }, "rx credits 3 "),
        (mutated { $0[20] = 2; $0[21] = 0 }, "rx credits 512"),
    ])
    func everyBadBlockIsRefusedWithItsReason(bytes: [UInt8], reason: String) {
        #expect {
            _ = try ConnectionBlock.decode(bytes, expectIwarp: false)
        } throws: { error in
            guard let error = error as? RStreamError else { return false }
            return error.kind == .protocolViolation && error.context.contains(reason)
        }
    }

    @Test func limitsAreAccepted() throws {
        for (ring, credits) in [(4096, 4), ((1 << 20) - 1, 511)] {
            let block = ConnectionBlock(baseAddress: 0, key: 0, ringSize: ring, rxCredits: credits, iwarp: false)
            #expect(try ConnectionBlock.decode(block.encoded, expectIwarp: false) == block)
        }
    }
}
