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

    @Test func isANoOpWithoutTheVariable() {
        #expect(SystemdNotifier(environment: [:]).notify("READY=1") == false)
    }

    @Test func watchdogIntervalIsHalfOfWatchdogUsec() {
        #expect(SystemdNotifier.watchdogInterval(environment: ["WATCHDOG_USEC": "30000000"]) == 15)
        #expect(SystemdNotifier.watchdogInterval(environment: ["WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"]) == nil)
        #expect(SystemdNotifier.watchdogInterval(environment: [:]) == nil)
    }
}
