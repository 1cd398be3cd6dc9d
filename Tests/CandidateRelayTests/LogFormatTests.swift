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
            // ...and C1 too (U+009B, an 8-bit CSI, reached `tail -f` raw: found from outside).
            case .json: scalar.properties.generalCategory == .control || scalar.value == 0x2028
            case .logfmt: scalar.properties.generalCategory == .control || scalar.value == 0x2028
            }
        }
        #expect(raw.isEmpty, "\(raw.map(\.value))")
    }

    /// Found from outside: `oldest_pending_age_seconds` was `0` in one line and `2.9` in the
    /// next (a store typing a field by its first value cut later fractions); counts were strings.
    @Test(arguments: [LoggingConfiguration.Format.json, .logfmt])
    func durationsAlwaysHaveAFractionAndCountsAreWhole(format: LoggingConfiguration.Format) {
        let logs = LogCapture()
        let logger = Logger(label: "t") { RelayLogHandler(label: $0, settings: LogSettings(level: .info, format: format), output: logs.output) }
        logger.event(.notice, "relay.heartbeat", "h", LogFields(numbers: ["oldest_pending_age_seconds": 0, "step_seconds": 2.9, "count": 3]))
        let text = logs.text
        let (open, close) = format == .json ? ("\"", "\":") : ("", "=")
        #expect(text.contains(open + "oldest_pending_age_seconds" + close + "0.0"), "\(text)")
        #expect(text.contains(open + "step_seconds" + close + "2.9"), "\(text)")
        #expect(text.contains(open + "count" + close + "3" + (format == .json ? "," : "")) || text.contains(open + "count" + close + "3}"), "\(text)")
        #expect(!text.contains("count" + close + "3.0"))
    }

    /// Found from outside: 250 accounts with missing secret files made `config.file_invalid` a
    /// 60 KB line, which journald splits at 48 KB into pieces that are not JSON.
    @Test func aConfigsProblemsFitInOneJournalLine() {
        let problems = (0..<300).map { "accounts.customer-\($0).signing_secrets_file: /etc/credstore/customer-\($0)-whsec does not exist " + String(repeating: "x", count: 100) }
        let field = RelayApplication.problemsField(problems)
        #expect(field.utf8.count < RelayApplication.maxProblemsBytes + 100)
        let kept = field.components(separatedBy: "; ").count - 1
        #expect(kept > 10 && field.hasSuffix("and \(300 - kept) more (candidate-relay check-config lists every problem)"), "\(field.suffix(120))")
        #expect(RelayApplication.problemsField(Array(problems.prefix(3))) == problems.prefix(3).joined(separator: "; "))
        let huge = RelayApplication.problemsField(["x" + String(repeating: "é", count: 10_000), "second"])
        #expect(!huge.contains("\u{FFFD}"))  // cut between characters (the odd byte count puts one across the limit)
        #expect(huge.utf8.count < RelayApplication.maxProblemsBytes + 100 && huge.hasSuffix("…; and 1 more (candidate-relay check-config lists every problem)"))
    }

    @Test func logfmtValuesRoundTrip() {
        #expect(RelayLogHandler.quoted("plain") == "plain")
        #expect(RelayLogHandler.quoted("") == "\"\"")
        #expect(RelayLogHandler.quoted("a b") == "\"a b\"")
        #expect(RelayLogHandler.quoted("a\r\nb\t\u{1B}") == #""a\r\nb\t\u001b""#)
        // JSON's escapes, which logfmt readers (go-logfmt, Loki) decode; past U+FFFF a UTF-16 pair.
        #expect(RelayLogHandler.quoted("c\u{85}\u{2028}\u{202E}\u{E0041}") == #""c\u0085\u2028\u202e\udb40\udc41""#)
        #expect(RelayLogHandler.quoted(#"q"\"#) == #""q\"\\""#)
    }

    /// The JSON writer's quoting (202 answers, JSON log lines, the partner summary): the fast
    /// path for plain text and the escaping path give text that parses back to the same string,
    /// with no raw control character or line separator left.
    @Test(arguments: ["", "plain ascii", "Zoë Ñandú 東京 🚀", "em—dash starts with E2", "line\u{2028}sep\u{2029}",
                      "q\"b\\s/", "ctl\u{0}\u{1F}\u{7F}\n\r\t", "c1\u{85}\u{9B}2J é\u{80}", "bidi\u{202E}txt\u{2066}",
                      "marks\u{200E}\u{200F}\u{61C} عربي", "hidden\u{200B}\u{FEFF}\u{2060}x", "ｆｕｌｌ", "shy\u{AD}\u{3164}\u{E0041}\u{FFF9} かな 한국"])
    func contractJSONQuotingRoundTrips(text: String) throws {
        let quoted = ContractJSON.quoted(text)
        let parsed = try JSONSerialization.jsonObject(with: Data("[\(quoted)]".utf8)) as? [String]
        #expect(parsed == [text])
        #expect(!quoted.unicodeScalars.contains {
            $0.value < 0x20 || (0x7F...0x9F).contains($0.value) || $0.value == 0x2028 || $0.value == 0x2029
                || (0x202A...0x202E).contains($0.value) || (0x2066...0x2069).contains($0.value)
                || [0xAD, 0x061C, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x2060, 0x3164, 0xFEFF, 0xFFF9, 0xE0041].contains($0.value)
        })
        let document = JSONValue.object(["b": .array([.string(text), .number(3), .null, .bool(true)]), "a": .number(1.5)])
        #expect(document.jsonText == "{\"a\":1.5,\"b\":[\(quoted),3,null,true]}")
    }
}

/// One line per interval for a failure that repeats per request, and the count left out.
@Suite struct LogThrottleTests {
    @Test func oneLineASecondWithTheCountLeftOut() {
        let throttle = LogThrottle(seconds: 1)
        let start = Date(timeIntervalSince1970: 1_000)
        #expect(throttle.admit(now: start) == 0)
        #expect(throttle.admit(now: start.addingTimeInterval(0.2)) == nil)
        #expect(throttle.admit(now: start.addingTimeInterval(0.9)) == nil)
        #expect(throttle.admit(now: start.addingTimeInterval(1.0)) == 2)
        #expect(throttle.admit(now: start.addingTimeInterval(5)) == 0)
        // The clock set back ten minutes: a new interval, not ten minutes of silence.
        #expect(throttle.admit(now: start.addingTimeInterval(5.5 - 600)) == 0)
        #expect(throttle.admit(now: start.addingTimeInterval(5.7 - 600)) == nil)
        #expect(throttle.admit(now: start.addingTimeInterval(6.5 - 600)) == 1)
    }
}
