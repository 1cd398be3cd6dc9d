import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A datagram socket standing in for systemd's `$NOTIFY_SOCKET`: collects every message sent to
/// it. `path` starting with "@" binds in the abstract namespace.
public final class NotifySocket: Sendable {
    public let path: String
    let fd: Int32
    private let stopped = Atomic<Bool>(false)

    public init(path: String = FileManager.default.temporaryDirectory.appendingPathComponent("notify-\(UUID().uuidString.prefix(8))").path) throws {
        self.path = path
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (bytes.first == 0 ? 0 : 1))
        let result = withUnsafePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard result == 0 else {
            Glibc.close(fd)
            throw POSIXError(.EADDRINUSE)
        }
        var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        self.fd = fd
        let box = MessageBox()
        messageBox = box
        DispatchQueue.global().async { [self] in
            var buffer = [UInt8](repeating: 0, count: 4096)
            while !self.stopped.load(ordering: .relaxed) {
                let n = recv(fd, &buffer, buffer.count, 0)
                if n > 0 { box.append(String(decoding: buffer[0..<n], as: UTF8.self)) }
            }
        }
    }

    private let messageBox: MessageBox

    /// Every datagram received so far, in order.
    public var messages: [String] { messageBox.all }

    public func close() {
        stopped.store(true, ordering: .relaxed)
        Thread.sleep(forTimeInterval: 0.3)
        Glibc.close(fd)
        if !path.hasPrefix("@") { unlink(path) }
    }
}

final class MessageBox: Sendable {
    private let storage = Mutex<[String]>([])
    func append(_ message: String) { storage.withLock { $0.append(message) } }
    var all: [String] { storage.withLock { $0 } }
}
