import CLibfabric // its header brings sys/eventfd.h
import Glibc
import Synchronization
import Testing
@testable import RStreamKernel

@Suite struct ReactorTests {
    /// What the exit path relies on (`Reactor.stopForExit`): once stopped, the reactor's thread
    /// runs no more checks, even with a descriptor that keeps firing, and `stop` returns only
    /// once the thread has parked. The reactor is this test's own: its thread stays parked for
    /// the rest of the test process.
    @Test func aStoppedReactorRunsNoMoreChecks() throws {
        let reactor = Reactor()
        let fd = eventfd(1, Int32(EFD_NONBLOCK | EFD_CLOEXEC)) // readable, and never drained
        try #require(fd >= 0)
        defer { close(fd) }
        let checks = Atomic<Int>(0)
        let token = reactor.whenReadable([fd], deadline: .now + .seconds(600), stillIdle: {
            checks.add(1, ordering: .relaxed)
            return true // still idle: filed again, fires again at once
        }) {}
        try #require(token != nil)
        let busyBy = ContinuousClock.now + .seconds(10)
        while checks.load(ordering: .relaxed) < 100 && ContinuousClock.now < busyBy { usleep(1000) }
        try #require(checks.load(ordering: .relaxed) >= 100, "the reactor runs the check again and again")

        reactor.stop(waitingUpTo: .seconds(10))
        #expect(reactor.isParked)
        let atStop = checks.load(ordering: .relaxed)
        usleep(100_000)
        #expect(checks.load(ordering: .relaxed) == atStop, "no check after the stop returned")
    }
}
