import Foundation
import CLibfabric // its header brings sys/eventfd.h
import CSameHost
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
        #expect(reactor.lastWaitSeen != 0, "the stop returned before the thread was in its futex wait")
        let atStop = checks.load(ordering: .relaxed)
        usleep(100_000)
        #expect(checks.load(ordering: .relaxed) == atStop, "no check after the stop returned")
    }
}

@Suite struct WaitSetTests {
    /// A same-host set-up socket carries the peer's rings: watched for its hang-up alone (how a
    /// C program's event queue watches it), its traffic does not make the set readable, its
    /// peer's leaving does; watched for readability, a ring does. Both ways a set is looked at:
    /// its one descriptor, and a library sleep over its members before any descriptor was made.
    @Test(arguments: [false, true])
    func aHangUpOnlyWatchIgnoresTrafficAndSeesTheHangUp(pollingMembers: Bool) throws {
        var ends: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0, &ends) == 0)
        defer { close(ends[0]) }
        let events = try #require(pollingMembers ? WaitSet(ownMembers: []) : WaitSet(waitDescriptors: []))
        events.watch(ends[0], hangUpOnly: true)
        let data = WaitSet(ownMembers: [], doorbell: ends[0])
        func readable(_ set: WaitSet) -> Bool {
            guard pollingMembers else {
                var look = pollfd(fd: set.descriptor, events: Int16(POLLIN), revents: 0)
                return poll(&look, 1, 0) == 1
            }
            let timedOut = set.timedOutSleeps.load(ordering: .relaxed)
            set.willSleep()
            set.sleep(timeoutMilliseconds: 0)
            return set.timedOutSleeps.load(ordering: .relaxed) == timedOut
        }
        #expect(rs_ring_doorbell(ends[1]) == 1)
        #expect(!readable(events), "a ring is no connection event")
        #expect(readable(data), "a ring wakes the stream's waiters")
        #expect(rs_peer_hung_up(ends[0]) == 0)
        close(ends[1])
        #expect(readable(events), "the hang-up is")
        #expect(rs_peer_hung_up(ends[0]) == 1, "seen with a ring still queued ahead of it")
    }

    /// A stream's own set makes its epoll set and eventfd when its descriptor is first asked
    /// for, holding every member watched before and after; a set gathered at once has them from
    /// the start.
    @Test func theEpollSetIsMadeWhenAskedForAndHoldsEveryMember() throws {
        func isEpollSet(_ fd: Int32) -> Bool {
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)")) == "anon_inode:[eventpoll]"
        }
        let early = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC)), late = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        defer { close(early); close(late) }
        let set = WaitSet(ownMembers: [early])
        #expect(!set.hasEpollSet && !set.hasOwnEventfd, "nothing made before it is needed")
        set.arm(for: .readable)
        #expect(!set.hasOwnEventfd && !set.hasEpollSet, "an arming makes nothing (its sleepers are rung through its signal)")
        let descriptor = set.descriptor
        #expect(descriptor >= 0 && set.hasEpollSet && set.hasOwnEventfd && isEpollSet(descriptor))
        #expect(set.descriptor == descriptor, "made once")
        set.watch(late)
        func readable() -> Bool {
            var look = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            return poll(&look, 1, 0) == 1
        }
        #expect(!readable())
        var one: UInt64 = 1
        _ = write(late, &one, 8)
        #expect(readable(), "a member watched after the epoll set was made")
        var drained: UInt64 = 0
        _ = read(late, &drained, 8)
        _ = write(early, &one, 8)
        #expect(readable(), "a member from before")
        set.unwatch(early)
        #expect(!readable(), "a member no longer watched")
        set.ring()
        #expect(readable(), "the eventfd made with the epoll set is in it, and rung")
        let atOnce = try #require(WaitSet(waitDescriptors: []))
        #expect(atOnce.hasEpollSet && atOnce.hasOwnEventfd)
    }

    /// A descriptor closed by its owner without an `unwatch` (a C program closing an endpoint
    /// whose queue's descriptor an event queue watches) leaves the epoll set by itself; a new
    /// descriptor that gets its number is watched anew. Before, the set took it for the member it
    /// still listed, and changing that in the epoll set failed (an assertion in debug builds, a
    /// descriptor never watched in release ones: a C program sleeping for ever).
    @Test func aDescriptorWhoseNumberCameBackIsWatchedAnew() throws {
        let set = try #require(WaitSet(waitDescriptors: []))
        let descriptor = set.descriptor
        let first = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        set.watch(first, hangUpOnly: true)
        close(first)
        let second = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        defer { close(second) }
        try #require(second == first, "the number came back")
        set.watch(second)
        var one: UInt64 = 1
        _ = write(second, &one, 8)
        var look = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        #expect(poll(&look, 1, 0) == 1, "the new descriptor is watched")
    }
}
