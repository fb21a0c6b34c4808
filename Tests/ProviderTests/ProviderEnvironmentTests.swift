import RStreamKernel
@testable import RStreamProvider
import Testing

/// The settings C programs give through the environment, as the provider reads them.
@Suite struct ProviderEnvironmentTests {
    @Test func sharedCompletionsAreOnUnlessTurnedOff() {
        #expect(ProviderInfo.sharedCompletions(environment: nil))
        #expect(ProviderInfo.sharedCompletions(environment: "1"))
        #expect(!ProviderInfo.sharedCompletions(environment: "0"))
    }

    @Test func ringsArePrefaultedOnlyWhenAsked() {
        #expect(!ProviderInfo.prefaultRings(environment: nil))
        #expect(!ProviderInfo.prefaultRings(environment: "0"))
        #expect(ProviderInfo.prefaultRings(environment: "1"))
    }

    @Test func aPeerTimeoutOutOfRangeIsRefused() throws {
        #expect(try ProviderInfo.peerTimeout(environment: nil).get() == EndpointShape.defaultPeerTimeout)
        #expect(try ProviderInfo.peerTimeout(environment: "0").get() == nil)
        #expect(try ProviderInfo.peerTimeout(environment: "5").get() == .seconds(5))
        for bad in ["1", "x", "-3", "100000"] {
            #expect(throws: RStreamError.self) { try ProviderInfo.peerTimeout(environment: bad).get() }
        }
    }
}
