import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Writes to standard output and standard error that fail instead of crashing.
///
/// Foundation's `FileHandle.write(_:)` traps on any error: a log reader that went away (a pipe
/// into `logger` or a shipper that exited: `EPIPE`), a log file on a full disk (`ENOSPC`), a
/// broken terminal (`EIO`) took the whole daemon down at its next log line, deliveries in flight
/// included. Here such a write only returns `false`, and the caller decides (a log line is
/// dropped and counted).
///
/// A descriptor left non-blocking by whoever started the process is waited on, as a blocking one
/// would be: a slow reader delays log lines as it always did, it does not lose them.
public enum StandardStream {
    /// Writes all of `text` to `descriptor`; `false` when the descriptor refused it (the part
    /// already written stays written).
    @discardableResult
    public static func write(_ text: String, to descriptor: Int32) -> Bool {
        var text = text
        return text.withUTF8 { bytes in
            guard var next = bytes.baseAddress else { return true }
            var left = bytes.count
            while left > 0 {
                let written = Glibc.write(descriptor, next, left)
                if written > 0 {
                    next += written
                    left -= written
                    continue
                }
                if written < 0 && errno == EINTR { continue }
                if written < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                    var wanted = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
                    if poll(&wanted, 1, -1) < 0 && errno != EINTR { return false }
                    continue
                }
                return false
            }
            return true
        }
    }
}
