// libFuzzer targets for the parts that read a peer's bytes (`make fuzz`). Which one runs is
// chosen by RSTREAM_FUZZ: `word` (the notification-word decoder), `block` (the connection-block
// parser) or `engine` (a stream engine fed arbitrary peer words, completions and faults over the
// in-memory wire). Built only with `--sanitize=fuzzer --sanitize=address` (libFuzzer's main).
@_spi(Benchmarks) import RStreamKernel
import RStreamFakeWire
#if canImport(Glibc)
import Glibc
#endif

#if RSTREAM_TSAN
// The fake wire is left out of ThreadSanitizer builds (RStreamFakeWire), and so are these targets.
@main enum Replay {
    static func main() { print("rstream-fuzz is not built under ThreadSanitizer") }
}
#else
private let target = getenv("RSTREAM_FUZZ").map { String(cString: $0) } ?? "engine"

@_cdecl("LLVMFuzzerTestOneInput")
func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = UnsafeBufferPointer(start: data, count: size)
    switch target {
    case "word": FuzzWord.run(input)
    case "block": FuzzBlock.run(input)
    default: FuzzEngine.run(input)
    }
    return 0
}

/// Every 32-bit word decodes or is refused; one that decodes encodes back to itself.
enum FuzzWord {
    static func run(_ input: UnsafeBufferPointer<UInt8>) {
        var i = 0
        while i + 4 <= input.count {
            let word = UInt32(input[i]) << 24 | UInt32(input[i + 1]) << 16 | UInt32(input[i + 2]) << 8 | UInt32(input[i + 3])
            if let decoded = try? NotificationWord.decode(word), decoded.encoded != word {
                fatalError("0x\(String(word, radix: 16)) decoded to \(decoded), which encodes differently")
            }
            i += 4
        }
    }
}

/// Any bytes parse or are refused; a block that parses encodes back to its first 24 bytes.
enum FuzzBlock {
    static func run(_ input: UnsafeBufferPointer<UInt8>) {
        guard let first = input.first else { return }
        let bytes = input.dropFirst()
        guard let block = try? ConnectionBlock.decode(bytes, expectIwarp: first & 1 == 1) else { return }
        guard block.encoded == Array(bytes.prefix(ConnectionBlock.size)) else {
            fatalError("block \(block) does not encode back to its bytes")
        }
    }
}

/// Two engines over the in-memory wire, driven by the input as a script: sends, receives,
/// progress, shutdowns, faults, and forged words and completions injected into the receiver's
/// queue. No input may crash or read out of bounds (ASan); while nothing was forged, the bytes
/// the receiver hands out are always a prefix of the bytes sent.
enum FuzzEngine {
    static func pattern(_ position: Int) -> UInt8 { UInt8(truncatingIfNeeded: position &* 31 &+ position >> 8) }

    static func run(_ input: UnsafeBufferPointer<UInt8>) {
        guard input.count >= 2 else { return }
        let ring = 4096 + Int(input[0]) * 61
        let wire = FakeWire(consumesOnData: input[1] & 1 != 0, iwarp: input[1] & 2 != 0)
        let pair = EnginePair(ringSize: ring, txQueueSize: 8 + Int(input[1] >> 2 & 7), rxCredits: 4 + Int(input[1] >> 5), wire: wire)
        var sent = 0, received = 0, forged = false
        var scratch = [UInt8](repeating: 0, count: 1 << 13)
        var i = 2
        func next() -> Int {
            defer { i += 1 }
            return i < input.count ? Int(input[i]) : 0
        }
        while i < input.count {
            let op = next(), arg = next() << 5 | next() >> 3
            switch op % 10 {
            case 0: // a sends
                let n = arg + 1
                for k in 0..<min(n, scratch.count) { scratch[k] = pattern(sent + k) }
                if let k = try? pair.a.send(Array(scratch[0..<min(n, scratch.count)])) { sent += k }
            case 1: // b receives
                var buffer = [UInt8](repeating: 0, count: arg + 1)
                guard case .bytes(let k)? = try? pair.b.receive(into: &buffer) else { break }
                for j in 0..<k where !forged && buffer[j] != pattern(received + j) {
                    fatalError("byte \(received + j) handed out is not the byte sent")
                }
                received += k
            case 2: // a forged word reaches b
                let word = UInt32(truncatingIfNeeded: next() << 24 | next() << 16 | next() << 8 | next())
                wire.inject(to: 1, .notified(word: op & 16 == 0 ? word : nil, consumedReceive: op & 32 != 0))
                forged = true
            case 3: // a forged completion reaches either side
                let event: TransportEvent = op & 16 == 0 ? .transmitted(writeSlot: op & 32 == 0 ? nil : arg % 64)
                                                         : .failed(code: Int32(arg % 200), transmit: op & 32 != 0)
                wire.inject(to: op & 64 == 0 ? 0 : 1, event)
                forged = true
            case 4: pair.a.progress()
            case 5: pair.b.progress()
            case 6: if arg & 1 == 0 { wire.holdCompletions.toggle() } else { wire.deliver() }
            case 7: // the next operation of a kind finds the queue full, or throws
                let operations: [FakeOperation] = [.write, .dataWord, .controlWord, .poll]
                let fault: FakeFault = arg & 1 == 0 ? .queueFull : .error(RStreamError(.fabric, code: 5, "fuzz"))
                wire.fail(op & 16 == 0 ? 0 : 1, operations[arg >> 1 % 4 & 3], with: fault, times: 1 + arg >> 4 & 3)
            case 8: if arg & 1 == 0 { pair.a.shutdown() } else { pair.b.shutdown() }
            case 9 where op & 16 != 0: // whole records, exact receives and peeks
                let n = arg % 3000 + 1
                for k in 0..<n { scratch[k] = pattern(sent + k) }
                if let k = try? scratch.withUnsafeBytes({ try pair.a.sendWhole(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }) {
                    if k != 0 && k != n { fatalError("a whole send took \(k) of \(n) bytes") }
                    sent += k
                }
                var record = [UInt8](repeating: 0, count: op & 32 == 0 ? 1 : 100)
                if op & 64 != 0 { _ = try? record.withUnsafeMutableBytes { try pair.b.peek(into: $0) } }
                guard case .bytes(let k)? = try? pair.b.receive(exactlyInto: &record) else { break }
                for j in 0..<k where !forged && record[j] != pattern(received + j) {
                    fatalError("byte \(received + j) received exactly is not the byte sent")
                }
                received += k
            default: // b sends back, a receives (the other direction's credits)
                _ = try? pair.b.send([UInt8](repeating: 1, count: arg % 300 + 1))
                var buffer = [UInt8](repeating: 0, count: 512)
                _ = try? pair.a.receive(into: &buffer)
            }
            for engine in [pair.a, pair.b] {
                let broken = engine.brokenInvariants()
                if !broken.isEmpty { fatalError("invariants broken after operation \(op % 10): \(broken)") }
            }
        }
        // Fair weather afterwards: with nothing forged, what was accepted arrives, in order.
        guard !forged, pair.a.failure == nil, pair.b.failure == nil else { return }
        wire.faults.removeAll()
        wire.holdCompletions = false
        wire.deliver()
        for _ in 0..<10_000 where received < sent {
            pair.a.progress()
            var buffer = [UInt8](repeating: 0, count: 8192)
            guard case .bytes(let k)? = try? pair.b.receive(into: &buffer) else { continue }
            for j in 0..<k where buffer[j] != pattern(received + j) { fatalError("byte \(received + j) wrong after the faults") }
            received += k
        }
        if received != sent && pair.a.failure == nil && pair.b.failure == nil {
            fatalError("\(sent) bytes accepted, \(received) arrived, and no failure reported")
        }
    }
}

#if !RSTREAM_FUZZING
/// Without libFuzzer (an ordinary build, as `make test` does): replays the inputs named on the
/// command line, such as the committed corpus or a crash libFuzzer wrote, through the same target.
/// The fuzzing build leaves this out: libFuzzer brings its own main.
@main enum Replay {
    static func main() {
        for path in CommandLine.arguments.dropFirst() {
            guard let file = fopen(path, "rb") else { fatalError("cannot open \(path)") }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 4096)
            while case let n = fread(&chunk, 1, chunk.count, file), n > 0 { bytes += chunk[0..<n] }
            fclose(file)
            _ = bytes.withUnsafeBufferPointer { fuzzOne($0.baseAddress ?? UnsafePointer(bitPattern: 1)!, $0.count) }
        }
        print("replayed \(CommandLine.arguments.count - 1) inputs through the \(target) target")
    }
}
#endif
#endif // RSTREAM_TSAN
