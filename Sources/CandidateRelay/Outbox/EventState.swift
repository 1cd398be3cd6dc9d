import Foundation
import Synchronization

/// The closed set of event states (CONTRACT section 5), mirrored by the schema's CHECK constraint.
public enum EventState: String, Sendable, Codable, CaseIterable {
    case pending
    case inFlight = "in_flight"
    case delivered
    case linked
    case dead

    /// States after which nothing more is sent.
    public var isTerminal: Bool { self == .delivered || self == .linked || self == .dead }
}

/// Milliseconds since the Unix epoch: how the outbox stores time (exact, sortable, cheap).
public typealias Millis = Int64

extension Date {
    var millis: Millis { Millis((timeIntervalSince1970 * 1000).rounded()) }
    init(millis: Millis) { self.init(timeIntervalSince1970: Double(millis) / 1000) }
}

/// Event identifiers: `evt_` + 12 hex digits of milliseconds + 16 random hex digits, so ids sort
/// by arrival and never collide across restarts.
public enum EventID {
    public static func generate(now: Date = Date()) -> String {
        let time = UInt64(max(0, now.millis))
        // 12 digits until the year 10889; more, as many as it takes (never cut).
        let timeDigits = max(12, (64 - time.leadingZeroBitCount + 3) / 4)
        let random = RandomWords.next()
        // Written in one buffer: the `String(radix:)`s, paddings and concatenations took ~1 % of
        // ingest's CPU (perf).
        return String(unsafeUninitializedCapacity: 4 + timeDigits + 16) { buffer in
            for (offset, byte) in "evt_".utf8.enumerated() { buffer[offset] = byte }
            Hex.write(time, digits: timeDigits, into: buffer, at: 4)
            Hex.write(random, digits: 16, into: buffer, at: 4 + timeDigits)
            return 4 + timeDigits + 16
        }
    }
}

/// The kernel's random bytes, read from `/dev/urandom` 4 KiB at a time and handed out eight
/// bytes per word: one system call per 512 event ids, where `UInt64.random` made one
/// (`getrandom`) per id (perf: ~0.6 % of ingest's CPU in the call). Each word is used once.
/// Without the device (a sandbox without `/dev`; no descriptor left), the standard generator,
/// a call per word, and the device is tried again at the next read. Its descriptor stays open
/// for the life of the process, as the pool does.
enum RandomWords {
    private static let wordsPerRead = 512
    private static let pool = Mutex<(words: [UInt64], next: Int, device: Int32?)>(([], 0, nil))

    static func next() -> UInt64 {
        pool.withLock { pool in
            if pool.next == pool.words.count {
                if (pool.device ?? -1) < 0 { pool.device = open("/dev/urandom", O_RDONLY | O_CLOEXEC) }
                pool.words = refill(device: pool.device ?? -1)
                pool.next = 0
            }
            defer { pool.next += 1 }
            return pool.words[pool.next]
        }
    }

    private static func refill(device: Int32) -> [UInt64] {
        var words = [UInt64](repeating: 0, count: wordsPerRead)
        let filled = device >= 0 && words.withUnsafeMutableBytes { buffer -> Bool in
            var offset = 0
            while offset < buffer.count {
                let count = read(device, buffer.baseAddress! + offset, buffer.count - offset)
                if count > 0 {
                    offset += count
                } else if count < 0 && errno == EINTR {
                    continue
                } else {
                    return false
                }
            }
            return true
        }
        if filled { return words }
        var generator = SystemRandomNumberGenerator()
        return words.map { _ in generator.next() }
    }
}

/// Lowercase hexadecimal, written straight into a string's bytes.
enum Hex {
    static let digits: [UInt8] = Array("0123456789abcdef".utf8)

    /// `value`'s last `digits` hex digits, zero-padded, at `buffer[start...]`.
    static func write(_ value: UInt64, digits count: Int, into buffer: UnsafeMutableBufferPointer<UInt8>, at start: Int) {
        var rest = value
        for offset in stride(from: start + count - 1, through: start, by: -1) {
            buffer[offset] = digits[Int(rest & 0x0f)]
            rest >>= 4
        }
    }

    /// Each byte as two digits.
    static func string<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> String {
        String(unsafeUninitializedCapacity: 2 * bytes.count) { buffer in
            var offset = 0
            for byte in bytes {
                buffer[offset] = digits[Int(byte >> 4)]
                buffer[offset + 1] = digits[Int(byte & 0x0f)]
                offset += 2
            }
            return offset
        }
    }
}
