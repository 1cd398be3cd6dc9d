import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One TCP connection speaking raw HTTP/1.1, for what a well-behaved client never does:
/// pipelined requests in one write, `Expect: 100-continue`, a half-close, bytes that are not
/// HTTP. Blocking calls on a thread of their own (never on the test's executor).
public final class RawHTTPConnection: @unchecked Sendable {
    /// One answer as it came off the wire.
    public struct Answer: Sendable {
        public let status: Int
        /// Header names lowercased.
        public let headers: [String: String]
        public let body: Data
        public var json: [String: Any] { (try? JSONSerialization.jsonObject(with: body) as? [String: Any]) ?? [:] }
    }

    private let fd: Int32
    private var buffer = Data()

    public init(port: Int, timeoutSeconds: Int = 10) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            Glibc.close(fd)
            throw POSIXError(.ECONNREFUSED)
        }
    }

    deinit { Glibc.close(fd) }

    /// Sends every byte of `text` (or `data`) in as few writes as the kernel takes.
    public func send(_ text: String) { send(Data(text.utf8)) }

    public func send(_ data: Data) {
        data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let sent = Glibc.send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if sent <= 0 { return }
                offset += sent
            }
        }
    }

    /// Closes the sending half: the server sees the end of the input.
    public func closeSending() { shutdown(fd, Int32(SHUT_WR)) }

    /// Ends the connection both ways (the descriptor itself is closed with the object).
    public func close() { shutdown(fd, Int32(SHUT_RDWR)) }

    /// The next answer, or nil when the connection closed (or timed out) before a whole one came.
    public func readAnswer() async -> Answer? {
        await withCheckedContinuation { continuation in
            Thread { continuation.resume(returning: self.readAnswerBlocking()) }.start()
        }
    }

    /// Whether the server closed the connection (reads the end of the stream within the timeout).
    public func isClosedByServer() async -> Bool {
        await withCheckedContinuation { continuation in
            Thread {
                var byte: UInt8 = 0
                continuation.resume(returning: self.buffer.isEmpty && recv(self.fd, &byte, 1, 0) == 0)
            }.start()
        }
    }

    private func readAnswerBlocking() -> Answer? {
        let separator = Data("\r\n\r\n".utf8)
        while true {
            if let end = buffer.range(of: separator) {
                let head = String(decoding: buffer[buffer.startIndex..<end.lowerBound], as: UTF8.self)
                var lines = head.components(separatedBy: "\r\n")
                let statusLine = lines.removeFirst().split(separator: " ")
                guard statusLine.count >= 2, let status = Int(statusLine[1]) else { return nil }
                var headers: [String: String] = [:]
                for line in lines {
                    guard let colon = line.firstIndex(of: ":") else { continue }
                    headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                }
                let length = Int(headers["content-length"] ?? "0") ?? 0
                let bodyStart = end.upperBound
                while buffer.count - (bodyStart - buffer.startIndex) < length {
                    guard fill() else { return nil }
                }
                let body = Data(buffer[bodyStart..<(bodyStart + length)])
                buffer = Data(buffer[(bodyStart + length)...])
                return Answer(status: status, headers: headers, body: body)
            }
            guard fill() else { return nil }
        }
    }

    /// Reads what is there into the buffer; false at the end of the stream or a timeout.
    private func fill() -> Bool {
        var chunk = [UInt8](repeating: 0, count: 65_536)
        let count = recv(fd, &chunk, chunk.count, 0)
        guard count > 0 else { return false }
        buffer.append(contentsOf: chunk[0..<count])
        return true
    }
}
