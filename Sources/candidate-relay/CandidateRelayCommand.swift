import ArgumentParser
import CandidateRelay
import Foundation
import Logging
import NIOCore

/// The `candidate-relay` executable: argument parsing and one call into the library per
/// subcommand. No behaviour lives here.
@main
struct CandidateRelayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "candidate-relay",
        abstract: "Relays HR webhooks with candidate records to the partner ATS through a durable outbox.",
        version: RelayVersion.current,
        subcommands: [Serve.self, CheckConfig.self, Reload.self, Status.self, Events.self, Purge.self, Forget.self, Backup.self, PartnerSim.self]
    )

    static func main() async {
        // `serve` ignores SIGHUP from the start of `main` until the reload service traps it:
        // its default action terminates, systemd counts that a clean exit (not restarted), and
        // a reload sent while the daemon starts (parsing, loading the config, or a start that
        // waits for disk space for minutes) must be dropped, not end it. Ignored here, before
        // the arguments are parsed: from `Serve.run` the first ~25 ms after exec still died.
        // What is left is before `main`: the dynamic loader's and Swift runtime's first ~5-20 ms
        // (found from outside); systemd does not send `ExecReload=` before READY=1, and a
        // process that must signal a starting daemon can set SIGHUP to ignored before it execs
        // it (the disposition is inherited; the reload service traps it later all the same).
        // `--demo` keeps the default: closing its terminal ends it.
        let arguments = CommandLine.arguments.dropFirst()
        if arguments.first == "serve" {
            if !arguments.contains("--demo") { signal(SIGHUP, SIG_IGN) }
            // Before SwiftNIO's first event loop, which fails first at the lowest limits.
            if let problem = RelayApplication.openFilesProblem() {
                Console.error("candidate-relay: cannot start: \(problem)")
                Foundation.exit(78)
            }
        }
        await main(nil)
    }
}

/// `--config PATH`, shared by every command but `partner-sim`.
struct ConfigOption: ParsableArguments {
    @Option(name: .long, help: "Config file (default: $CANDIDATE_RELAY_CONFIG, else /etc/candidate-relay/config.yaml).")
    var config: String?

    var loader: ConfigurationLoader { ConfigurationLoader(configPath: config) }

    /// Loads the configuration or exits 78 (EX_CONFIG) with one line per problem.
    func load(secretsRequired: Bool = true) async throws -> RelayConfiguration {
        do {
            return try await loader.load(secretsRequired: secretsRequired)
        } catch let error as ConfigurationError {
            for problem in error.problems { Console.error(problem.description) }
            throw ExitCode(78)
        }
    }

    /// What an admin command needs: the `storage` section sound, or exit 78 with one line per
    /// problem. Problems elsewhere (one a reload refused) are said on stderr and do not stop it.
    func storageConfiguration() async throws -> RelayConfiguration {
        do {
            let (config, otherProblems) = try await loader.loadForOutbox()
            if !otherProblems.isEmpty {
                Console.error("warning: \(loader.configPath) has problems the daemon would refuse at a start or a reload "
                    + "(check-config lists them); this command needs only its storage section, which is sound:")
                for problem in otherProblems { Console.error("  \(problem.description)") }
            }
            return config
        } catch let error as ConfigurationError {
            for problem in error.problems { Console.error(problem.description) }
            throw ExitCode(78)
        }
    }

    /// Opens the outbox for an admin command (no daemon lock: it shares the file with the daemon).
    /// The outbox an admin command taking `--account` works on, with its config, after a warning
    /// on stderr for an account that is likely a typo (`AccountArgument.noteUnknown`).
    func outbox(warningAbout account: String?) async throws -> (config: RelayConfiguration, outbox: Outbox) {
        let config = try await storageConfiguration()
        let outbox = try await outbox(config)
        await AccountArgument.noteUnknown(account, config: config, outbox: outbox)
        return (config, outbox)
    }

    func outbox(_ loaded: RelayConfiguration? = nil) async throws -> Outbox {
        let config: RelayConfiguration
        if let loaded { config = loaded } else { config = try await storageConfiguration() }
        guard FileManager.default.fileExists(atPath: config.storage.path) else {
            Console.error("no outbox at \(config.storage.path) (has the daemon ever run with this config?)")
            throw ExitCode(1)
        }
        if let problem = Outbox.sharingProblem(path: config.storage.path) {
            Console.error(problem)
            throw ExitCode(1)
        }
        do {
            return try Outbox(path: config.storage.path)
        } catch {
            Console.error("\(error)")
            throw ExitCode(1)
        }
    }
}

/// stdout/stderr helpers. A full disk, or a reader gone while SIGPIPE is ignored (`serve`,
/// and any command once SwiftNIO opened a socket), loses the text, not the process; otherwise
/// a reader gone ends a command with SIGPIPE as usual (`cr events list | head -1`).
enum Console {
    static func out(_ text: String) {
        StandardStream.write(text.hasSuffix("\n") ? text : text + "\n", to: STDOUT_FILENO)
    }
    static func error(_ text: String) {
        StandardStream.write(text.hasSuffix("\n") ? text : text + "\n", to: STDERR_FILENO)
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the daemon in the foreground (systemd runs this).")
    @OptionGroup var options: ConfigOption
    @Flag(help: "A newcomer's first run: temporary state, loopback ingest without auth, in-process partner simulator.")
    var demo = false
    @Option(help: "With --demo: the ingest port (default: any free port).")
    var port: Int = 0

    func run() async throws {
        // A reader of stdout that goes away (a pipe into a log shipper that exited) must cost
        // log lines, not the daemon: ignored, such a write fails with EPIPE and is counted
        // (`LogOutput`). SwiftNIO ignores SIGPIPE too, but only once it opens its first socket.
        signal(SIGPIPE, SIG_IGN)
        if demo {
            try await DemoMode.run(port: port, print: { Console.out($0) })
            return
        }
        let config = try await options.load()
        let settings = LogSettings(level: config.logging.level, format: config.logging.format)
        // SIGHUP is ignored already (`CandidateRelayCommand.main`) until the reload service traps it.
        let app: RelayApplication
        do {
            app = try await RelayApplication.starting(configuration: config, logSettings: settings, reloader: options.loader)
        } catch is StartOnFullDisk.Stopped {
            LogOutput.standardOutput.flush()  // `relay.stopped`, logged by `starting`
            return
        } catch {
            // A log line too (JSON by default): the runbook's journal queries read only those
            // (found from outside: a locked, damaged or newer outbox said why only in plain
            // text on stderr).
            let logger = RelayLogHandler.startLogger(settings)
            // A damaged outbox needs a human (docs/operations.md, "The outbox file is damaged"):
            // the runbook's alert reads `storage.damaged`, and 65 (EX_DATAERR) is not restarted
            // by the unit (found from outside: exit 1, restarted every 2 s for good). So does an
            // outbox a newer release migrated (a rollback): 65 too.
            let damage = Outbox.damage(in: error)
            var newer = false
            if case OutboxError.newerRelease = error { newer = true }
            if let damage {
                logger.event(.critical, "storage.damaged", "the outbox file is damaged (\(damage)); the daemon cannot start: "
                             + "recover the file (docs/operations.md, \"The outbox file is damaged\")", LogFields(error: "outbox_damaged"))
            }
            logger.event(.error, "relay.failed", "cannot start",
                         LogFields(error: String(describing: type(of: error)), extra: ["reason": String(describing: error)]))
            // The log lines first, as written (they go through the log's writer thread).
            LogOutput.standardOutput.flush()
            Console.error("candidate-relay: cannot start: \(error)")
            throw ExitCode(damage == nil && !newer ? 1 : 65)
        }
        do {
            try await app.run()
        } catch {
            // The reason as `relay.failed` gives it, after it (found from outside: ArgumentParser's
            // `Error:` line printed NIO's text, stray parenthesis and all, and would have printed
            // any other error's whole description, which may quote stored data).
            LogOutput.standardOutput.flush()
            Console.error("candidate-relay: a service failed: \(RelayApplication.failureReason(error) ?? String(describing: type(of: error)))")
            // A `listen.host` that names nothing is the configuration's fault: 78, which the
            // unit does not restart (RestartPreventExitStatus), not a restart every few seconds.
            // Any other resolver failure (`EAI_AGAIN`: DNS not up yet at boot) stays 1, restarted.
            if let unknown = error as? SocketAddressError.UnknownHost, unknown.errorCode == Int(EAI_NONAME) { throw ExitCode(78) }
            throw ExitCode(1)
        }
    }
}

struct CheckConfig: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate the configuration and print it with secrets redacted (exit 0, or 78 with one line per problem).")
    @OptionGroup var options: ConfigOption

    func run() async throws {
        let config = try await options.load()
        Console.out("# effective configuration (\(options.loader.configPath)); secrets redacted")
        Console.out(config.renderedYAML())
    }
}

struct Reload: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Reload the running daemon's config and secrets (SIGHUP) and wait until it is applied.",
        discussion: """
            Exits 0 once the new configuration is live (naming the changed keys that wait for a \
            restart: listen, storage.path, partner.base_url, partner.timeout_seconds); 1 with the \
            daemon's reasons when it refused it (the old one stays), or when no daemon answers. \
            systemd's ExecReload runs this.
            """)
    @OptionGroup var options: ConfigOption
    @Option(help: "The daemon's pid (systemd: $MAINPID); default: the holder of the outbox lock.") var pid: Int32?
    @Option(help: "Seconds to wait for the daemon's answer (0.1 to 3600).") var timeout: Double = 30

    /// Before the signal: `inf`, `nan` or `1e300` crashed the command converting the wait to
    /// milliseconds, after the daemon had been signalled.
    func validate() throws {
        guard timeout.isFinite, timeout >= 0.1, timeout <= 3600 else {
            throw ValidationError("--timeout must be a number of seconds from 0.1 to 3600")
        }
    }

    func run() async throws {
        // A config that does not validate would be refused by the daemon too: say why, and
        // leave the daemon alone on the configuration it has.
        let config: RelayConfiguration
        do {
            config = try await options.loader.load(secretsRequired: false)
        } catch let error as ConfigurationError {
            Console.error("reload refused; the daemon keeps its previous configuration:")
            for problem in error.problems { Console.error("  \(problem.description)") }
            throw ExitCode(1)
        }
        switch await ReloadCommand.run(outboxPath: config.storage.path, pid: pid, timeoutSeconds: timeout) {
        case .applied(let restartNeeded) where restartNeeded.isEmpty:
            Console.out("reloaded: the new configuration is live")
        case .applied(let restartNeeded):
            Console.out("reloaded: the new configuration is live except \(restartNeeded.joined(separator: ", ")), "
                + "which the daemon keeps as it started until a restart (systemctl restart candidate-relay)")
        case .refused(let problems):
            Console.error("reload refused; the daemon keeps its previous configuration:")
            for problem in problems { Console.error("  \(problem)") }
            throw ExitCode(1)
        case .noDaemon(let reason):
            Console.error("reload failed: \(reason)")
            throw ExitCode(1)
        case .noAnswer(let reason):
            Console.error("reload failed: no answer within \(timeout) s: \(reason)")
            throw ExitCode(1)
        }
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Counts per state, oldest pending age, last delivery, dead count.")
    @OptionGroup var options: ConfigOption
    @Option(help: "Only this account's figures (default: the totals, then each account).") var account: String?
    @Flag(help: "Machine-readable output.") var json = false

    func validate() throws { try AccountArgument.validate(account) }

    func run() async throws {
        let admin = AdminCommands(outbox: try await options.outbox(warningAbout: account).outbox)
        Console.out(try await admin.status(json: json, account: account))
    }
}
