import CFabricShim
import CLibfabric
import CNuma
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where rings live: libnuma's view of this machine, the node of a core's NIC, and pinning.
public enum NUMAPlacement {
    // Tests set this to see the error a machine without NUMA support gives.
    private static let simulateUnavailable = Atomic<Bool>(false)
    package static func simulateNoNUMASupport(_ on: Bool) { simulateUnavailable.store(on, ordering: .sequentiallyConsistent) }

    /// True when the kernel and libnuma support NUMA placement here.
    public static var isAvailable: Bool {
        !simulateUnavailable.load(ordering: .sequentiallyConsistent) && numa_available() >= 0
    }

    /// The nodes that have memory.
    public static var nodes: [Int] {
        guard isAvailable else { return [] }
        return (0...Int(numa_max_node())).filter { numa_node_size64(Int32($0), nil) > 0 }
    }

    /// Throws unless `node` exists and NUMA placement is supported.
    public static func check(node: Int) throws(RStreamError) {
        guard isAvailable else {
            throw RStreamError(.invalidOption, code: ENOSYS, "NUMA node \(node) was asked for, but this machine has no NUMA support")
        }
        let nodes = nodes
        guard nodes.contains(node) else {
            throw RStreamError(.invalidOption, code: EINVAL, "NUMA node \(node) does not exist; this machine has node(s) \(nodes.map(String.init).joined(separator: ", "))")
        }
    }

    /// The node of the CPU the calling thread runs on, or nil without NUMA support.
    public static var currentNode: Int? {
        guard isAvailable else { return nil }
        let node = numa_node_of_cpu(rs_sched_getcpu())
        return node >= 0 ? Int(node) : nil
    }

    /// The node of the NIC behind a core (its PCI address in `fi_info`'s nic attributes, looked up
    /// in sysfs), or nil where the core reports none (tcp on loopback reports none).
    package static func node(ofNICIn info: UnsafeMutablePointer<fi_info>) -> Int? {
        guard let nic = info.pointee.nic, let bus = nic.pointee.bus_attr, bus.pointee.bus_type == FI_BUS_PCI else { return nil }
        let pci = bus.pointee.attr.pci
        let hex = { (v: UInt64, width: Int) -> String in
            let s = String(v, radix: 16)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        let path = "/sys/bus/pci/devices/\(hex(UInt64(pci.domain_id), 4)):\(hex(UInt64(pci.bus_id), 2)):\(hex(UInt64(pci.device_id), 2)).\(hex(UInt64(pci.function_id), 1))/numa_node"
        guard let file = fopen(path, "r") else { return nil }
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 32)
        guard fgets(&line, Int32(line.count), file) != nil else { return nil }
        let text = line.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        guard let node = Int(text.filter { !$0.isWhitespace }), node >= 0 else { return nil } // -1: no affinity
        return node
    }

    /// Pins the calling thread to the CPUs of `node`.
    public static func pinCurrentThread(toNode node: Int) throws(RStreamError) {
        try check(node: node)
        guard numa_run_on_node(Int32(node)) == 0 else {
            throw RStreamError(.fabric, code: errno, "cannot run on NUMA node \(node)")
        }
    }

    /// Pins the calling thread to one CPU.
    public static func pinCurrentThread(toCPU cpu: Int) throws(RStreamError) {
        let cpus = Int(sysconf(Int32(_SC_NPROCESSORS_CONF)))
        guard cpu >= 0 && cpu < cpus else {
            throw RStreamError(.invalidOption, code: EINVAL, "CPU \(cpu) does not exist; this machine has CPUs 0...\(cpus - 1)")
        }
        var set = cpu_set_t()
        withUnsafeMutableBytes(of: &set) { $0[cpu / 8] |= UInt8(1 << (cpu % 8)) }
        guard rs_sched_setaffinity(0, MemoryLayout<cpu_set_t>.size, &set) == 0 else {
            throw RStreamError(.fabric, code: errno, "cannot pin to CPU \(cpu)")
        }
    }

    /// The memory policy that places the pages of the mapping at `address` (`get_mempolicy` with
    /// `MPOL_F_ADDR`): its mode (`MPOL_DEFAULT` is 0) and nodes. For a shared segment it is the
    /// segment's own policy, whichever process asks or touches. Nil when it cannot be read.
    package static func binding(at address: UnsafeRawPointer) -> (mode: Int32, nodes: [Int])? {
        var mode: Int32 = 0
        var mask = [UInt](repeating: 0, count: 16)
        let bits = UInt(mask.count * UInt.bitWidth)
        guard get_mempolicy(&mode, &mask, bits, UnsafeMutableRawPointer(mutating: address), UInt32(MPOL_F_ADDR)) == 0 else { return nil }
        let nodes = (0..<Int(bits)).filter { mask[$0 / UInt.bitWidth] & (1 << UInt($0 % UInt.bitWidth)) != 0 }
        return (mode, nodes)
    }

    /// How many pages of `region` are resident (`mincore`), without touching any.
    package static func residentPages(in region: UnsafeRawBufferPointer) -> Int {
        let page = PageAlignedRegion.pageSize
        let start = UInt(bitPattern: region.baseAddress!) / UInt(page) * UInt(page)
        let end = UInt(bitPattern: region.baseAddress! + region.count)
        let count = Int((end - start + UInt(page) - 1) / UInt(page))
        var vector = [UInt8](repeating: 0, count: count)
        guard mincore(UnsafeMutableRawPointer(bitPattern: start), Int(end - start), &vector) == 0 else { return -1 }
        return vector.reduce(0) { $0 + Int($1 & 1) }
    }

    /// The node each page of `region` is on (`move_pages` in query mode); -errno for a page
    /// that is not mapped.
    package static func nodes(ofPagesIn region: UnsafeRawBufferPointer) -> [Int] {
        let page = PageAlignedRegion.pageSize
        let count = (region.count + page - 1) / page
        var pages = (0..<count).map { Optional(UnsafeMutableRawPointer(mutating: region.baseAddress! + $0 * page)) }
        var status = [Int32](repeating: -1, count: count)
        _ = move_pages(0, UInt(count), &pages, nil, &status, 0)
        return status.map(Int.init)
    }
}
