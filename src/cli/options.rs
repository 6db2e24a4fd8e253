//! The one table of the options of `start` and `dev`: name, kind, default, help, commands and
//! variable. The config keys (`mcluster.toml`, `[package.metadata.mcluster]`) and the file
//! `mcluster init` writes are made from it; clap's definition, `templates/mcluster.toml` and the
//! README's option tables are checked against it by tests, so none of them drifts.

use std::fmt::Write as _;

/// What an option takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A flag: `true` or `false` in a file.
    Flag,
    /// One value.
    Value,
    /// A value that may be left out (`--poll`, `--poll=200ms`): `true`, `false` or a value.
    OptionalValue,
    /// A value per occurrence: a list in a file.
    List,
    /// `KEY=VALUE` pairs: a table in a file.
    Pairs,
}

/// An option's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fallback {
    /// Clap's own default value, as on the command line.
    Clap(&'static str),
    /// A value the program applies when the option is not given (clap has none; its help says
    /// `[default: …]`), as on the command line.
    Applied(&'static str),
    /// No value: what happens without the option, in words.
    Words(&'static str),
}

/// Which commands take an option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Commands {
    /// `start` and `dev`.
    Both,
    /// `dev` only.
    Dev,
}

/// One option.
#[derive(Debug, Clone, Copy)]
pub(super) struct Opt {
    /// The long name: the flag without `--`, and the key in a file.
    pub(super) name: &'static str,
    /// What it takes.
    pub(super) kind: Kind,
    /// Its default.
    pub(super) default: Fallback,
    /// One line of help, for the file `mcluster init` writes.
    pub(super) help: &'static str,
    /// Which commands take it.
    pub(super) commands: Commands,
    /// The `MCLUSTER_*` variable that sets it, if any (scalar options only).
    pub(super) env: Option<&'static str>,
    /// Whether it may be a key of a file (`config` and `manifest-path` say where files are).
    pub(super) in_files: bool,
}

/// An option of both commands, with a file key.
const fn both(name: &'static str, kind: Kind, default: Fallback, help: &'static str) -> Opt {
    Opt {
        name,
        kind,
        default,
        help,
        commands: Commands::Both,
        env: None,
        in_files: true,
    }
}

/// A `dev` option, with a file key.
const fn dev(name: &'static str, kind: Kind, default: Fallback, help: &'static str) -> Opt {
    Opt {
        commands: Commands::Dev,
        ..both(name, kind, default, help)
    }
}

impl Opt {
    /// With the variable `env`.
    const fn env(self, env: &'static str) -> Opt {
        Opt {
            env: Some(env),
            ..self
        }
    }

    /// Not a key of a file.
    const fn not_in_files(self) -> Opt {
        Opt {
            in_files: false,
            ..self
        }
    }
}

use Fallback::{Applied, Clap, Words};
use Kind::{Flag, List, OptionalValue, Pairs, Value};

/// Every option of `start` and `dev`, in the order of `--help`.
pub(super) const OPTIONS: &[Opt] = &[
    both(
        "listen",
        List,
        Applied("127.0.0.1:3000"),
        "addresses: HOST:PORT, [V6]:PORT, :PORT, unix:PATH",
    ),
    both(
        "size",
        Value,
        Words("the CPU count available"),
        "number of workers",
    )
    .env("MCLUSTER_SIZE"),
    both(
        "env",
        Pairs,
        Words("none"),
        "extra environment for the workers",
    ),
    both(
        "silent",
        Flag,
        Words("false"),
        "workers' stdout and stderr to /dev/null",
    )
    .env("MCLUSTER_SILENT"),
    both(
        "ready",
        Value,
        Clap("auto"),
        "auto (READY=1, or seen accepting) | notify (READY=1 only)",
    )
    .env("MCLUSTER_READY"),
    both(
        "ready-delay",
        Value,
        Words("none"),
        "with auto: also ready once alive this long",
    )
    .env("MCLUSTER_READY_DELAY"),
    both(
        "ready-timeout",
        Value,
        Clap("60s"),
        "not ready by then: failed to start",
    )
    .env("MCLUSTER_READY_TIMEOUT"),
    both(
        "kill-timeout",
        Value,
        Words("30s; dev: 5s"),
        "stop signal → SIGKILL",
    )
    .env("MCLUSTER_KILL_TIMEOUT"),
    both(
        "surge",
        Value,
        Applied("all"),
        "replacements a roll boots at once: N, P%, all",
    )
    .env("MCLUSTER_SURGE"),
    both(
        "no-steering",
        Flag,
        Words("false"),
        "one socket per address for every generation",
    )
    .env("MCLUSTER_NO_STEERING"),
    both(
        "stop-signal",
        Value,
        Clap("TERM"),
        "the signal that asks a worker to stop",
    )
    .env("MCLUSTER_STOP_SIGNAL"),
    both("watchdog", Value, Words("off"), "WATCHDOG_USEC for workers").env("MCLUSTER_WATCHDOG"),
    both(
        "control",
        Value,
        Words("one per working directory"),
        "the control socket",
    )
    .env("MCLUSTER_CONTROL"),
    both(
        "metrics",
        Value,
        Words("off"),
        "Prometheus endpoint, HOST:PORT or :PORT",
    )
    .env("MCLUSTER_METRICS"),
    both(
        "config",
        Value,
        Words("mcluster.toml, if there is one"),
        "this file",
    )
    .env("MCLUSTER_CONFIG")
    .not_in_files(),
    dev(
        "ext",
        List,
        Clap("rs,toml"),
        "extensions of the files that count",
    ),
    dev("cooldown", Value, Clap("100ms"), "trailing debounce"),
    dev(
        "watch",
        List,
        Words("cargo's roots"),
        "more directories to watch",
    ),
    dev("ignore", List, Words("none"), "globs to ignore"),
    dev(
        "poll",
        OptionalValue,
        Words("false"),
        "poll instead of inotify (true: every 500ms)",
    ),
    dev("bin", Value, Words("cargo's"), "cargo build --bin"),
    dev("package", Value, Words("cargo's"), "cargo build --package"),
    dev("release", Flag, Words("false"), "cargo build --release"),
    dev("features", Value, Words("none"), "cargo build --features"),
    dev(
        "manifest-path",
        Value,
        Words("the nearest Cargo.toml"),
        "the project",
    )
    .not_in_files(),
    dev(
        "build",
        Value,
        Words("cargo"),
        "build with this shell command (needs a PROGRAM)",
    ),
    dev(
        "no-build",
        Flag,
        Words("false"),
        "no build: every change only rolls (needs a PROGRAM)",
    ),
    dev(
        "clear",
        Flag,
        Words("false"),
        "clear the screen before each build",
    ),
    dev(
        "livereload",
        Value,
        Clap("127.0.0.1:35729"),
        "the live-reload channel's address",
    )
    .env("MCLUSTER_LIVERELOAD_ADDR"),
    dev(
        "no-livereload",
        Flag,
        Words("false"),
        "no live-reload channel, no building page",
    ),
    dev(
        "assets",
        List,
        Words("static, assets, public"),
        "asset directories: pages reload",
    ),
];

/// The option named `name`.
pub(super) fn find(name: &str) -> Option<&'static Opt> {
    OPTIONS.iter().find(|opt| opt.name == name)
}

/// Whether `name` is a key of the config file and the manifest tables.
pub(super) fn is_file_key(name: &str) -> bool {
    find(name).is_some_and(|opt| opt.in_files)
}

/// The width of a template line's `# key = value` part, before its help.
const VALUE_COLUMN: usize = 36;

/// The `mcluster.toml` that `mcluster init` writes: every key, commented out, one line each,
/// at its default — or, where the default is no value (`size`: the CPU count), the key alone
/// with the default in words.
pub(super) fn template() -> String {
    let variables: Vec<&str> = OPTIONS.iter().filter_map(|opt| opt.env).collect();
    let mut out = String::from(
        "# mcluster's options for this directory (`mcluster start` and `mcluster dev` read it; \
         written by\n# `mcluster init`). Each key is a long option of the command line; \
         uncomment to set one.\n# A key shown without a value has no default value (its \
         default is in brackets): give it one.\n# Precedence: command-line flags, then \
         variables, then this file, then Cargo.toml's\n# [package.metadata.mcluster] and \
         [workspace.metadata.mcluster] (dev), then the defaults.\n# An unknown key is an \
         error. The variables:\n",
    );
    let mut line = String::from("#");
    for (index, variable) in variables.iter().enumerate() {
        let separator = if index + 1 == variables.len() {
            "."
        } else {
            ","
        };
        if line.len() + variable.len() + 2 > 95 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        let _ = write!(line, " {variable}{separator}");
    }
    out.push_str(&line);
    out.push('\n');
    for (title, commands) in [
        ("start and dev", Commands::Both),
        ("dev only", Commands::Dev),
    ] {
        let _ = write!(out, "\n# --- {title} ---\n");
        for opt in OPTIONS
            .iter()
            .filter(|opt| opt.in_files && opt.commands == commands)
        {
            let setting = match toml_default(opt) {
                Some(value) => format!("# {} = {value}", opt.name),
                None => format!("# {}", opt.name),
            };
            let note = match opt.default {
                Words(words) if toml_default(opt).is_none() => format!(" [default: {words}]"),
                _ => String::new(),
            };
            let _ = writeln!(out, "{setting:<VALUE_COLUMN$} # {}{note}", opt.help);
        }
    }
    out
}

/// An option's default as a TOML value, if it has one.
fn toml_default(opt: &Opt) -> Option<String> {
    match (opt.kind, opt.default) {
        (Flag | OptionalValue, _) => Some("false".to_owned()),
        (Pairs, _) => Some("{}".to_owned()),
        (List, Clap(value) | Applied(value)) => {
            let items: Vec<String> = value.split(',').map(|item| format!("{item:?}")).collect();
            Some(format!("[{}]", items.join(", ")))
        }
        (Value, Clap(value) | Applied(value)) => Some(format!("{value:?}")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::CommandFactory as _;
    use clap::builder::ArgAction;

    /// The options of a command as clap defines them (not `--help`, `--version`, `PROGRAM`).
    fn clap_options(command: &str) -> Vec<clap::Arg> {
        let mut cli = Cli::command();
        cli.build();
        cli.find_subcommand(command)
            .unwrap()
            .get_arguments()
            .filter(|arg| !arg.is_positional() && arg.get_long() != Some("help"))
            .cloned()
            .collect()
    }

    fn takes(opt: &Opt, command: &str) -> bool {
        command == "dev" || opt.commands == Commands::Both
    }

    /// Walks clap's definition of `start` and `dev`: every option is in the table, with its
    /// kind, default, commands and variable, and every option of the table is in clap's.
    #[test]
    fn the_table_is_clap_s_definition() {
        for command in ["start", "dev"] {
            let options = clap_options(command);
            for arg in &options {
                let name = arg.get_long().unwrap();
                let opt = find(name).unwrap_or_else(|| panic!("--{name} is not in the table"));
                assert!(takes(opt, command), "{command} takes --{name}: {opt:?}");
                let env = arg.get_env().map(|env| env.to_str().unwrap());
                assert_eq!(env, opt.env, "--{name}'s variable");
                let kind = match arg.get_action() {
                    ArgAction::SetTrue => Flag,
                    ArgAction::Append if name == "env" => Pairs,
                    ArgAction::Append => List,
                    ArgAction::Set if arg.get_num_args().unwrap().min_values() == 0 => {
                        OptionalValue
                    }
                    ArgAction::Set => Value,
                    other => panic!("--{name}: {other:?}"),
                };
                assert_eq!(kind, opt.kind, "--{name}'s kind");
                let defaults: Vec<&str> = arg
                    .get_default_values()
                    .iter()
                    .map(|value| value.to_str().unwrap())
                    .collect();
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                match opt.default {
                    Clap(value) => assert_eq!(defaults.join(","), value, "--{name}'s default"),
                    Applied(value) => {
                        assert!(defaults.is_empty(), "--{name}: {defaults:?}");
                        assert!(
                            help.contains(&format!("[default: {value}]")),
                            "--{name}'s help: {help}"
                        );
                    }
                    Words(_) => assert!(
                        defaults.is_empty() || defaults == ["false"],
                        "--{name} has clap's default {defaults:?}: Fallback::Clap"
                    ),
                }
            }
            for opt in OPTIONS.iter().filter(|opt| takes(opt, command)) {
                assert!(
                    options.iter().any(|arg| arg.get_long() == Some(opt.name)),
                    "{command} has no --{}",
                    opt.name
                );
            }
        }
    }

    /// `templates/mcluster.toml` is what `mcluster init` writes: the table's template. Every
    /// file key has its line; every line with a value, uncommented, is accepted and gives the
    /// default (`build`, which excludes `no-build`, has none).
    #[test]
    fn the_template_is_the_table_s_and_its_values_are_the_defaults() {
        let template = template();
        assert_eq!(
            include_str!("../../templates/mcluster.toml"),
            template,
            "templates/mcluster.toml differs from the table's: write it with mcluster init"
        );
        let mut uncommented = Vec::new();
        for opt in OPTIONS.iter().filter(|opt| opt.in_files) {
            let lines: Vec<&str> = template
                .lines()
                .filter(|line| {
                    line.strip_prefix("# ")
                        .and_then(|line| line.strip_prefix(opt.name))
                        .is_some_and(|rest| rest.starts_with([' ', '=']))
                })
                .collect();
            assert_eq!(lines.len(), 1, "{}: {lines:?}", opt.name);
            let setting = lines[0][2..].split(" # ").next().unwrap().trim();
            if setting.contains(" = ") {
                uncommented.push(setting.to_owned());
            } else {
                assert!(
                    matches!(opt.default, Words(_)) && toml_default(opt).is_none(),
                    "{}",
                    opt.name
                );
            }
        }
        assert!(!template.lines().any(|line| line.starts_with("# config")));
        let text = uncommented.join("\n");
        let table = crate::builder::MetadataTable {
            section: "",
            manifest: std::path::PathBuf::from("/x/mcluster.toml"),
            table: toml::from_str(&text).unwrap(),
        };
        let (mut from_file, _) =
            crate::cli::parse_table(&table).unwrap_or_else(|e| panic!("{e}\n{text}"));
        // The defaults the program applies when clap has none (their help says so, see above).
        assert_eq!(
            from_file.cluster.listen,
            ["127.0.0.1:3000".parse().unwrap()],
            "{text}"
        );
        assert_eq!(from_file.cluster.surge, Some(crate::cluster::Surge::All));
        from_file.cluster.listen.clear();
        from_file.cluster.surge = None;
        let crate::cli::Command::Dev(defaults) =
            Cli::try_parse_args(["mcluster", "dev"]).unwrap().command
        else {
            panic!("dev");
        };
        assert_eq!(format!("{from_file:?}"), format!("{defaults:?}"), "{text}");
    }

    /// The README's tables of `start`'s and `dev`'s options name every option the table gives
    /// that command (and no other), with its short flag and its default value; the README's
    /// list of variables is the table's.
    #[test]
    fn the_readme_documents_the_table() {
        let readme = include_str!("../../README.md");
        for (heading, commands, command) in [
            ("## `mcluster start`", Commands::Both, "start"),
            ("## `mcluster dev`", Commands::Dev, "dev"),
        ] {
            let section = &readme[readme.find(heading).unwrap()..];
            let rows: Vec<&str> = section
                .lines()
                .skip_while(|line| !line.starts_with("| option"))
                .skip(2)
                .take_while(|line| line.starts_with('|'))
                .collect();
            let mut named: Vec<&str> = Vec::new();
            for row in &rows {
                let cells: Vec<&str> = row.split(" | ").collect();
                for word in cells[0].split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
                    let Some(name) = word.strip_prefix("--") else {
                        continue;
                    };
                    named.push(name);
                    let opt = find(name).unwrap_or_else(|| panic!("{heading}: no --{name}"));
                    let arg = clap_options(command)
                        .into_iter()
                        .find(|arg| arg.get_long() == Some(name))
                        .unwrap();
                    if let Some(short) = arg.get_short() {
                        assert!(cells[0].contains(&format!("-{short}, --{name}")), "{row}");
                    }
                    if let (Clap(value) | Applied(value), false) = (opt.default, opt.kind == Flag) {
                        assert!(cells[1].contains(&format!("`{value}`")), "{row}");
                    }
                }
            }
            named.sort_unstable();
            let mut expected: Vec<&str> = OPTIONS
                .iter()
                .filter(|opt| opt.commands == commands)
                .map(|opt| opt.name)
                .collect();
            expected.sort_unstable();
            assert_eq!(named, expected, "{heading}");
        }
        let configuration = &readme[readme.find("## Configuration\n\n").unwrap() + 18..];
        let paragraph = &configuration[..configuration.find("\n\n").unwrap()];
        let mut variables: Vec<&str> = paragraph
            .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .filter(|word| word.starts_with("MCLUSTER_") && word.len() > "MCLUSTER_".len())
            .collect();
        variables.sort_unstable();
        variables.dedup();
        let mut expected: Vec<&str> = OPTIONS.iter().filter_map(|opt| opt.env).collect();
        expected.sort_unstable();
        assert_eq!(variables, expected, "## Configuration");
    }

    /// The README's synopses of `start` and `dev` are the usage lines of their `--help`.
    #[test]
    fn the_readme_s_synopses_are_the_help_s() {
        let readme = include_str!("../../README.md");
        for command in ["start", "dev"] {
            let heading = format!("## `mcluster {command}`\n\n```text\n");
            let at = readme.find(&heading).unwrap() + heading.len();
            let synopsis = readme[at..].lines().next().unwrap();
            let mut cli = Cli::command();
            cli.build();
            let usage = cli
                .find_subcommand_mut(command)
                .unwrap()
                .render_usage()
                .to_string();
            assert_eq!(format!("Usage: {synopsis}"), usage);
        }
    }
}
