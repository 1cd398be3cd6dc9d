import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A partner that answers every request with the same bytes, exactly as given, then closes the
/// connection: for answers no HTTP server library would send (a status line `000`, say).
/// Blocking sockets on a thread of its own.
public final class RawPartner: Sendable {
    public let port: Int
    private let fd: Int32
    private let answered = Mutex(0)

    public init(answer: String) throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard listener >= 0 else { throw POSIXError(.EIO) }
        var on: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Bool in
                bind(listener, pointer, length) == 0 && listen(listener, 16) == 0 && getsockname(listener, pointer, &length) == 0
            }
        }
        guard bound else {
            Glibc.close(listener)
            throw POSIXError(.EADDRINUSE)
        }
        fd = listener
        port = Int(UInt16(bigEndian: address.sin_port))
        let bytes = Array(answer.utf8)
        Thread { [self] in
            while true {
                let connection = accept(listener, nil, nil)
                if connection < 0 { return }  // stopped
                Self.readRequest(connection)
                _ = bytes.withUnsafeBytes { send(connection, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
                self.answered.withLock { $0 += 1 }
                shutdown(connection, Int32(SHUT_RDWR))
                Glibc.close(connection)
            }
        }.start()
    }

    /// Requests answered so far.
    public var requests: Int { answered.withLock { $0 } }

    /// Stops accepting (the thread ends at its next `accept`).
    public func stop() {
        shutdown(fd, Int32(SHUT_RDWR))
        Glibc.close(fd)
    }

    /// Reads one request: its head, then `Content-Length` bytes of body.
    private static func readRequest(_ connection: Int32) {
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var received = Data()
        var chunk = [UInt8](repeating: 0, count: 65_536)
        let separator = Data("\r\n\r\n".utf8)
        while true {
            if let end = received.range(of: separator) {
                let head = String(decoding: received[..<end.lowerBound], as: UTF8.self).lowercased()
                let declared = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                    .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
                if received.count - end.upperBound >= declared { return }
            }
            let count = recv(connection, &chunk, chunk.count, 0)
            if count <= 0 { return }
            received.append(contentsOf: chunk[0..<count])
        }
    }
}
