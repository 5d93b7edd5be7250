//! The layout rules the compiler does not check, checked over the source tree:
//! - no module of `src/` imports from a module that imports it back, directly or through
//!   others (dependencies point one way);
//! - no file outside `src/layout.rs` spells an on-disk name: tests, benches, examples and
//!   fuzz targets build paths through `rocketstore::layout`;
//! - `unsafe` is allowed in one module only, `fs::mapped_file` (the crate root denies it,
//!   and this checks that no other module lifts the ban).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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

/// The code of a file without comments and without its `#[cfg(test)]` module.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    // Unit tests come last in a file (the lint-free `probe` module sits before them).
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
    text.lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `src/a/b.rs` → `a::b`, `src/a/mod.rs` → `a`, `src/lib.rs` → `` (the root).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_str().unwrap().to_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// Every path after `prefix` in `code`, as its `::`-separated words; groups such as
/// `crate::{a::X, b::{c, d}}` give one path per leaf.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().last();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        expand(rest, Vec::new(), &mut found);
    }
    found
}

/// The paths of the use tree at the start of `text`, each prefixed with `base`.
fn expand(text: &str, base: Vec<String>, out: &mut Vec<Vec<String>>) {
    let head: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
        .collect();
    let mut path = base;
    path.extend(
        head.split("::")
            .filter(|w| !w.is_empty())
            .map(str::to_owned),
    );
    let rest = &text[head.len()..];
    if !head.is_empty() && !head.ends_with("::") || !rest.starts_with('{') {
        out.push(path);
        return;
    }
    // A group: split its body at the top-level commas.
    let (mut depth, mut start) = (0, 1);
    for (i, c) in rest.char_indices() {
        match c {
            '{' => depth += 1,
            '}' | ',' if depth == 1 => {
                let item = rest[start..i].trim_start();
                if !item.is_empty() {
                    expand(item, path.clone(), out);
                }
                start = i + 1;
                if c == '}' {
                    return;
                }
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
}

fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeMap<String, PathBuf> = files
        .iter()
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    // The longest module a path names.
    let resolve = |words: &[String]| {
        (1..=words.len())
            .rev()
            .map(|n| words[..n].join("::"))
            .find(|m| modules.contains_key(m))
    };
    let mut graph = BTreeMap::new();
    for (module, file) in &modules {
        if module.is_empty() {
            continue; // the crate root re-exports; nothing imports it as a module
        }
        let code = code(file);
        let parent: Vec<String> = module.split("::").map(str::to_owned).collect();
        let parent = &parent[..parent.len() - 1];
        let mut edges = BTreeSet::new();
        for words in paths_after(&code, "crate::") {
            edges.extend(resolve(&words));
        }
        for words in paths_after(&code, "super::") {
            edges.extend(resolve(&[parent.to_vec(), words].concat()));
        }
        // A parent using its own child by name (`child::item`).
        for child in modules.keys() {
            if let Some(name) = child.strip_prefix(&format!("{module}::"))
                && !name.contains("::")
                && !paths_after(&code, &format!("{name}::")).is_empty()
            {
                edges.insert(child.clone());
            }
        }
        edges.remove(module);
        edges.remove("");
        graph.insert(module.clone(), edges);
    }
    graph
}

/// A cycle through `start`, if there is one.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_owned(), vec![start.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in graph.get(&at).into_iter().flatten() {
            if next == start {
                return Some([path.clone(), vec![next.clone()]].concat());
            }
            if seen.insert(next.clone()) {
                stack.push((next.clone(), [path.clone(), vec![next.clone()]].concat()));
            }
        }
    }
    None
}

#[test]
fn no_module_imports_from_a_module_that_imports_it_back() {
    let graph = import_graph();
    assert!(graph.len() > 20, "the source tree was not found: {graph:?}");
    // The check itself sees imports: dispatch uses the log, the store uses everything.
    assert!(graph["queue::dispatch"].contains("commit_log"));
    assert!(graph["store"].contains("queue::dispatch"));
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, module) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn grouped_imports_are_expanded() {
    let code = "use crate::{a::X, b::{c::Y, d}};\nuse crate::e::f;";
    let paths: Vec<String> = paths_after(code, "crate::")
        .iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(paths, ["a::X", "b::c::Y", "b::d", "e::f"]);
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    graph.insert("b".to_owned(), BTreeSet::from(["c".to_owned()]));
    graph.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(cycle_from(&graph, "b").unwrap(), ["b", "c", "a", "b"]);
    graph.get_mut("c").unwrap().clear();
    assert_eq!(cycle_from(&graph, "a"), None);
}

/// On-disk names as they would be spelled by hand.
const NAME_SPELLINGS: &[&str] = &[
    "\"commitlog",
    "/commitlog",
    "\"consumequeue",
    "/consumequeue",
    "\"queue_table",
    "/queue_table",
    "/checkpoint\"",
    "/abort\"",
    "/lock\"",
    "join(\"checkpoint\")",
    "join(\"abort\")",
    "join(\"lock\")",
    ":020}",
];

#[test]
fn on_disk_names_are_spelled_only_in_the_layout_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches", "examples", "fuzz/fuzz_targets"] {
        if root.join(dir).is_dir() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    let layout = root.join("src/layout.rs");
    let this = root.join("tests/architecture.rs");
    let mut found = Vec::new();
    for file in files.iter().filter(|f| **f != layout && **f != this) {
        for (n, line) in code(file).lines().enumerate() {
            if let Some(s) = NAME_SPELLINGS.iter().find(|s| line.contains(*s)) {
                found.push(format!("{}:{}: {s}", file.display(), n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "use rocketstore::layout:\n{}",
        found.join("\n")
    );
    // The check reads the file that must spell them.
    let layout = code(&layout);
    assert!(NAME_SPELLINGS[..2].iter().any(|s| layout.contains(s)));
}

#[test]
fn unsafe_is_allowed_in_the_mapped_file_module_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut allowed = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let line = line.split("//").next().unwrap();
            if line.contains("allow(unsafe_code)") || line.contains("expect(unsafe_code)") {
                let next = lines.get(i + 1).copied().unwrap_or("").trim().to_owned();
                allowed.push(format!("{}: {next}", module_of(&src, file)));
            }
            let under_mapped_file = file.starts_with(src.join("fs/mapped_file"));
            if !under_mapped_file {
                for token in ["unsafe {", "unsafe fn", "unsafe impl"] {
                    assert!(
                        !line.contains(token),
                        "{}:{}: `{token}` outside fs/mapped_file/",
                        file.display(),
                        i + 1
                    );
                }
            }
        }
    }
    assert_eq!(
        allowed,
        ["fs: pub(crate) mod mapped_file;"],
        "unsafe_code allowed elsewhere"
    );
    let root = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    assert!(
        root.contains("#![deny(unsafe_code)]"),
        "the crate root must deny unsafe code"
    );
}
