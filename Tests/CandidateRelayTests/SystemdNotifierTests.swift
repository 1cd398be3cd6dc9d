import CandidateRelayTesting
import Foundation
import Testing
@testable import CandidateRelay

/// sd_notify against a real datagram socket, filesystem and abstract.
@Suite struct SystemdNotifierTests {
    @Test func sendsToAFilesystemSocket() async throws {
        let socket = try NotifySocket()
        defer { socket.close() }
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": socket.path])
        #expect(notifier.notify("READY=1\nSTATUS=listening"))
        #expect(notifier.notify("WATCHDOG=1"))
        #expect(await eventually { socket.messages == ["READY=1\nSTATUS=listening", "WATCHDOG=1"] })
    }

    @Test func sendsToAnAbstractSocket() async throws {
        let socket = try NotifySocket(path: "@candidate-relay-test-\(UUID().uuidString.prefix(8))")
        defer { socket.close() }
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": socket.path])
        #expect(notifier.notify("STOPPING=1"))
        #expect(await eventually { socket.messages == ["STOPPING=1"] })
    }

    /// A receiver that stops reading must not block the sender: the messages are dropped.
    @Test(.timeLimit(.minutes(1))) func neverBlocksWhenTheReceiverDoesNotRead() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("notify-unread-\(UUID().uuidString.prefix(8))").path
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(fd); unlink(path) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let bound = withUnsafePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": path])
        // Far more than a datagram queue holds; the bound is the time limit, not a clock.
        var dropped = 0
        for n in 0..<20_000 where !notifier.notify("STATUS=pending \(n)") { dropped += 1 }
        #expect(dropped > 0)
    }

    @Test func isANoOpWithoutTheVariable() {
        #expect(SystemdNotifier(environment: [:]).notify("READY=1") == false)
    }

    @Test func watchdogIntervalIsHalfOfWatchdogUsec() {
        #expect(SystemdNotifier.watchdogInterval(environment: ["WATCHDOG_USEC": "30000000"]) == 15)
        #expect(SystemdNotifier.watchdogInterval(environment: ["WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"]) == nil)
        #expect(SystemdNotifier.watchdogInterval(environment: [:]) == nil)
    }
}
