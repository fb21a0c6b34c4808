import Foundation
import RStream
import Synchronization
import Testing

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

/// What same-host streams hold in this process: descriptors of each kind a stream opens, and
/// mappings of same-host segments.
enum SameHostCensus {
    static let kinds = ["socket", "anon_inode:[eventfd]", "anon_inode:[eventpoll]"]

    static func descriptors() -> [String: Int] {
        var kinds: [String: Int] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(entry)") else { continue }
            let kind = target.hasPrefix("socket:") ? "socket" : target.hasPrefix("/memfd:") ? "memfd" : target.hasPrefix("anon_inode:") ? target : "other"
            kinds[kind, default: 0] += 1
        }
        return kinds
    }

    static func mappings() -> Int {
        ((try? String(contentsOfFile: "/proc/self/maps", encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.contains("memfd:rstream") }.count
    }

    /// A stream goes when the last reference to it does: the accepting thread that returned one
    /// lets go a moment after (later still under a sanitizer), and a stream being released has
    /// unmapped its segments a moment before its descriptors close. So "before" is taken once no
    /// segment is mapped and five looks over 100 ms agree; "after" once it equals `expected` (a
    /// leak never gets there), or after 5 s.
    static func settled(like expected: [String: Int]? = nil) -> [String: Int] {
        let end = ContinuousClock.now + .seconds(5)
        var last = descriptors(), agreeing = 0
        while ContinuousClock.now < end {
            usleep(20_000)
            let now = descriptors()
            if let expected, kinds.allSatisfy({ now[$0, default: 0] == expected[$0, default: 0] }), mappings() == 0 { return now }
            agreeing = now == last && mappings() == 0 ? agreeing + 1 : 0
            if expected == nil && agreeing >= 5 { return now }
            last = now
        }
        return last
    }

    /// Runs `body` (which must release every stream and listener it makes) and expects this
    /// process to hold as many descriptors of each kind as before, no memfd, and no mapping.
    static func expectNothingLeft(_ body: () throws -> Void) throws {
        let before = settled()
        #expect(mappings() == 0)
        try body()
        let after = settled(like: before)
        #expect(after["memfd", default: 0] == 0, "\(after)")
        for kind in kinds {
            #expect(after[kind, default: 0] == before[kind, default: 0], "\(kind): \(before) → \(after)")
        }
        #expect(mappings() == 0)
    }
}
