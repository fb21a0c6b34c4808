/// What a peer's word asks of the progress shard, once it passed every check.
enum PeerWordEffect: Equatable {
    /// DATA: `bytes` were placed at the receive ring's write offset.
    case placed(bytes: Int)
    /// CONTROL: ring space and receives returned, and whether the peer sent its FIN.
    case returned(freed: Int, credits: Int, fin: Bool)
}

/// What this side knew when a word arrived: the bounds a word is checked against.
struct PeerWordBounds {
    /// The peer's FIN came earlier: only CONTROL words with FIN set may follow.
    var finReceived: Bool
    /// Free bytes of the receive ring from its write offset to the ring's end or the reader.
    var contiguousFree: Int
    var writeOffset: Int
    /// Our words that used a peer receive and whose credits have not come back.
    var peerReceivesInUse: Int
    var peerRxCredits: Int
    /// Bytes we wrote to the peer's ring whose space has not come back.
    var peerBytesInUse: Int
    var peerRingSize: Int
}

/// Protocol v4's checks of one word from the peer ("Protocol errors"), as a pure function: every
/// word is refused or turned into what it does, and nothing of it is used before that.
enum PeerWordCheck {
    static func check(_ word: UInt32, within bounds: PeerWordBounds) throws(RStreamError) -> PeerWordEffect {
        let decoded = try NotificationWord.decode(word)
        // After FIN the peer may still return credits and ring space for what we send
        // (half-close), but only in CONTROL words that repeat the FIN bit.
        if bounds.finReceived {
            guard case .control(_, _, true, _) = decoded else {
                throw .protocolViolation("word 0x\(String(word, radix: 16)) after FIN")
            }
        }
        switch decoded {
        case .data(let n):
            guard n <= bounds.contiguousFree else {
                throw .protocolViolation("DATA of \(n) bytes at offset \(bounds.writeOffset) beyond the \(bounds.contiguousFree) free bytes of the receive ring")
            }
            return .placed(bytes: n)
        case .control(let freed, let credits, let fin, _):
            guard credits <= bounds.peerReceivesInUse else {
                throw .protocolViolation("CONTROL returns \(credits) credits; \(bounds.peerReceivesInUse) of \(bounds.peerRxCredits) are in use")
            }
            guard freed <= bounds.peerBytesInUse else {
                throw .protocolViolation("CONTROL frees \(freed) bytes; \(bounds.peerBytesInUse) of \(bounds.peerRingSize) are in use")
            }
            return .returned(freed: freed, credits: credits, fin: fin)
        }
    }
}
