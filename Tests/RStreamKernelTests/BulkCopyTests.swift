import Testing
import CBulkCopy

/// The cache-bypassing copy the same-host sender uses for bulk sends: every byte copied at every
/// alignment of source and destination and every length around its 16- and 64-byte steps, and
/// not one byte written outside the destination.
@Suite struct BulkCopyTests {
    @Test func copiesEveryByteAtEveryAlignmentAndNothingBeside() {
        let lengths = [0, 1, 15, 16, 17, 47, 63, 64, 65, 127, 128, 129, 200, 4096 + 3]
        let guardBytes = 32
        let source = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096 + 64, alignment: 64)
        let destination = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096 + 64 + 2 * guardBytes, alignment: 64)
        defer { source.deallocate(); destination.deallocate() }
        for i in 0..<source.count { source[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) }
        var failures = 0
        for sourceOffset in 0..<17 {
            for destinationOffset in 0..<17 {
                for length in lengths {
                    destination.initializeMemory(as: UInt8.self, repeating: 0xEE)
                    let start = guardBytes + destinationOffset
                    rs_copy_bypassing_cache(destination.baseAddress! + start, source.baseAddress! + sourceOffset, length)
                    let copied = (0..<length).allSatisfy { destination[start + $0] == source[sourceOffset + $0] }
                    let besideUntouched = (0..<start).allSatisfy { destination[$0] == 0xEE }
                        && (start + length..<destination.count).allSatisfy { destination[$0] == 0xEE }
                    if !copied || !besideUntouched { failures += 1 }
                }
            }
        }
        #expect(failures == 0)
    }
}
