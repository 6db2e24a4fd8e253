//! The house has rooms: no module of `src/` reaches, through the modules it uses, back to itself.
//! A cycle makes every module in it depend on all the others (the issue that split the master
//! found nine in one circle); the layered order is in the README's "Layout".
//!
//! The graph is read from the code, not from rustc: every `crate::NAME` path outside comments
//! and unit-test modules is an edge from the top-level module it is written in to `NAME`
//! (a submodule counts as its parent: `src/dev/lifecycle.rs` is `dev`).
//!
//! And the master's words have one room: its lines are put in words by the reporter
//! (`src/report.rs`), from typed facts, never formatted where they are written.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// `src/`.
fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`.
fn source_files() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut next = vec![src()];
    while let Some(path) = next.pop() {
        if path.is_dir() {
            next.extend(
                fs::read_dir(&path)
                    .unwrap()
                    .map(|entry| entry.unwrap().path()),
            );
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// Every top-level module of `src/` and the top-level modules its code names.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = src();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in source_files() {
        let relative = path.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        // Unit tests may reach anywhere: they are not part of the layering.
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let code: String = code
            .lines()
            .map(|line| line.split("//").next().unwrap())
            .collect::<Vec<_>>()
            .join("\n");
        let used = graph.entry(top.clone()).or_default();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                // `crate::{a, b::c}`, on one line or many: each item's first name.
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap()
                    .split(',')
                    .map(|item| item.trim().split("::").next().unwrap())
                    .collect(),
                None => rest
                    .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                    .take(1)
                    .collect(),
            };
            for name in names {
                if !name.is_empty()
                    && name != top
                    && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                {
                    used.insert(name.to_owned());
                }
            }
        }
    }
    graph
}

/// The modules `from` reaches through its uses.
fn reachable(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut next = vec![from.to_owned()];
    while let Some(module) = next.pop() {
        for used in graph.get(&module).into_iter().flatten() {
            if seen.insert(used.clone()) {
                next.push(used.clone());
            }
        }
    }
    seen
}

#[test]
fn no_module_of_src_reaches_back_to_itself() {
    let graph = module_graph();
    assert!(
        graph.contains_key("cluster") && graph.contains_key("supervisor"),
        "the modules were not found: {graph:?}"
    );
    let cycles: Vec<String> = graph
        .iter()
        .flat_map(|(module, used)| {
            used.iter()
                .filter(|&next| reachable(&graph, next).contains(module))
                .map(move |next| format!("{module} -> {next}"))
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "module cycles (each edge below is on one):\n{}",
        cycles.join("\n")
    );
}

/// Files that write some lines in their own words, with how many each may hold at most: the
/// command line's (`cli.rs`, `cli/client.rs`). They are not reports of a master but a client's
/// answers to its user (`mcluster status`'s `not ready: …`, `restart`'s outcome) and the errors
/// of its arguments and config, written before any master runs; the reporter words what a
/// master tells. Every other file has none: the master's start (`master.rs`) and the watcher
/// (`watch.rs`) tell typed facts (`StartReport`, `WatchReport`) too. Lower a count when one of
/// its lines moves to the reporter; never raise one, and add no file.
const NOT_MASTER_REPORTS: &[(&str, usize)] = &[("cli.rs", 7), ("cli/client.rs", 6)];

/// How many of the master's lines `code` formats where it writes them: a `master_line` given
/// a `format!`, a string literal or a constant (`master_line(LIMIT_MESSAGE)`, a line written
/// in advance).
fn lines_formatted_in_place(code: &str) -> usize {
    let code: String = code
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .flat_map(str::chars)
        .filter(|c| !c.is_whitespace())
        .collect();
    code.match_indices("master_line(")
        .filter(|(at, call)| {
            let argument = code[at + call.len()..].trim_start_matches('&');
            argument.starts_with("format!") || argument.starts_with('"') || is_constant(argument)
        })
        .count()
}

/// Whether `argument` (a call's, from its first character) is a constant: a name in capitals,
/// maybe with a path (`watch::LIMIT_MESSAGE`), ended by the call's parenthesis.
fn is_constant(argument: &str) -> bool {
    let name = argument.split([')', ',']).next().unwrap_or_default();
    let last = name.rsplit("::").next().unwrap_or(name);
    last.starts_with(|c: char| c.is_ascii_uppercase())
        && last
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

#[test]
fn the_master_s_lines_are_put_in_words_by_the_reporter_only() {
    let src = src();
    let mut formatted = Vec::new();
    for path in source_files() {
        let relative = path.strip_prefix(&src).unwrap().to_str().unwrap();
        if relative == "report.rs" || relative.starts_with("report/") {
            continue;
        }
        let count = lines_formatted_in_place(&fs::read_to_string(&path).unwrap());
        let allowed = NOT_MASTER_REPORTS
            .iter()
            .find(|(file, _)| *file == relative)
            .map_or(0, |(_, allowed)| *allowed);
        if count > allowed {
            formatted.push(format!("src/{relative}: {count} (at most {allowed})"));
        }
    }
    assert!(
        formatted.is_empty(),
        "lines formatted where they are written (`master_line(&format!(…))`), not by the \
         reporter: give the fact a variant in src/report.rs (`DriverReport`, `StartReport`, \
         `Lifecycle`; a module below the reporter, as the watcher, defines its own and hands \
         it to a callback) and write `report::driver_line(&…)`:\n{}",
        formatted.join("\n")
    );
}

#[test]
fn a_line_formatted_in_place_is_seen_however_it_is_wrapped() {
    let code = "output::master_line(&format!(\"w{slot} status\"));\n\
                output::master_line(\n    &format!(\"a {}\", 1),\n);\n\
                master_line(\"stopped\");\n\
                output::master_line(LIMIT_MESSAGE);\n\
                output::master_line(&watch::LIMIT_2);\n\
                // master_line(&format!(\"in a comment\"));\n\
                output::master_line(&report::driver_line(&told));\n\
                output::master_line(&line);\n\
                output::master_line(&Report::line(&told));\n";
    assert_eq!(lines_formatted_in_place(code), 5);
}
