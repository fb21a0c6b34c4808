/// The 32-bit notification word of protocol v4.
///
///     bit 31 = 1  DATA     bits 0..30: n, bytes the write just placed (1 <= n < 2^20)
///     bit 31 = 0  CONTROL  bits 0..19 freed, bits 20..28 credits, bit 30 FIN, bit 29 BEAT; never 0
@_spi(Benchmarks) public enum NotificationWord: Equatable, Sendable {
    case data(length: Int)
    /// `beat`: a heartbeat (protocol v4, "Liveness"); it may stand alone or carry what is owed.
    case control(freed: Int, credits: Int, fin: Bool, beat: Bool = false)

    package static let maxDataLength = (1 << 20) - 1
    package static let maxFreed = (1 << 20) - 1
    package static let maxCredits = (1 << 9) - 1

    private static let dataBit: UInt32 = 1 << 31
    private static let finBit: UInt32 = 1 << 30
    private static let beatBit: UInt32 = 1 << 29

    /// Encodes a word; the caller guarantees the fields are in range (a programmer error otherwise).
    @inline(__always)
    @_spi(Benchmarks) public var encoded: UInt32 {
        switch self {
        case .data(let n):
            precondition(n >= 1 && n <= Self.maxDataLength, "DATA length \(n) out of range")
            return Self.dataBit | UInt32(n)
        case .control(let freed, let credits, let fin, let beat):
            precondition(freed >= 0 && freed <= Self.maxFreed, "CONTROL freed \(freed) out of range")
            precondition(credits >= 0 && credits <= Self.maxCredits, "CONTROL credits \(credits) out of range")
            let word = UInt32(freed) | UInt32(credits) << 20 | (fin ? Self.finBit : 0) | (beat ? Self.beatBit : 0)
            precondition(word != 0, "a CONTROL word of 0 is invalid")
            return word
        }
    }

    /// Decodes a word from the peer. Every invalid word is an error, never a trap.
    @inline(__always)
    @_spi(Benchmarks) public static func decode(_ word: UInt32) throws(RStreamError) -> NotificationWord {
        if word & dataBit != 0 {
            let n = Int(word & ~dataBit)
            guard n >= 1 && n <= maxDataLength else {
                throw .protocolViolation("DATA word 0x\(String(word, radix: 16)) has length \(n), outside 1...\(maxDataLength)")
            }
            return .data(length: n)
        }
        guard word != 0 else { throw .protocolViolation("CONTROL word of 0") }
        return .control(freed: Int(word & 0xFFFFF), credits: Int(word >> 20 & 0x1FF), fin: word & finBit != 0,
                        beat: word & beatBit != 0)
    }
}
