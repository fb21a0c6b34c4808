import CLibfabric // its header brings sys/timerfd.h
import CSameHost
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The same-host side of a listener: the Unix socket named for its address and port
/// (`SameHostName`), and the connections accepted from it whose request has not been read yet.
///
/// A client that connects and says nothing holds up nobody:
/// - the list holds `pendingLimit` connections (the backlog, at least `mostPending`, at most
///   `mostPendingEver`); one silent for `requestTimeout` is dropped;
/// - once the list is full, the oldest, silent for `silentGrace` since before this look began,
///   gives its place up to a new connection (one whose request has come meanwhile keeps it);
/// - a full list of connections younger than that stops accepting: the rest wait in the
///   kernel's backlog, their requests queued with them. A burst of clients is served whole
///   (before, the list held 64 and dropped the oldest whenever another came: a burst of a
///   thousand lost all but the last 64).
///
/// While it does not accept (the list full of young connections, or an accept that failed,
/// out of descriptors, until `acceptRetry` has passed) the listening socket is not watched, so
/// that its readability does not spin the waiters; a timer in every wait set wakes them when
/// that ends, and when the oldest connection's `requestTimeout` runs out, so that a waiter
/// without a timeout (a C program polling the event queue's descriptor) is woken for either.
///
/// Invariants: `listenDescriptor` is open until `stopListening` (at the latest deinit), and
/// watched by every wait set exactly while `accepting`; every pending descriptor is open,
/// watched by every wait set, and closed when it leaves the list; the timer (when it could be
/// made) is watched by every wait set until `stopListening`. All under `state`'s lock.
package final class SameHostListener: @unchecked Sendable {
    package let listenDescriptor: Int32
    /// The address and port served (the fabric twin's bound address).
    private let boundAddress: [UInt8]
    /// Whether this listener, if an IPv6 wildcard, takes IPv4 clients (as its TCP twin, bound at
    /// the same time, does: `LocalAddress.ipv6WildcardTakesIPv4`).
    private let dualStack = LocalAddress.ipv6WildcardTakesIPv4
    /// A timerfd for the moments when something changes without an event on a socket; -1 when
    /// none could be made (waiters then find those moments at their own timeouts).
    private let timer: Int32

    private struct Pending {
        var fd: Int32
        var since: ContinuousClock.Instant
    }
    private struct State {
        var list: [Pending] = []
        /// Pending sockets the last `poll` found readable, not yet read (last first).
        var readable: [Int32] = []
        var accepting = true
        /// When an accept (or watching a socket) last failed: accepting waits `acceptRetry`.
        var acceptFailedAt: ContinuousClock.Instant?
        /// More wait sets to wake (a C program's event queue).
        var extraWaitSets: [WaitSet] = []
        var stopped = false
    }
    private let state = Mutex(State())
    private let waitSet: WaitSet?

    package static let requestTimeout: Duration = .seconds(10)
    package static let mostPending = 64
    package static let mostPendingEver = 4096
    package static let silentGrace: Duration = .milliseconds(250)
    package static let acceptRetry: Duration = .milliseconds(10)
    private let pendingLimit: Int

    /// Listens for same-host streams of the address `boundAddress` (a `sockaddr` with the port,
    /// as the fabric's listener is bound); nil when another listener holds its name, or it is
    /// not an IP address.
    package init?(boundTo boundAddress: [UInt8], backlog: Int, waitSet: WaitSet?) throws(RStreamError) {
        guard let name = SameHostName.listener(boundTo: boundAddress) else { return nil } // not an IP address: no same-host name
        let fd = try UnixSocket.make()
        do throws(RStreamError) {
            guard try UnixSocket.listen(fd, name: name, backlog: backlog) else {
                close(fd)
                return nil
            }
        } catch {
            close(fd)
            throw error
        }
        listenDescriptor = fd
        self.boundAddress = boundAddress
        pendingLimit = min(max(Self.mostPending, backlog), Self.mostPendingEver)
        timer = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK | TFD_CLOEXEC))
        self.waitSet = waitSet
        if let waitSet, !waitSet.watch(fd) || (timer >= 0 && !waitSet.watch(timer)) {
            let code = errno
            waitSet.unwatch(fd)
            close(fd)
            if timer >= 0 { close(timer) }
            throw RStreamError.system(code, "epoll_ctl(the same-host listener's socket)")
        }
    }

    deinit { stopListening() }

    private let released = Atomic<Bool>(false)

    /// Stops listening (once): the pending sockets, the named socket and the timer are closed, so
    /// the name is free again. Called before deinit only once no call is inside
    /// (`StreamAcceptor.close`).
    package func stopListening() {
        guard !released.exchange(true, ordering: .acquiringAndReleasing) else { return }
        state.withCheckedLock(key: lockKey(self)) { s in
            s.stopped = true
            for p in s.list { unwatch(p.fd, s); close(p.fd) }
            s.list = []
            s.readable = []
            unwatch(listenDescriptor, s)
            if timer >= 0 { unwatch(timer, s); close(timer) }
            close(listenDescriptor)
        }
    }

    /// The next same-host stream whose request has arrived, without waiting; nil when none has.
    /// A request that fails a check is refused with its reason and thrown as `.protocolViolation`.
    package func acceptReady(shape: EndpointShape) throws(RStreamError) -> StreamEngine? {
        guard let request = try takeRequest() else { return nil }
        return try SameHostHandshake.answer(request, shape: shape)
    }

    /// The next request that has arrived and whose block passed its checks, without waiting; nil
    /// when none has. One whose block fails is refused with the reason and thrown as
    /// `.protocolViolation` (the listener goes on).
    package func takeRequest() throws(RStreamError) -> SameHostRequest? {
        var acceptFailure: RStreamError?
        let ready = state.withCheckedLock(key: lockKey(self)) { (s: inout State) -> (Int32, UnixSocket.Message)? in
            guard !s.stopped else { return nil }
            let now = ContinuousClock.now
            if timer >= 0 {
                var expirations: UInt64 = 0
                _ = read(timer, &expirations, 8)
            }
            defer { settle(&s, now) }
            // The requests that came first, then new connections (an accept that fails stops
            // accepting, not serving those pending: it is reported after them), then theirs.
            if let ready = firstRequest(&s, now) { return ready }
            if s.acceptFailedAt.map({ now - $0 >= Self.acceptRetry }) ?? true {
                s.acceptFailedAt = nil
                do throws(RStreamError) { try acceptWaiting(&s, now) } catch {
                    acceptFailure = error
                    s.acceptFailedAt = now
                }
            }
            return firstRequest(&s, now)
        }
        guard let (fd, message) = ready else {
            if let acceptFailure { throw acceptFailure }
            return nil
        }
        do throws(RStreamError) {
            let addresses: (local: [UInt8], peer: [UInt8])
            do throws(RStreamError) { addresses = try SameHostName.checkedClient(UnixSocket.peerName(fd), listening: boundAddress, dualStack: dualStack) } catch {
                message.closeDescriptors()
                throw error
            }
            let peer = try SameHostHandshake.checkedBlock(message, expecting: "the request")
            return SameHostRequest(fd: fd, message: message, peer: peer, addresses: addresses)
        } catch {
            try? UnixSocket.send(fd, Array(error.context.utf8.prefix(200)))
            close(fd)
            throw RStreamError(.protocolViolation, code: error.code, "refused a same-host connection request: \(error.context)")
        }
    }

    /// Accepts the connections waiting in the kernel's backlog while the list has room, or its
    /// oldest may give its place up (silent past the grace since before `now`, and still
    /// without a request when the new one is in hand: one that spoke meanwhile keeps its place,
    /// the list one over its limit until it is read).
    private func acceptWaiting(_ s: inout State, _ now: ContinuousClock.Instant) throws(RStreamError) {
        while true {
            let full = s.list.count >= pendingLimit
            if full {
                guard now - s.list[0].since > Self.silentGrace, !Self.hasSomething(s.list[0].fd) else { return }
            }
            guard let fd = try UnixSocket.accept(listenDescriptor) else { return }
            guard watch(fd, s) else {
                // A wait set cannot hold it (the kernel's memory, or its limit on watches): this
                // one is dropped (its client reset), and accepting waits as after a failed accept.
                close(fd)
                s.acceptFailedAt = now
                return
            }
            if full && !Self.hasSomething(s.list[0].fd) {
                let oldest = s.list.removeFirst()
                unwatch(oldest.fd, s)
                close(oldest.fd)
            }
            s.list.append(Pending(fd: fd, since: .now))
        }
    }

    /// Whether a pending socket has a message, or has ended (`poll`, no wait).
    private static func hasSomething(_ fd: Int32) -> Bool {
        var look = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&look, 1, 0) == 1
    }

    /// The first pending connection whose request has arrived, taken off the list; connections
    /// closed before they asked, or silent past `requestTimeout`, are dropped. One `poll` looks
    /// at them all, and the sockets it found readable are read one by one, over as many calls as
    /// it takes (a burst is not polled once per request).
    private func firstRequest(_ s: inout State, _ now: ContinuousClock.Instant) -> (Int32, UnixSocket.Message)? {
        for p in s.list where now - p.since > Self.requestTimeout { // never asked
            unwatch(p.fd, s)
            close(p.fd)
        }
        s.list.removeAll { now - $0.since > Self.requestTimeout }
        var polled = false
        while true {
            if s.readable.isEmpty {
                guard !polled, !s.list.isEmpty else { return nil }
                polled = true
                var looks = s.list.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
                guard poll(&looks, nfds_t(looks.count), 0) > 0 else { return nil }
                s.readable = looks.reversed().filter { $0.revents != 0 }.map(\.fd)
                continue
            }
            let fd = s.readable.removeLast()
            guard let i = s.list.firstIndex(where: { $0.fd == fd }) else { continue } // gone meanwhile
            let message: UnixSocket.Message?
            do throws(RStreamError) { message = try UnixSocket.receive(fd) } catch {
                message = UnixSocket.Message(bytes: [], descriptors: [], truncated: false)
            }
            guard let message else { continue } // nothing after all
            s.list.remove(at: i)
            unwatch(fd, s)
            if !message.isEnd { return (fd, message) }
            close(fd) // closed before it asked
        }
    }

    /// After a look: the listening socket is watched while the listener accepts, and the timer
    /// set for the next moment that changes something without an event: when accepting resumes
    /// (the later of the retry after a failure and the end of the oldest's grace, whichever
    /// hold it), and when the oldest connection's time runs out.
    private func settle(_ s: inout State, _ now: ContinuousClock.Instant) {
        let retryAt = s.acceptFailedAt.map { $0 + Self.acceptRetry }
        let graceEnds = s.list.count >= pendingLimit ? s.list[0].since + Self.silentGrace : nil
        let resumeAt = [retryAt, graceEnds].compactMap { $0 }.max()
        var accepting = resumeAt.map { now > $0 } ?? true
        var resume = resumeAt
        if accepting != s.accepting {
            if !accepting {
                unwatch(listenDescriptor, s)
            } else if !watch(listenDescriptor, s) {
                s.acceptFailedAt = now // retried at the timer
                accepting = false
                resume = now + Self.acceptRetry
            }
            s.accepting = accepting
        }
        guard timer >= 0 else { return }
        if accepting { resume = nil }
        let moments = [resume.map { max($0, now) }, s.list.first.map { $0.since + Self.requestTimeout }].compactMap { $0 }
        var spec = itimerspec() // zero: disarmed
        if let next = moments.min() {
            let left = max(next - now, .milliseconds(1))
            let (seconds, attoseconds) = left.components
            spec.it_value = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        }
        _ = timerfd_settime(timer, 0, &spec, nil)
    }

    /// Adds `waitSet` to those woken by a request arriving (a C program's event queue); false
    /// (and not added) when it cannot watch what the others watch.
    package func alsoWake(_ waitSet: WaitSet) -> Bool {
        state.withCheckedLock(key: lockKey(self)) { s -> Bool in
            guard !s.stopped else { return false }
            let fds = (s.accepting ? [listenDescriptor] : []) + (timer >= 0 ? [timer] : []) + s.list.map(\.fd)
            for (i, fd) in fds.enumerated() where !waitSet.watch(fd) {
                for earlier in fds[..<i] { waitSet.unwatch(earlier) }
                return false
            }
            s.extraWaitSets.append(waitSet)
            return true
        }
    }

    /// Watches `fd` in every wait set; false (watched by none) when one could not hold it.
    private func watch(_ fd: Int32, _ s: State) -> Bool {
        let sets = (waitSet.map { [$0] } ?? []) + s.extraWaitSets
        for (i, set) in sets.enumerated() where !set.watch(fd) {
            for earlier in sets[..<i] { earlier.unwatch(fd) }
            return false
        }
        return true
    }

    private func unwatch(_ fd: Int32, _ s: State) {
        waitSet?.unwatch(fd)
        for w in s.extraWaitSets { w.unwatch(fd) }
    }
}
