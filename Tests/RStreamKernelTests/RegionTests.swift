import Testing
@testable import RStreamKernel

/// Ring memory: zeroed, page-aligned, resident only once used unless placed up front, from each
/// of its allocators.
@Suite struct PageAlignedRegionTests {
    static let pages = 4

    /// Not prefaulted, the region is a fresh mapping (bound to the node when one is given, an
    /// anonymous mapping of its own otherwise): no page is resident until touched, a write brings
    /// in its page alone, and it reads as zeros. Prefaulted (libnuma with a node, the heap
    /// without), every page is resident and zero.
    @Test(arguments: [false, true])
    func pagesComeInOnFirstUseUnlessPrefaulted(onNode: Bool) throws {
        let node: Int? = onNode ? NUMAPlacement.nodes.first : nil
        if onNode { try #require(node != nil, "this case needs NUMA support") }
        let size = Self.pages * PageAlignedRegion.pageSize - 100 // rounded up to whole pages
        let lazy = try PageAlignedRegion(byteCount: size, node: node, prefault: false)
        let region = UnsafeRawBufferPointer(lazy.buffer)
        #expect(Int(bitPattern: lazy.base) % PageAlignedRegion.pageSize == 0)
        #expect(NUMAPlacement.residentPages(in: region) == 0)
        lazy.base.storeBytes(of: 0xAB, toByteOffset: PageAlignedRegion.pageSize + 5, as: UInt8.self)
        #expect(NUMAPlacement.residentPages(in: region) == 1)
        #expect(region.enumerated().allSatisfy { $0.offset == PageAlignedRegion.pageSize + 5 ? $0.element == 0xAB : $0.element == 0 })
        if let node { #expect(NUMAPlacement.binding(at: lazy.base)?.nodes == [node]) } else { #expect(NUMAPlacement.binding(at: lazy.base)?.mode == 0) }

        let eager = try PageAlignedRegion(byteCount: size, node: node, prefault: true)
        #expect(NUMAPlacement.residentPages(in: UnsafeRawBufferPointer(eager.buffer)) == Self.pages)
        #expect(UnsafeRawBufferPointer(eager.buffer).allSatisfy { $0 == 0 })
    }
}
