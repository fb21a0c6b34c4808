import Foundation
import CLibfabric // its header brings sys/eventfd.h
import Glibc
import Synchronization
import Testing
@testable import RStreamKernel

/// A stream's own wait set rings its sleepers from inside the process through its `LocalSignal`,
/// with no eventfd of its own: a thread with an eventfd lent for its sleep, a task through the
/// reactor. Each test's sleeper would sleep for seconds if the ring were lost; each requires that
/// its sleep did not run out.
@Suite struct LocalSignalTests {
    /// A member that never fires (a queue's wait descriptor with nothing coming).
    static func silentMember() throws -> Int32 {
        let fd = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        try #require(fd >= 0)
        return fd
    }

    /// A set of `member` with a waiter armed and counted as a library sleep is, rung before it
    /// sleeps.
    static func setRungBeforeItsSleep(member: Int32) -> WaitSet {
        let set = WaitSet(ownMembers: [member])
        set.arm(for: .readable)
        set.willSleep()
        set.ring()
        return set
    }

    /// Sleeps on `set` on a thread of its own, armed and counted as a library sleep is; the
    /// semaphore is signalled when the sleep returns.
    static func sleepOnThread(_ set: WaitSet, milliseconds: Int32) -> DispatchSemaphore {
        let woke = DispatchSemaphore(value: 0)
        let ready = DispatchSemaphore(value: 0)
        let thread = Thread {
            set.arm(for: .readable)
            set.willSleep()
            ready.signal()
            set.sleep(timeoutMilliseconds: milliseconds)
            woke.signal()
        }
        thread.start()
        ready.wait()
        return woke
    }

    @Test func aSleepingThreadIsRungWithoutAnEventfdOfTheSet() throws {
        let member = try Self.silentMember()
        defer { close(member) }
        let set = WaitSet(ownMembers: [member])
        let woke = Self.sleepOnThread(set, milliseconds: 10_000)
        let watchedBy = ContinuousClock.now + .seconds(10)
        while set.localSignal.watcherCount == 0 && ContinuousClock.now < watchedBy { usleep(1000) }
        try #require(set.localSignal.watcherCount == 1, "the sleeper watches the signal")
        set.ring()
        #expect(woke.wait(timeout: .now() + 5) == .success, "the ring woke the sleeper")
        #expect(set.timedOutSleeps.load(ordering: .relaxed) == 0)
        #expect(!set.hasOwnEventfd && !set.hasEpollSet, "the set made no descriptor of its own")
        // Woken by a member instead, the sleeper takes itself off the signal (the raise did it above).
        let other = Self.sleepOnThread(set, milliseconds: 10_000)
        while set.localSignal.watcherCount == 0 && ContinuousClock.now < watchedBy + .seconds(10) { usleep(1000) }
        var one: UInt64 = 1
        _ = write(member, &one, 8)
        #expect(other.wait(timeout: .now() + 5) == .success, "the member woke the sleeper")
        #expect(set.localSignal.watcherCount == 0, "a sleeper woken otherwise watches no more")
    }

    /// A waiter that armed before anyone asked for the set's descriptor, rung then, and sleeping
    /// on the epoll set made after the ring, is not lost: the eventfd made then counts the ring
    /// (a cold review found it lost: a poll of the descriptor without a timeout would sleep for
    /// ever).
    @Test func aRingBeforeTheDescriptorWasMadeIsCountedInIt() throws {
        let member = try Self.silentMember()
        defer { close(member) }
        let set = Self.setRungBeforeItsSleep(member: member)
        let descriptor = set.descriptor
        try #require(descriptor >= 0)
        var look = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        #expect(poll(&look, 1, 0) == 1, "the descriptor made after the ring is readable")
        set.sleep(timeoutMilliseconds: 2_000)
        #expect(set.timedOutSleeps.load(ordering: .relaxed) == 0)
    }

    /// A ring between a waiter's arming and its sleep is latched: the sleep returns at once.
    /// Another arming while nobody sleeps forgets it (what it rang for is looked at after).
    @Test func aRingBeforeTheSleepIsLatchedUntilTheNextArming() throws {
        let member = try Self.silentMember()
        defer { close(member) }
        let set = Self.setRungBeforeItsSleep(member: member)
        let start = ContinuousClock.now
        set.sleep(timeoutMilliseconds: 5_000)
        #expect(ContinuousClock.now - start < .seconds(4) && set.timedOutSleeps.load(ordering: .relaxed) == 0)
        set.arm(for: .readable)
        #expect(!set.localSignal.isRaised, "an arming with nobody asleep clears the latch")
        set.willSleep()
        set.sleep(timeoutMilliseconds: 20)
        #expect(set.timedOutSleeps.load(ordering: .relaxed) == 1, "nothing rang since")
    }

    /// Two threads asleep on one set are both woken by one ring; the eventfds lent to them go
    /// back to the pool and are lent again, not made anew (the pool is the process's: run with
    /// `--no-parallel`, as `make test` does, no other sleeper borrows meanwhile).
    @Test func oneRingWakesEverySleeperAndTheLentEventfdsAreReused() throws {
        let member = try Self.silentMember()
        defer { close(member) }
        let set = WaitSet(ownMembers: [member])
        let first = Self.sleepOnThread(set, milliseconds: 10_000)
        let second = Self.sleepOnThread(set, milliseconds: 10_000)
        let watchedBy = ContinuousClock.now + .seconds(10)
        while set.localSignal.watcherCount < 2 && ContinuousClock.now < watchedBy { usleep(1000) }
        try #require(set.localSignal.watcherCount == 2)
        set.ring()
        #expect(first.wait(timeout: .now() + 5) == .success && second.wait(timeout: .now() + 5) == .success)
        #expect(set.timedOutSleeps.load(ordering: .relaxed) == 0)
        let made = SleeperEventfds.made.load(ordering: .relaxed)
        for _ in 0..<20 {
            set.arm(for: .readable)
            set.willSleep()
            set.sleep(timeoutMilliseconds: 0)
        }
        #expect(SleeperEventfds.made.load(ordering: .relaxed) == made, "a sleep borrows an eventfd made before")
    }

    /// A task the reactor holds under a signal alone is resumed by its raise; one filed after a
    /// raise is resumed at once (the latch); a cancelled one no longer watches.
    @Test func aReactorWaiterOnASignalIsResumedByItsRaise() throws {
        let reactor = Reactor()
        let signal = LocalSignal()
        let resumed = DispatchSemaphore(value: 0)
        let token = reactor.whenReadable([], signal: signal, deadline: .now + .seconds(30)) { resumed.signal() }
        try #require(token != nil)
        #expect(signal.watcherCount == 1)
        #expect(resumed.wait(timeout: .now() + 0.05) == .timedOut, "nothing raised yet")
        signal.raise()
        #expect(resumed.wait(timeout: .now() + 5) == .success, "the raise resumed it")
        #expect(reactor.timerResumes.load(ordering: .relaxed) == 0)

        #expect(reactor.whenReadable([], signal: signal, deadline: .now + .seconds(30)) { resumed.signal() } != nil)
        #expect(resumed.wait(timeout: .now() + 5) == .success, "raised before it was filed: at once")
        #expect(signal.watcherCount == 0)

        signal.clear()
        let cancelled = try #require(reactor.whenReadable([], signal: signal, deadline: .now + .seconds(30)) { resumed.signal() })
        #expect(signal.watcherCount == 1)
        let resume = try #require(reactor.cancel(cancelled))
        resume()
        #expect(signal.watcherCount == 0, "a cancel unwatches")
        #expect(resumed.wait(timeout: .now() + 5) == .success)
        reactor.stop(waitingUpTo: .seconds(5))
    }

    /// A waiter still idle after its signal fired (its check answers true) is filed again and
    /// watches again: a second raise reaches it. Each check runs once per raise, not in a loop.
    @Test func aWaiterStillIdleAfterARaiseWatchesAgain() throws {
        let reactor = Reactor()
        let signal = LocalSignal()
        let checks = Atomic<Int>(0)
        let resumed = DispatchSemaphore(value: 0)
        let token = reactor.whenReadable([], signal: signal, deadline: .now + .seconds(30), stillIdle: {
            signal.clear() // what an arming with nobody asleep does
            return checks.add(1, ordering: .relaxed).newValue < 2
        }) { resumed.signal() }
        try #require(token != nil)
        signal.raise()
        let watchedBy = ContinuousClock.now + .seconds(10)
        while (checks.load(ordering: .relaxed) < 1 || signal.watcherCount == 0) && ContinuousClock.now < watchedBy { usleep(1000) }
        #expect(checks.load(ordering: .relaxed) == 1 && signal.watcherCount == 1, "filed again, watching")
        usleep(50_000)
        #expect(checks.load(ordering: .relaxed) == 1, "no check without a raise")
        signal.raise()
        #expect(resumed.wait(timeout: .now() + 5) == .success)
        #expect(checks.load(ordering: .relaxed) == 2)
        reactor.stop(waitingUpTo: .seconds(5))
    }
}
