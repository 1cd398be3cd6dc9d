import CandidateRelayTesting
import Foundation
import Logging
import Testing
@testable import CandidateRelay

/// A value that came from a request (a header, an id) must not forge a log line or reach an
/// operator's terminal as an escape sequence, in either format.
@Suite struct LogFormatTests {
    static let hostile = "id\r\nts=2026 level=critical event=relay.stopped\u{1B}[2J\u{7F}\u{9B}31m\u{2028}\t\"\\ end"

    static func line(format: LoggingConfiguration.Format) -> String {
        let logs = LogCapture()
        let logger = Logger(label: "t") { RelayLogHandler(label: $0, settings: LogSettings(level: .info, format: format), output: logs.output) }
        logger.event(.notice, "ingest.rejected", "webhook rejected", LogFields(eventID: hostile, extra: ["key": hostile]))
        return logs.text
    }

    @Test(arguments: [LoggingConfiguration.Format.logfmt, .json])
    func oneLineWithoutRawControlCharacters(format: LoggingConfiguration.Format) {
        let text = Self.line(format: format)
        #expect(text.hasSuffix("\n"))
        let body = text.dropLast()
        // JSON escapes C0 (no forged line, no ESC); logfmt escapes every control character.
        let raw = body.unicodeScalars.filter { scalar in
            switch format {
            case .json: scalar.value < 0x20
            case .logfmt: scalar.properties.generalCategory == .control || scalar.value == 0x2028
            }
        }
        #expect(raw.isEmpty, "\(raw.map(\.value))")
    }

    @Test func logfmtValuesRoundTrip() {
        #expect(RelayLogHandler.quoted("plain") == "plain")
        #expect(RelayLogHandler.quoted("") == "\"\"")
        #expect(RelayLogHandler.quoted("a b") == "\"a b\"")
        #expect(RelayLogHandler.quoted("a\r\nb\t\u{1B}") == #""a\r\nb\t\u{1b}""#)
        #expect(RelayLogHandler.quoted(#"q"\"#) == #""q\"\\""#)
    }
}
