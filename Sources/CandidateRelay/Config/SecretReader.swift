import Foundation

/// The one door through which secrets enter the relay. A `*_file` key names a file (a relative
/// name resolves in `$CREDENTIALS_DIRECTORY` when set, as systemd's `LoadCredential=` provides,
/// else next to the config file); the env var of the key without `_file` overrides it. File
/// content is trimmed. Problems name the key and the path, never the content.
final class SecretReader: @unchecked Sendable {
    let environment: [String: String]
    let credentialsDirectory: String?
    let configDirectory: String
    private var recorded: [ConfigurationProblem] = []
    /// Admin commands need no secrets: then a missing one is not a problem.
    let required: Bool

    var problems: [ConfigurationProblem] { required ? recorded : [] }

    init(environment: [String: String], credentialsDirectory: String?, configDirectory: String, required: Bool = true) {
        self.required = required
        self.environment = environment
        self.credentialsDirectory = credentialsDirectory
        self.configDirectory = configDirectory.isEmpty ? "." : configDirectory
    }

    /// Resolves a relative secret file name.
    func resolve(_ name: String) -> String {
        if name.hasPrefix("/") { return name }
        if let credentialsDirectory, !credentialsDirectory.isEmpty {
            return (credentialsDirectory as NSString).appendingPathComponent(name)
        }
        return (configDirectory as NSString).appendingPathComponent(name)
    }

    /// Whether the env var that overrides `fileKey` carries a value.
    func hasEnvironmentValue(for fileKey: String) -> Bool {
        let envName = ConfigurationKeys.environmentName(String(fileKey.dropLast("_file".count)))
        return !(environment[envName]?.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty ?? true)
    }

    /// Reads the secret for `fileKey` (e.g. `partner.auth.secret_file`) whose configured file name
    /// is `fileName`; `nil` when neither the env var nor a file name is given.
    func read(fileKey: String, fileName: String?, required: Bool) -> Secret? {
        let envName = ConfigurationKeys.environmentName(String(fileKey.dropLast("_file".count)))
        if let value = environment[envName]?.trimmingCharacters(in: .whitespacesAndNewlines), !value.isEmpty {
            return Secret(value, source: "env \(envName)")
        }
        guard let fileName else {
            if required { recorded.append(.init(fileKey, "required: set the file or \(envName)")) }
            return nil
        }
        let path = resolve(fileName)
        let data: Data
        switch Self.contents(path) {
        case .success(let contents): data = contents
        case .failure(let problem):
            // Found from outside: `check-config` run from a shell, as the README's install said,
            // looked next to the config file and said only "does not exist".
            let hint = problem.reason == FileProblem.missing && !fileName.hasPrefix("/") && (credentialsDirectory ?? "").isEmpty
                ? " (next to the config file: CREDENTIALS_DIRECTORY is not set)" : ""
            recorded.append(.init(fileKey, "secret file \(path) \(problem.reason)\(hint)"))
            return nil
        }
        guard let text = String(data: data, encoding: .utf8) else {
            recorded.append(.init(fileKey, "secret file \(path) is not UTF-8 text"))
            return nil
        }
        let value = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if value.isEmpty {
            recorded.append(.init(fileKey, "secret file \(path) is empty"))
            return nil
        }
        return Secret(value, source: "file \(path)")
    }

    /// The largest secret file read (a few keys, one per line, are well under it).
    static let maxFileBytes = 64 << 10

    struct FileProblem: Error {
        let reason: String
        static let missing = "does not exist"
    }

    /// A secret file's bytes: a regular file (through any symlink, as Kubernetes' secret volumes
    /// and systemd's credentials may be) of at most `maxFileBytes`, read once from one open.
    /// Found from outside: a 300 MB file was read whole by `reload` (1.26 GB, 36 s of a core) and
    /// became the daemon's HS256 key (+308 MB, half a second per token). A size looked up before
    /// reading (review) missed a symlink's target and a FIFO or device (size 0, read for ever).
    static func contents(_ path: String) -> Result<Data, FileProblem> {
        // Non-blocking: opening a FIFO for reading would otherwise wait for a writer.
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else {
            return .failure(FileProblem(reason: errno == ENOENT || errno == ENOTDIR ? FileProblem.missing : "is not readable"))
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { return .failure(FileProblem(reason: "is not readable")) }
        guard info.st_mode & S_IFMT == S_IFREG else { return .failure(FileProblem(reason: "is not a regular file")) }
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: false)
        guard let data = try? handle.read(upToCount: maxFileBytes + 1) ?? Data() else {
            return .failure(FileProblem(reason: "is not readable"))
        }
        guard data.count <= maxFileBytes else {
            return .failure(FileProblem(reason: "is over \(maxFileBytes / 1024) KiB: not a secret"))
        }
        return .success(data)
    }

    /// Several secrets, one per line (Standard Webhooks secret rotation); env: whitespace-separated.
    func readList(fileKey: String, fileName: String?) -> [Secret] {
        guard let combined = read(fileKey: fileKey, fileName: fileName, required: false) else { return [] }
        return combined.value
            // `isWhitespace`, not a list of characters: a CRLF line end is one Character, equal to
            // neither "\r" nor "\n", so a file of several CRLF lines was one secret (found from outside).
            .split(whereSeparator: \.isWhitespace)
            .map { Secret(String($0), source: combined.source) }
    }
}
