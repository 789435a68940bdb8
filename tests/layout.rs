//! The crate's layout rule, checked: data flows one way, so no top-level module imports one
//! that imports it back (directly or through others). Test modules are left out: a test may
//! reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level modules each module of `src/` names as `crate::<module>`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![Path::new("src").to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix("src").unwrap();
        let first = relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if first == "lib" || first == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
        let mut named = BTreeSet::new();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // use crate::{a, b::c};
                let inner = &group[..group.find('}').unwrap_or(group.len())];
                named.extend(inner.split(',').map(|p| p.trim().split("::").next().unwrap_or("").to_string()));
            } else {
                named.insert(rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect());
            }
        }
        named.retain(|m| !m.is_empty() && *m != first);
        graph.entry(first).or_default().extend(named);
    }
    graph
}

/// Whether `to` can be reached from `from`.
fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut next = vec![from.to_string()];
    while let Some(module) = next.pop() {
        for dep in graph.get(&module).into_iter().flatten() {
            if dep == to {
                return true;
            }
            if seen.insert(dep.clone()) {
                next.push(dep.clone());
            }
        }
    }
    false
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = imports();
    assert!(graph.len() > 20, "found only {:?}", graph.keys());
    assert!(graph["daemon"].contains("store"), "the scan must see the daemon's imports: {:?}", graph["daemon"]);
    let mut back = Vec::new();
    for (module, deps) in &graph {
        for dep in deps {
            if reaches(&graph, dep, module) {
                back.push(format!("{module} -> {dep}"));
            }
        }
    }
    assert!(back.is_empty(), "imports that come back round: {back:?}");
}

#[test]
fn leaves_stay_leaves() {
    // Everyone may count, name SMSC ids and stop tasks; these import nothing of the crate.
    let graph = imports();
    for leaf in ["telemetry", "smsc_id", "tasks", "clock", "echo", "hex"] {
        assert!(graph.get(leaf).is_some_and(BTreeSet::is_empty), "{leaf} imports {:?}", graph.get(leaf));
    }
    // The store knows nothing of SMPP.
    assert!(!graph["store"].contains("smpp"), "store imports {:?}", graph["store"]);
}
