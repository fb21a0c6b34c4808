/// The 24-byte block each side sends as connection private data (big-endian):
/// base_addr u64, rkey u64, ring_size u32, rx_credits u16, version u8, flags u8 (bit 0: iWarp).
package struct ConnectionBlock: Equatable, Sendable {
    package static let size = 24
    package static let version: UInt8 = 4
    package static let iwarpFlag: UInt8 = 1
    package static let ringSizes = 4096...((1 << 20) - 1)
    /// Protocol v4: at least 4 (3 deadlocks where data consumes receives; NOTES.md).
    package static let rxCreditRange = 4...511

    package var baseAddress: UInt64
    package var key: UInt64
    package var ringSize: Int
    package var rxCredits: Int
    package var iwarp: Bool

    package init(baseAddress: UInt64, key: UInt64, ringSize: Int, rxCredits: Int, iwarp: Bool) {
        self.baseAddress = baseAddress
        self.key = key
        self.ringSize = ringSize
        self.rxCredits = rxCredits
        self.iwarp = iwarp
    }

    package var encoded: [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            withUnsafeBytes(of: value.bigEndian) { raw in
                for (i, b) in raw.enumerated() { bytes[offset + i] = b }
            }
        }
        put(baseAddress, at: 0)
        put(key, at: 8)
        put(UInt32(ringSize), at: 16)
        put(UInt16(rxCredits), at: 20)
        bytes[22] = Self.version
        bytes[23] = iwarp ? Self.iwarpFlag : 0
        return bytes
    }

    /// Checks every field before anything in it is believed. `expectIwarp` is the mode this side
    /// asked for: a block asking for the other mode is refused.
    package static func decode(_ bytes: some Collection<UInt8>, expectIwarp: Bool) throws(RStreamError) -> ConnectionBlock {
        let b = Array(bytes)
        guard b.count >= size else {
            throw .protocolViolation("connection block is \(b.count) bytes, expected \(size)")
        }
        func get(_ offset: Int, _ count: Int) -> UInt64 {
            var v: UInt64 = 0
            for i in 0..<count { v = v << 8 | UInt64(b[offset + i]) }
            return v
        }
        guard b[22] == version else {
            throw .protocolViolation("connection block has version \(b[22]), expected \(version)")
        }
        let flags = b[23]
        guard flags & ~iwarpFlag == 0 else {
            throw .protocolViolation("connection block sets unknown flags 0x\(String(flags, radix: 16))")
        }
        let iwarp = flags & iwarpFlag != 0
        guard iwarp == expectIwarp else {
            throw .protocolViolation("connection block asks for \(iwarp ? "iWarp" : "normal") mode, this side uses \(expectIwarp ? "iWarp" : "normal") mode")
        }
        let ringSize = Int(get(16, 4))
        guard ringSizes.contains(ringSize) else {
            throw .protocolViolation("connection block ring size \(ringSize) is outside \(ringSizes.lowerBound)...\(ringSizes.upperBound)")
        }
        let credits = Int(get(20, 2))
        guard rxCreditRange.contains(credits) else {
            throw .protocolViolation("connection block rx credits \(credits) are outside \(rxCreditRange.lowerBound)...\(rxCreditRange.upperBound)")
        }
        return ConnectionBlock(baseAddress: get(0, 8), key: get(8, 8), ringSize: ringSize, rxCredits: credits, iwarp: iwarp)
    }
}
