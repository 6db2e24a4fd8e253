//! The house has rooms: no module of `src/` reaches, through the modules it uses, back to itself.
//! A cycle makes every module in it depend on all the others (the issue that split the master
//! found nine in one circle); the layered order is in the README's "Layout".
//!
//! The graph is read from the code, not from rustc: every `crate::NAME` path outside comments
//! and unit-test modules is an edge from the top-level module it is written in to `NAME`
//! (a submodule counts as its parent: `src/dev/lifecycle.rs` is `dev`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Every top-level module of `src/` and the top-level modules its code names.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(
                fs::read_dir(&path)
                    .unwrap()
                    .map(|entry| entry.unwrap().path()),
            );
            continue;
        }
        if path.extension().is_none_or(|ext| ext != "rs") {
            continue;
        }
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
