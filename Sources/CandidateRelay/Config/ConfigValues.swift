import Configuration
import Foundation

/// Reads raw values through swift-configuration and converts them itself, so that a value of the
/// wrong type is reported ("delivery.workers: expected an integer, got \"four\"") instead of
/// silently replaced by the default, which is what a plain `int(forKey:default:)` would do.
struct ConfigValues {
    let reader: ConfigReader
    private(set) var problems: [ConfigurationProblem] = []

    init(reader: ConfigReader) {
        self.reader = reader
    }

    /// The raw text of a key, `nil` when absent or YAML null.
    func raw(_ key: String) -> String? {
        guard let value = reader.string(forKey: ConfigKey(key)) else { return nil }
        let trimmed = value.trimmingCharacters(in: .whitespaces)
        if trimmed.isEmpty || trimmed == "null" || trimmed == "~" { return nil }
        return trimmed
    }

    /// Whether the key is given at all (an explicit null included).
    func isSet(_ key: String) -> Bool {
        reader.string(forKey: ConfigKey(key)) != nil
    }

    mutating func string(_ key: String, _ fallback: String) -> String {
        raw(key) ?? fallback
    }

    /// A key whose explicit `null` means "off" (e.g. `bearer_token_file: null`), distinct from absent.
    func optionalString(_ key: String, default fallback: String?) -> String? {
        guard let value = reader.string(forKey: ConfigKey(key)) else { return fallback }
        let trimmed = value.trimmingCharacters(in: .whitespaces)
        if trimmed.isEmpty || trimmed == "null" || trimmed == "~" { return nil }
        return trimmed
    }

    mutating func int(_ key: String, _ fallback: Int) -> Int {
        guard let text = raw(key) else { return fallback }
        guard let value = Int(text.replacingOccurrences(of: "_", with: "")) else {
            problems.append(.init(key, "expected an integer, got \"\(text)\""))
            return fallback
        }
        return value
    }

    mutating func double(_ key: String, _ fallback: Double) -> Double {
        guard let text = raw(key) else { return fallback }
        // Decimal only: Swift's `Double` also reads hexadecimal (`0x10` was 16 s, `0x1p-30` a
        // nanosecond; found from outside), which the integer keys refuse.
        guard text.allSatisfy({ "0123456789.eE+-_".contains($0) }),
              let value = Double(text.replacingOccurrences(of: "_", with: "")), value.isFinite else {
            problems.append(.init(key, "expected a number, got \"\(text)\""))
            return fallback
        }
        return value
    }

    mutating func bool(_ key: String, _ fallback: Bool) -> Bool {
        guard let text = raw(key) else { return fallback }
        switch text.lowercased() {
        case "true", "yes", "on", "1": return true
        case "false", "no", "off", "0": return false
        default:
            problems.append(.init(key, "expected true or false, got \"\(text)\""))
            return fallback
        }
    }

    mutating func choice<T: RawRepresentable<String>>(_ key: String, _ fallback: T, _ allowed: [T]) -> T {
        guard let text = raw(key) else { return fallback }
        guard let value = T(rawValue: text.lowercased()), allowed.contains(where: { $0.rawValue == value.rawValue }) else {
            problems.append(.init(key, "must be one of \(allowed.map(\.rawValue).joined(separator: "|")), got \"\(text)\""))
            return fallback
        }
        return value
    }
}
