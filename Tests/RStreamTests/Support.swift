import Foundation
import RStream
import Synchronization

/// Runs `body` on its own thread; `value()` joins it.
final class Background<T: Sendable>: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var result: Result<T, any Error>?

    init(_ body: @escaping @Sendable () throws -> T) {
        let thread = Thread { [self] in
            result = Result { try body() }
            done.signal()
        }
        thread.stackSize = 4 << 20
        thread.start()
    }

    func value() throws -> T {
        done.wait()
        return try result!.get()
    }
}

/// A position-keyed pseudo-random byte stream: byte i of stream `seed` is a pure function of
/// (seed, i), so a receiver checks order, loss and duplication without keeping a copy.
struct PatternStream {
    let seed: UInt64
    @inline(__always)
    static func word(_ seed: UInt64, _ index: UInt64) -> UInt64 {
        var z = seed &+ index &* 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    @inline(__always)
    func byte(at position: UInt64) -> UInt8 {
        UInt8(truncatingIfNeeded: Self.word(seed, position >> 3) >> ((position & 7) * 8))
    }
    func fill(_ buffer: inout [UInt8], count: Int, from position: UInt64) {
        buffer.withUnsafeMutableBytes { raw in
            var p = position
            var i = 0
            while i < count && p & 7 != 0 { raw[i] = byte(at: p); i += 1; p += 1 }
            while i + 8 <= count {
                raw.storeBytes(of: Self.word(seed, p >> 3), toByteOffset: i, as: UInt64.self)
                i += 8; p += 8
            }
            while i < count { raw[i] = byte(at: p); i += 1; p += 1 }
        }
    }
    /// The index of the first byte that differs, or nil.
    func firstMismatch(_ buffer: [UInt8], count: Int, from position: UInt64) -> Int? {
        buffer.withUnsafeBytes { raw in
            var p = position
            var i = 0
            while i < count && p & 7 != 0 { if raw[i] != byte(at: p) { return i }; i += 1; p += 1 }
            while i + 8 <= count {
                if raw.loadUnaligned(fromByteOffset: i, as: UInt64.self) != Self.word(seed, p >> 3) {
                    for j in 0..<8 where raw[i + j] != byte(at: p + UInt64(j)) { return i + j }
                }
                i += 8; p += 8
            }
            while i < count { if raw[i] != byte(at: p) { return i }; i += 1; p += 1 }
            return nil
        }
    }
}

func loopbackOptions(_ configure: (inout StreamOptions) -> Void = { _ in }) -> StreamOptions {
    var options = StreamOptions()
    options.provider = ProcessInfo.processInfo.environment["RSTREAM_TEST_PROVIDER"] ?? "tcp"
    configure(&options)
    return options
}

/// A value behind an `NSLock`: tests use it rather than `Synchronization.Mutex`, which
/// ThreadSanitizer does not see on Linux.
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}
