//! The rule of `lib.rs`, checked: no import cycle between the modules of
//! `host/src`. Every `crate::` path in code (not in comments) is an edge
//! from the top-level module of its file to the module it names; the
//! graph must have no cycle. A failure names the cycle and the lines that
//! make each step of it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// For each top-level module: the modules it uses, each with one line
/// (`file:line: text`) that uses it.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src` belongs to (`None` for the crate
/// root, the binary (`bin/`) and this check, whose tests hold example
/// paths).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "bin" | "layers")).then(|| name.to_owned())
}

/// The modules named by `crate::NAME` in a line of code.
fn named(line: &str) -> impl Iterator<Item = &str> {
    line.match_indices("crate::").filter_map(move |(at, _)| {
        let before = line[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            return None; // `$crate::` in a macro, or part of another word
        }
        let rest = &line[at + "crate::".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        Some(&rest[..end]).filter(|m| !m.is_empty())
    })
}

fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut g = Graph::new();
    for file in files {
        let Some(from) = module_of(src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for to in named(code) {
                if to != from {
                    g.entry(from.clone())
                        .or_default()
                        .entry(to.to_owned())
                        .or_insert_with(|| {
                            format!("{}:{}: {}", file.display(), n + 1, code.trim())
                        });
                }
            }
        }
    }
    g
}

/// A cycle of `g`, as the modules along it (the first repeated at the end).
fn cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        m: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut c = path[at..].to_vec();
            c.push(m.to_owned());
            return Some(c);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for next in g.get(m).into_iter().flat_map(|e| e.keys()) {
            if let Some(c) = visit(g, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|m| visit(g, m, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_of_the_host_reaches_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    assert!(g.len() > 10, "the source was not read: {g:?}");
    if let Some(c) = cycle(&g) {
        let steps: Vec<String> = c
            .windows(2)
            .map(|w| format!("  {} -> {}: {}", w[0], w[1], g[&w[0]][&w[1]]))
            .collect();
        panic!(
            "import cycle {}; move the shared need to a module below both:\n{}",
            c.join(" -> "),
            steps.join("\n")
        );
    }
}

/// The modules of `lib.rs`'s map, top row first.
fn map_order(src: &Path) -> Vec<String> {
    std::fs::read_to_string(src.join("lib.rs"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("//! | [`")?.split('`').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_module_map_of_lib_rs_lists_every_module_above_what_it_uses() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let order = map_order(&src);
    let row = |m: &str| {
        order
            .iter()
            .position(|o| o == m)
            .unwrap_or_else(|| panic!("module {m} is missing from the map in lib.rs"))
    };
    for (from, uses) in graph(&src) {
        for (to, line) in uses {
            assert!(
                row(&from) < row(&to),
                "lib.rs lists {from} below {to}, which it uses ({line}); move its row up"
            );
        }
    }
}

#[test]
fn the_check_finds_a_cycle_and_ignores_comments_and_macros() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("a.rs", "use crate::b::B;\n// crate::c is only mentioned\n");
    write("b.rs", "pub fn f() { crate::c::g() }\n");
    write("c.rs", "macro_rules! m { () => { $crate::a::x() } }\n");
    assert_eq!(cycle(&graph(dir.path())), None);
    write("c.rs", "use crate::a;\n");
    assert_eq!(
        cycle(&graph(dir.path())),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
