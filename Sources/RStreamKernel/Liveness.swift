#if canImport(Glibc)
import Glibc
#endif

/// Protocol v4's liveness duty for one stream, kept by the progress shard: a heartbeat is due when
/// this side has posted no word for `beatInterval`, and the peer is declared gone when it has sent
/// no word for the peer timeout *while this side was driven*. It only judges; the engine posts the
/// heartbeat and fails the stream.
///
/// It needs no clock on the send path: "posted" is the engine's count of operations taken,
/// compared with what it was at the last check. Its clock is `CLOCK_MONOTONIC_COARSE` (a few
/// milliseconds of resolution, read without a system call), ample for one-second heartbeats.
///
/// Time this side spends undriven is not the peer's silence: after a gap of more than
/// `longestGap` between checks the silence clock starts again (the peer, which this side did not
/// answer meanwhile, is given a full timeout to be heard from), so a stream used again after an
/// idle spell is not failed at once.
///
/// Invariant: `lastHeard`, `lastPosted` and `lastCheck` are instants given to `check`, never later
/// than the latest one.
package struct Liveness: Sendable {
    package static let beatInterval: Duration = .seconds(1)
    /// The shortest peer timeout a stream may ask for: a few heartbeat intervals, so that a
    /// heartbeat late by one check interval is never taken for silence.
    package static let shortestPeerTimeout: Duration = .seconds(3)
    /// A gap between checks longer than this means this side was not driven.
    package static let longestGap: Duration = .seconds(2)

    package enum Verdict: Equatable, Sendable {
        case quiet
        case beatDue
        case peerSilent(Duration)
    }

    /// nil: the peer may be silent for ever.
    package let peerTimeout: Duration?
    // Nanoseconds of the liveness clock: compared on every progress step, so plain integers.
    private let timeoutNanoseconds: Int64?
    private var lastHeard: Int64
    private var lastPosted: Int64
    private var lastCheck: Int64
    private var postedSeen = 0

    private static let beatNanoseconds = nanoseconds(beatInterval)
    private static let longestGapNanoseconds = nanoseconds(longestGap)

    private static func nanoseconds(_ d: Duration) -> Int64 {
        let (seconds, attoseconds) = d.components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }

    /// The liveness clock: monotonic, coarse, cheap.
    @inline(__always)
    package static func now() -> Duration { .nanoseconds(nowTicks()) }

    /// The same clock in nanoseconds: it moves once per tick (a few milliseconds), so a caller can
    /// do something at most once per tick without a system call.
    @inline(__always)
    package static func nowTicks() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    package init(peerTimeout: Duration?, now: Duration) {
        self.init(peerTimeout: peerTimeout, nowTicks: Self.nanoseconds(now))
    }

    package init(peerTimeout: Duration?, nowTicks now: Int64) {
        self.peerTimeout = peerTimeout
        timeoutNanoseconds = peerTimeout.map(Self.nanoseconds)
        lastHeard = now
        lastPosted = now
        lastCheck = now
    }

    /// How long since the peer's last word (as of the last look).
    package var silence: Duration { .nanoseconds(lastCheck - lastHeard) }

    package mutating func check(heard: Bool, posted: Int, finished: Bool, now: Duration) -> Verdict {
        check(heard: heard, posted: posted, finished: finished, nowTicks: Self.nanoseconds(now))
    }

    /// One look: `heard` when a word arrived since the last look, `posted` the running count of
    /// operations this side has posted, `finished` when nothing more is owed either way (the
    /// peer's FIN has arrived, and this side's FIN has gone or the peer has disconnected): no
    /// heartbeat, no timeout.
    @inline(__always)
    package mutating func check(heard: Bool, posted: Int, finished: Bool, nowTicks now: Int64) -> Verdict {
        if heard || now - lastCheck > Self.longestGapNanoseconds { lastHeard = now }
        lastCheck = now
        if posted != postedSeen {
            postedSeen = posted
            lastPosted = now
        }
        guard !finished else { return .quiet }
        if let timeoutNanoseconds, now - lastHeard >= timeoutNanoseconds { return .peerSilent(.nanoseconds(now - lastHeard)) }
        return now - lastPosted >= Self.beatNanoseconds ? .beatDue : .quiet
    }
}
