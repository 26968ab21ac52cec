//! The house drawn from the code: which module of `src/` names which (`crate::a::b`,
//! `super::x`, outside comments and test modules), and no circle among the modules of one
//! folder — the crate root's included. A circle means two rooms that cannot be read, or
//! moved, one without the other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`db::runs`) → source file, for every `.rs` under `dir`.
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            let mut p = prefix.to_vec();
            p.push(name);
            modules(&path, &p, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut p = prefix.to_vec();
            if name != "mod" && !(prefix.is_empty() && (name == "lib" || name == "main")) {
                p.push(name);
            }
            out.insert(p, std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// The code of a file without its comments and its test module.
fn code(text: &str) -> String {
    let text = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifier path that follows each `marker` in `code`.
fn paths_after<'a>(code: &'a str, marker: &str) -> Vec<Vec<&'a str>> {
    code.match_indices(marker)
        .map(|(i, _)| {
            let rest = &code[i + marker.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            rest[..end].split("::").filter(|s| !s.is_empty()).collect()
        })
        .collect()
}

/// Which known module each file names, as the longest known prefix of each path.
fn edges(mods: &BTreeMap<Vec<String>, String>) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let longest = |path: Vec<String>| {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| mods.contains_key(p))
    };
    let mut out = BTreeMap::new();
    for (m, text) in mods {
        let code = code(text);
        let parent = &m[..m.len().saturating_sub(1)];
        let mut deps = BTreeSet::new();
        for p in paths_after(&code, "crate::") {
            deps.extend(longest(p.iter().map(|s| s.to_string()).collect()));
        }
        let mut supers = paths_after(&code, "super::");
        // `use super::{a, b::c}`: each name in the braces.
        for (i, _) in code.match_indices("super::{") {
            let inner = &code[i + 8..];
            let inner = &inner[..inner.find('}').unwrap_or(0)];
            supers.extend(inner.split(',').map(|s| s.trim().split("::").collect()));
        }
        for p in supers {
            let mut full: Vec<String> = parent.to_vec();
            full.extend(p.iter().map(|s| s.to_string()));
            deps.extend(longest(full));
        }
        deps.remove(m);
        out.insert(m.clone(), deps);
    }
    out
}

/// A circle among `nodes`, if there is one (depth-first, colours).
fn circle(
    nodes: &BTreeSet<Vec<String>>,
    edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
) -> Option<Vec<Vec<String>>> {
    fn visit(
        n: &Vec<String>,
        nodes: &BTreeSet<Vec<String>>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            return Some(stack[i..].to_vec());
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.clone());
        for d in edges
            .get(n)
            .into_iter()
            .flatten()
            .filter(|d| nodes.contains(*d))
        {
            if let Some(c) = visit(d, nodes, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.clone());
        None
    }
    let mut done = BTreeSet::new();
    nodes
        .iter()
        .find_map(|n| visit(n, nodes, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_circle_among_the_modules_of_one_folder() {
    let mut mods = BTreeMap::new();
    modules(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &[],
        &mut mods,
    );
    assert!(
        mods.len() > 40,
        "the crate's modules are read: {}",
        mods.len()
    );
    let edges = edges(&mods);
    // A dependency on a module inside a folder is one on the folder's room.
    let mut folders: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for m in mods.keys().filter(|m| !m.is_empty()) {
        folders
            .entry(m[..m.len() - 1].to_vec())
            .or_default()
            .insert(m.clone());
    }
    let mut circles = Vec::new();
    for (folder, rooms) in &folders {
        let room_of = |d: &Vec<String>| rooms.iter().find(|r| d.starts_with(r)).cloned();
        let within: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = rooms
            .iter()
            .map(|r| {
                let deps = edges
                    .iter()
                    .filter(|(m, _)| m.starts_with(r))
                    .flat_map(|(_, ds)| ds.iter().filter_map(room_of))
                    .filter(|d| d != r)
                    .collect();
                (r.clone(), deps)
            })
            .collect();
        if let Some(c) = circle(rooms, &within) {
            let names: Vec<String> = c.iter().map(|m| m.join("::")).collect();
            circles.push(format!(
                "in {:?}: {}",
                folder.join("::"),
                names.join(" -> ")
            ));
        }
    }
    assert!(circles.is_empty(), "circles: {circles:#?}");
}
