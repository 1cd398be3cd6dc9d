import CandidateRelayTesting
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The README's first command: `serve --demo`, then the printed curl, then the record delivered.
@Suite struct DemoEndToEndTests {
    @Test func demoPrintsIngestAndDeliversThePrintedCandidate() async throws {
        let demo = try RelayProcess(arguments: ["serve", "--demo"])
        #expect(await eventually(timeout: 30) { demo.text.contains("Ingest: http://127.0.0.1:") })
        let line = try #require(demo.text.split(separator: "\n").first { $0.hasPrefix("Ingest: ") })
        let url = String(line.dropFirst("Ingest: ".count))
        let curl = try #require(demo.text.split(separator: "\n").first { $0.contains("curl -si -X POST") })
        // The body of the printed curl line, between -d '...'.
        let body = try #require(curl.components(separatedBy: " -d '").last?.dropLast())
        let base = String(url.dropLast("/v1/candidates".count))
        let client = HTTPTestClient(baseURL: base)
        let reply = try await client.post(String(body), key: "demo-1")
        #expect(reply.status == 202)
        let id = try #require(reply.json["id"] as? String)
        let delivered = try await eventually(timeout: 10) { try await client.record(id)?["state"] as? String == "delivered" }
        #expect(delivered)
        demo.signal(SIGINT)
        #expect(await demo.waitForExit() == 0)
        // The temporary state directory is removed on exit.
        let stateLine = try #require(demo.text.split(separator: "\n").first { $0.contains("state in ") })
        let directory = try #require(stateLine.components(separatedBy: "state in ").last?.components(separatedBy: " ").first)
        #expect(!FileManager.default.fileExists(atPath: directory))
    }
}
