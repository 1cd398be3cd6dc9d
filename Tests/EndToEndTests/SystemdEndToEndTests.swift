import CandidateRelay
import CandidateRelayTesting
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The binary under a stand-in for systemd's notify socket: the messages a `Type=notify` unit
/// with `WatchdogSec=` and `ExecReload=kill -HUP` relies on, in order.
@Suite struct SystemdEndToEndTests {
    @Test func notifiesReadyWatchdogStatusReloadingAndStopping() async throws {
        let socket = try NotifySocket()
        defer { socket.close() }
        let dir = try BinaryEndToEndTests.configDirectory(partnerURL: "http://127.0.0.1:9")
        defer { dir.cleanup() }
        let daemon = try RelayProcess(
            arguments: ["serve", "--config", dir.file("config.yaml")],
            environment: ["NOTIFY_SOCKET": socket.path, "WATCHDOG_USEC": "1000000"])
        _ = try await daemon.waitUntilReady()
        #expect(await eventually { socket.messages.contains { $0.hasPrefix("READY=1") } })
        #expect(await eventually { socket.messages.filter { $0 == "WATCHDOG=1" }.count >= 2 })
        #expect(await eventually { socket.messages.contains { $0.hasPrefix("STATUS=pending 0, in_flight 0") } })
        // READY=1 comes before the first WATCHDOG=1.
        let ready = try #require(socket.messages.firstIndex { $0.hasPrefix("READY=1") })
        let firstWatchdog = try #require(socket.messages.firstIndex(of: "WATCHDOG=1"))
        #expect(ready < firstWatchdog)

        daemon.signal(SIGHUP)
        #expect(await eventually { socket.messages.contains { $0.hasPrefix("RELOADING=1\nMONOTONIC_USEC=") } })
        let reloading = try #require(socket.messages.lastIndex { $0.hasPrefix("RELOADING=1") })
        #expect(await eventually { socket.messages[(reloading + 1)...].contains("READY=1") })

        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit() == 0)
        #expect(socket.messages.contains("STOPPING=1"))
    }

    /// STATUS= follows the counts within about a second, not only at the heartbeat.
    @Test func statusFollowsTheCountsBetweenHeartbeats() async throws {
        let socket = try NotifySocket()
        defer { socket.close() }
        let dir = try BinaryEndToEndTests.configDirectory(partnerURL: "http://127.0.0.1:9")
        defer { dir.cleanup() }
        let original = try String(contentsOfFile: dir.file("config.yaml"), encoding: .utf8)
        try dir.write("config.yaml", original.replacingOccurrences(of: "heartbeat_seconds: 1", with: "heartbeat_seconds: 3600"))
        let daemon = try RelayProcess(arguments: ["serve", "--config", dir.file("config.yaml")], environment: ["NOTIFY_SOCKET": socket.path])
        let client = HTTPTestClient(port: try await daemon.waitUntilReady())
        #expect(await eventually { socket.messages.contains { $0.hasPrefix("STATUS=pending 0,") } })
        #expect(try await client.post(Candidates.json(partnerID: "st-1")).status == 202)
        // Pending or already in flight (the partner is unreachable: it goes back and forth).
        #expect(await eventually(timeout: 5) {
            socket.messages.contains { $0.hasPrefix("STATUS=pending 1, in_flight 0,") || $0.hasPrefix("STATUS=pending 0, in_flight 1,") }
        })
        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit() == 0)
    }
}
