/// Protocol v4's liveness duty for one stream, kept by the progress shard: a heartbeat is due when
/// this side has posted no word for `beatInterval`, and the peer is declared gone when it has sent
/// no word for the peer timeout. It only judges; the engine posts the heartbeat and fails the
/// stream.
///
/// It needs no clock of its own on the send path: "posted" is the engine's count of operations
/// taken, compared with what it was at the last check, so a heartbeat may come up to one check
/// interval late (checks run on every drive; the library's waits drive at least twice a second).
///
/// Invariant: `lastHeard` and `lastPosted` are instants given to `check`, never later than the
/// latest one.
package struct Liveness: Sendable {
    package static let beatInterval: Duration = .seconds(1)
    /// The shortest peer timeout a stream may ask for: a few heartbeat intervals, so that a
    /// heartbeat late by one check interval is never taken for silence.
    package static let shortestPeerTimeout: Duration = .seconds(3)

    package enum Verdict: Equatable, Sendable {
        case quiet
        case beatDue
        case peerSilent(Duration)
    }

    /// nil: the peer may be silent for ever.
    package let peerTimeout: Duration?
    private var lastHeard: ContinuousClock.Instant
    private var lastPosted: ContinuousClock.Instant
    private var postedSeen = 0

    package init(peerTimeout: Duration?, now: ContinuousClock.Instant) {
        self.peerTimeout = peerTimeout
        lastHeard = now
        lastPosted = now
    }

    /// One look: `heard` when a word arrived since the last look, `posted` the running count of
    /// operations this side has posted, `finished` when both FINs have crossed (nothing more is
    /// owed either way: no heartbeat, no timeout).
    package mutating func check(heard: Bool, posted: Int, finished: Bool, now: ContinuousClock.Instant) -> Verdict {
        if heard { lastHeard = now }
        if posted != postedSeen {
            postedSeen = posted
            lastPosted = now
        }
        guard !finished else { return .quiet }
        if let peerTimeout, now - lastHeard >= peerTimeout { return .peerSilent(now - lastHeard) }
        return now - lastPosted >= Self.beatInterval ? .beatDue : .quiet
    }
}
