import CLibfabric
import CProviderSupport
import CFabricShim
import RStreamKernel
#if canImport(Glibc)
import Glibc
#endif

/// The entry point libfabric looks up in every `*-fi.so` on `FI_PROVIDER_PATH`.
@_cdecl("fi_prov_ini")
public func fi_prov_ini() -> UnsafeMutablePointer<fi_provider> {
    RStreamProvider.provider
}

/// The rstream provider as libfabric sees it: its name, versions and three entry points.
enum RStreamProvider {
    static let name = "rstream"
    /// The provider's own version: the protocol's.
    static let version = rs_fi_version(4, 0)
    /// The libfabric API it is written against: Debian's libfabric refuses a newer one.
    static let apiVersion = rs_fi_version(1, 17)

    nonisolated(unsafe) static let provider: UnsafeMutablePointer<fi_provider> = table(fi_provider(
        version: version,
        fi_version: apiVersion,
        context: fi_context(),
        name: UnsafePointer(strdup(name)),
        getinfo: { version, node, service, flags, hints, info in
            ProviderInfo.getinfo(version: version, node: node, service: service, flags: flags, hints: hints, into: info)
        },
        fabric: { attr, fabric, context in
            ProviderFabric.open(attr, fabric, context)
        },
        // Called by libfabric's destructor just before it unloads this library: no thread of
        // ours may run its code after that.
        cleanup: { Reactor.stopForExit() }
    ))
}
