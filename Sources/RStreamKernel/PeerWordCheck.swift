/// What a peer's word asks of the progress shard, once it passed every check.
enum PeerWordEffect: Equatable {
    /// DATA: `bytes` were placed at the receive ring's write offset.
    case placed(bytes: Int)
    /// CONTROL: ring space and receives returned, and whether the peer sent its FIN.
    case returned(freed: Int, credits: Int, fin: Bool)
}

/// Protocol v4's checks of one word from the peer ("Protocol errors"), as pure functions: every
/// word is refused or turned into what it does, and nothing of it is used before that. A word is
/// decoded first (`check`), then checked against the bounds its kind needs (`checkData`,
/// `checkControl`), so that the progress shard reads only those counters.
enum PeerWordCheck {
    /// The word decoded, refused if invalid or not allowed after the peer's FIN.
    @inline(__always)
    static func check(_ word: UInt32, finReceived: Bool) throws(RStreamError) -> NotificationWord {
        let decoded = try NotificationWord.decode(word)
        // After FIN the peer may still return credits and ring space for what we send
        // (half-close), but only in CONTROL words that repeat the FIN bit.
        if finReceived {
            guard case .control(_, _, true, _) = decoded else {
                throw .protocolViolation("word 0x\(String(word, radix: 16)) after FIN")
            }
        }
        return decoded
    }

    /// DATA of `n` bytes must fit the free bytes of the receive ring from its write offset to the
    /// ring's end or the reader (`contiguousFree`).
    @inline(__always)
    static func checkData(_ n: Int, contiguousFree: Int, writeOffset: Int) throws(RStreamError) -> PeerWordEffect {
        guard n <= contiguousFree else {
            throw .protocolViolation("DATA of \(n) bytes at offset \(writeOffset) beyond the \(contiguousFree) free bytes of the receive ring")
        }
        return .placed(bytes: n)
    }

    /// CONTROL may return no more receives than our words use (`peerReceivesInUse` of the peer's
    /// `peerRxCredits`) and no more ring bytes than we wrote and were not given back.
    @inline(__always)
    static func checkControl(freed: Int, credits: Int, fin: Bool, peerReceivesInUse: Int, peerRxCredits: Int,
                             peerBytesInUse: Int, peerRingSize: Int) throws(RStreamError) -> PeerWordEffect {
        guard credits <= peerReceivesInUse else {
            throw .protocolViolation("CONTROL returns \(credits) credits; \(peerReceivesInUse) of \(peerRxCredits) are in use")
        }
        guard freed <= peerBytesInUse else {
            throw .protocolViolation("CONTROL frees \(freed) bytes; \(peerBytesInUse) of \(peerRingSize) are in use")
        }
        return .returned(freed: freed, credits: credits, fin: fin)
    }
}
