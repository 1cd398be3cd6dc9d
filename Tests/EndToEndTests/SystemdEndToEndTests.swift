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

    /// A config file that stops loading while the daemon runs (a reload refused, an edit not
    /// reloaded) is said in the log, STATUS= and /metrics: a crash or reboot would exit 78, which
    /// the unit does not restart (found from outside: delivery then stopped until someone looked).
    /// Once it loads again, that is said too.
    @Test func aConfigFileThatNoLongerLoadsIsSaidBeforeARestartFails() async throws {
        let socket = try NotifySocket()
        defer { socket.close() }
        let dir = try BinaryEndToEndTests.configDirectory(partnerURL: "http://127.0.0.1:9")
        defer { dir.cleanup() }
        let good = try String(contentsOfFile: dir.file("config.yaml"), encoding: .utf8)
        let daemon = try RelayProcess(arguments: ["serve", "--config", dir.file("config.yaml")], environment: ["NOTIFY_SOCKET": socket.path])
        let client = HTTPTestClient(port: try await daemon.waitUntilReady())
        #expect(await eventually { socket.messages.contains { $0.hasPrefix("STATUS=pending 0,") } })
        #expect(try await Self.metrics(client).contains("candidate_relay_config_file_valid 1"))

        try dir.write("config.yaml", good.replacingOccurrences(of: "shutdown_grace_seconds: 1", with: "shutdown_grace_seconds: 1\n  workers: 0"))
        #expect(await eventually(timeout: 5) { !daemon.events("config.file_invalid").isEmpty })
        let invalid = try #require(daemon.events("config.file_invalid").first)
        #expect(invalid["level"] as? String == "warning")
        #expect((invalid["problems"] as? String)?.contains("delivery.workers") == true)
        #expect(await eventually(timeout: 5) { socket.messages.contains { $0.hasPrefix("STATUS=pending 0,") && $0.contains("; config file invalid") } })
        #expect(try await Self.metrics(client).contains("candidate_relay_config_file_valid 0"))
        // Said once, not at every look.
        try await Task.sleep(for: .seconds(2.5))
        #expect(daemon.events("config.file_invalid").count == 1)
        // Still serving and running on the configuration it has.
        #expect(try await client.post(Candidates.json(partnerID: "cfw-1")).status == 202)

        try dir.write("config.yaml", good)
        #expect(await eventually(timeout: 5) { !daemon.events("config.file_valid").isEmpty })
        #expect(try await Self.metrics(client).contains("candidate_relay_config_file_valid 1"))
        #expect(await eventually(timeout: 5) { socket.messages.last { $0.hasPrefix("STATUS=") }?.contains("config file invalid") == false })
        daemon.signal(SIGTERM)
        #expect(await daemon.waitForExit() == 0)
    }

    static func metrics(_ client: HTTPTestClient) async throws -> String {
        String(decoding: try await client.request("GET", "/metrics").body, as: UTF8.self)
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
