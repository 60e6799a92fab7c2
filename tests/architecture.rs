//! The module graph of `src/` has no cycle, and the trainer does not reach up into the reports.
//!
//! Plain Rust over the source text (no dependency, no feature): every file `src/**/*.rs` is a
//! node, named by its module path (`conv::cpu`, `train::trainer`; `report` for
//! `src/report/mod.rs`, `crate` for `src/lib.rs`). A file depends on another when its code names
//! something that lives there: a `use` line or a path in the code (`crate::x::y`, `super::y`,
//! `self::y`, a child module `y::z`, or a name a `use` line brought in, as `confusion::cpu::f`
//! after `use crate::confusion`). A path goes to the deepest file it names (items of inline
//! modules count as their file's), and a name that file only imports (`use child::Item`, `pub
//! use` or not) goes on to the file that defines it. A `mod.rs` that re-exports its own children
//! is a front door, not a dependency, unless its own code uses what it re-exports. Comments,
//! string literals and `#[cfg(test)]` items are skipped: unit tests may reach for an oracle
//! anywhere.
//!
//! Fails on any cycle between files (naming it) and on any `src/train` file that depends on
//! `src/report` (the reports may read the trainer's types; the trainer knows nothing of them).
//!
//! Checked against planted violations: `#[allow(unused_imports)] use super::cpu::CpuAlgo;`
//! added to `src/conv/direct.rs` fails with "import cycle: conv::cpu -> conv::direct ->
//! conv::cpu"; `use crate::report::Report;` added to `src/train/model.rs` fails with
//! "train::model imports report::schema"; and `the_cycles_of_a_planted_graph_are_found` below
//! runs the same parser and search on a small source tree written in the test.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module path: `[]` is the crate root, `["conv", "cpu"]` is `src/conv/cpu.rs`.
type ModPath = Vec<String>;

/// What the parser found in one file.
#[derive(Default, Debug)]
struct FileInfo {
    /// Every path the code names, absolute or relative, with the inline module it appears in
    /// (relative to the file) and whether it is a `pub use` re-export.
    paths: Vec<Found>,
    /// Names the `use` lines bind, by (inline module, name), with the path they stand for.
    aliases: BTreeMap<(Vec<String>, String), Found>,
    /// Identifiers used outside `use` lines (to tell whether a re-export is also used here).
    code_idents: BTreeSet<String>,
}

#[derive(Clone, Debug)]
struct Found {
    /// Inline modules (relative to the file) the path appears in.
    inline: Vec<String>,
    segments: Vec<String>,
    reexport: bool,
}

/// The source without comments, and with every string and char literal emptied: the result is
/// only tokenized, so paths inside text never count.
fn strip(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !prev_is_ident(&b, i) {
            // Raw string r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Path,
    Punct(char),
}

fn tokenize(src: &str) -> Vec<Tok> {
    let b: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(b[start..i].iter().collect()));
        } else if c == ':' && b.get(i + 1) == Some(&':') {
            out.push(Tok::Path);
            i += 2;
        } else if c.is_whitespace() || c.is_ascii_digit() {
            i += 1;
        } else {
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    out
}

fn ident(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

/// Drops `#[cfg(test)]` items: the attribute, then up to the end of the item (its `;` or its
/// brace block).
fn drop_test_items(toks: Vec<Tok>) -> Vec<Tok> {
    let pat = [
        Tok::Punct('#'),
        Tok::Punct('['),
        Tok::Ident("cfg".into()),
        Tok::Punct('('),
        Tok::Ident("test".into()),
        Tok::Punct(')'),
        Tok::Punct(']'),
    ];
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        if toks[i..].starts_with(&pat) {
            i += pat.len();
            while i < toks.len() && toks[i] != Tok::Punct(';') && toks[i] != Tok::Punct('{') {
                i += 1;
            }
            if toks.get(i) == Some(&Tok::Punct('{')) {
                let mut depth = 0;
                while i < toks.len() {
                    match toks[i] {
                        Tok::Punct('{') => depth += 1,
                        Tok::Punct('}') => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            i += 1;
        } else {
            out.push(toks[i].clone());
            i += 1;
        }
    }
    out
}

/// Expands a `use` tree starting at `toks[i]` into full paths (with the alias each binds);
/// returns them and the index after the tree.
fn use_tree(toks: &[Tok], mut i: usize, prefix: &[String], out: &mut Vec<(Vec<String>, String)>) -> usize {
    let mut path = prefix.to_vec();
    loop {
        match toks.get(i) {
            Some(Tok::Ident(s)) => {
                path.push(s.clone());
                i += 1;
                if toks.get(i) == Some(&Tok::Path) {
                    i += 1;
                    continue;
                }
                let mut alias = path.last().cloned().unwrap_or_default();
                if ident(toks.get(i)) == Some("as") {
                    alias = ident(toks.get(i + 1)).unwrap_or("_").to_string();
                    i += 2;
                }
                if alias == "self" {
                    path.pop();
                    alias = path.last().cloned().unwrap_or_default();
                }
                out.push((path, alias));
                return i;
            }
            Some(Tok::Punct('*')) => {
                out.push((path, "*".into()));
                return i + 1;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                loop {
                    match toks.get(i) {
                        Some(Tok::Punct('}')) => return i + 1,
                        Some(Tok::Punct(',')) => i += 1,
                        None => return i,
                        _ => i = use_tree(toks, i, &path, out),
                    }
                }
            }
            _ => return i + 1,
        }
    }
}

fn parse(src: &str) -> FileInfo {
    let toks = drop_test_items(tokenize(&strip(src)));
    let mut info = FileInfo::default();
    // Inline modules open at this point, with the brace depth at which each closes.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Punct('{') => {
                depth += 1;
                i += 1;
            }
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                i += 1;
            }
            Tok::Ident(kw) if kw == "mod" => {
                if let (Some(name), Some(Tok::Punct('{'))) = (ident(toks.get(i + 1)), toks.get(i + 2)) {
                    inline.push((name.to_string(), depth));
                }
                i += 2;
            }
            Tok::Ident(kw) if kw == "use" => {
                // `pub use`, `pub(crate) use`... is a re-export.
                let reexport = i >= 1
                    && (ident(toks.get(i - 1)) == Some("pub")
                        || (toks.get(i - 1) == Some(&Tok::Punct(')'))
                            && (2..5).any(|k| i >= k && ident(toks.get(i - k)) == Some("pub"))));
                let mut trees = Vec::new();
                let mut j = use_tree(&toks, i + 1, &[], &mut trees);
                while j < toks.len() && toks[j] != Tok::Punct(';') {
                    j += 1;
                }
                let scope: Vec<String> = inline.iter().map(|(n, _)| n.clone()).collect();
                for (segments, alias) in trees {
                    let found = Found { inline: scope.clone(), segments, reexport };
                    if alias != "*" && alias != "_" {
                        info.aliases.insert((scope.clone(), alias), found.clone());
                    }
                    info.paths.push(found);
                }
                i = j + 1;
            }
            Tok::Ident(first) => {
                let mut segments = vec![first.clone()];
                let mut j = i + 1;
                while toks.get(j) == Some(&Tok::Path) {
                    match ident(toks.get(j + 1)) {
                        Some(s) => segments.push(s.to_string()),
                        None => break,
                    }
                    j += 2;
                }
                // A path preceded by `::` continues one already taken; skip bare identifiers.
                let continued = i >= 1 && toks[i - 1] == Tok::Path;
                if !continued {
                    info.code_idents.insert(first.clone());
                    if segments.len() > 1 {
                        let scope = inline.iter().map(|(n, _)| n.clone()).collect();
                        info.paths.push(Found { inline: scope, segments, reexport: false });
                    }
                }
                i = j.max(i + 1);
            }
            _ => i += 1,
        }
    }
    info
}

/// The parsed source tree: each file's module path, what it declares as child modules, and
/// what it names.
struct Tree {
    files: BTreeMap<ModPath, FileInfo>,
}

impl Tree {
    /// Reads `(relative path, text)` pairs, e.g. `("conv/cpu.rs", "...")`.
    fn new(sources: &[(String, String)]) -> Tree {
        let mut files = BTreeMap::new();
        for (rel, text) in sources {
            let rel = rel.trim_end_matches(".rs");
            let mut module: ModPath = rel.split('/').map(str::to_string).collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                module.pop();
            }
            files.insert(module, parse(text));
        }
        Tree { files }
    }

    fn is_file(&self, m: &[String]) -> bool {
        self.files.contains_key(m)
    }

    /// The file an absolute path lands in: the deepest file module it names, then through
    /// re-exports of that file to the defining file. `None` outside the crate.
    fn land(&self, abs: &[String], hops: usize) -> Option<ModPath> {
        let mut depth = (0..=abs.len()).rev().find(|&d| self.is_file(&abs[..d]))?;
        let file: ModPath = abs[..depth].to_vec();
        if hops < 8 {
            if let Some(item) = abs.get(depth) {
                // The name as the file binds it (a `use` there, public or not: its children
                // see both), followed to where it is defined.
                if let Some(re) = self.files[&file].aliases.get(&(Vec::new(), item.clone())) {
                    let mut target = self.absolute(&file, re, 0)?;
                    target.extend(abs[depth + 1..].iter().cloned());
                    if let Some(t) = self.land(&target, hops + 1) {
                        return Some(t);
                    }
                }
            }
        }
        depth = depth.min(abs.len());
        Some(abs[..depth].to_vec())
    }

    /// The absolute module path of a path found in `file`; `None` for another crate's path.
    fn absolute(&self, file: &ModPath, found: &Found, hops: usize) -> Option<ModPath> {
        let mut here: ModPath = file.clone();
        here.extend(found.inline.iter().cloned());
        let segs = &found.segments;
        let first = segs.first()?.as_str();
        let mut abs: ModPath;
        let mut rest = &segs[..];
        match first {
            "crate" => {
                abs = Vec::new();
                rest = &segs[1..];
            }
            "self" => {
                abs = here;
                rest = &segs[1..];
            }
            "super" => {
                abs = here;
                while rest.first().map(String::as_str) == Some("super") {
                    abs.pop()?;
                    rest = &rest[1..];
                }
            }
            "Self" => return None,
            name => {
                // A name bound by this file's `use` lines, else a child module of this file.
                let info = &self.files[file];
                let bound = info.aliases.get(&(found.inline.clone(), name.to_string()));
                if let Some(b) = bound.filter(|b| b.segments != *segs && hops < 8) {
                    let mut base = self.absolute(file, b, hops + 1)?;
                    base.extend(segs[1..].iter().cloned());
                    return Some(base);
                }
                let mut child = here.clone();
                child.push(name.to_string());
                if self.is_file(&child) {
                    abs = here;
                } else {
                    return None;
                }
            }
        }
        abs.extend(rest.iter().cloned());
        Some(abs)
    }

    /// Every dependency edge between files.
    fn edges(&self) -> BTreeSet<(ModPath, ModPath)> {
        let mut out = BTreeSet::new();
        for (file, info) in &self.files {
            for found in &info.paths {
                let Some(abs) = self.absolute(file, found, 0) else { continue };
                if found.reexport && abs.starts_with(file) {
                    // A front door for its own children: a dependency only if the file's own
                    // code uses the name.
                    let name = found.segments.last().cloned().unwrap_or_default();
                    if !info.code_idents.contains(&name) {
                        continue;
                    }
                }
                if let Some(target) = self.land(&abs, 0) {
                    if &target != file {
                        out.insert((file.clone(), target));
                    }
                }
            }
        }
        out
    }
}

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// One shortest cycle through each file that lies on a cycle (files already on a reported cycle
/// start no other search).
fn cycles(edges: &BTreeSet<(ModPath, ModPath)>) -> Vec<Vec<ModPath>> {
    let mut adj: BTreeMap<&ModPath, Vec<&ModPath>> = BTreeMap::new();
    for (a, b) in edges {
        adj.entry(a).or_default().push(b);
        adj.entry(b).or_default();
    }
    let mut found = Vec::new();
    let mut seen_in_cycle: BTreeSet<&ModPath> = BTreeSet::new();
    for &start in adj.keys() {
        if seen_in_cycle.contains(start) {
            continue;
        }
        // Shortest path from start's successors back to start (BFS).
        let mut prev: BTreeMap<&ModPath, &ModPath> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut hit = None;
        while let Some(n) = queue.pop_front() {
            for &m in &adj[n] {
                if m == start {
                    hit = Some(n);
                    break;
                }
                if !prev.contains_key(m) {
                    prev.insert(m, n);
                    queue.push_back(m);
                }
            }
            if hit.is_some() {
                break;
            }
        }
        if let Some(mut n) = hit {
            let mut cycle = vec![n.clone()];
            while n != start {
                n = prev[n];
                cycle.push(n.clone());
            }
            cycle.reverse();
            for m in &cycle {
                seen_in_cycle.insert(adj.get_key_value(m).unwrap().0);
            }
            found.push(cycle);
        }
    }
    found
}

/// What is wrong with a source tree, one line each.
fn violations(tree: &Tree) -> Vec<String> {
    let edges = tree.edges();
    let mut out = Vec::new();
    for c in cycles(&edges) {
        let mut names: Vec<String> = c.iter().map(|m| name(m)).collect();
        names.push(names[0].clone());
        out.push(format!("import cycle: {}", names.join(" -> ")));
    }
    for (a, b) in &edges {
        if a.first().map(String::as_str) == Some("train") && b.first().map(String::as_str) == Some("report") {
            out.push(format!("{} imports {} (the trainer must not depend on the reports)", name(a), name(b)));
        }
    }
    out
}

fn read_sources(root: &Path) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
                out.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn src_has_no_import_cycles_and_train_does_not_import_report() {
    let sources = read_sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(sources.len() > 40, "only {} files read", sources.len());
    let tree = Tree::new(&sources);
    let edges = tree.edges();
    // The parser sees the dependencies it must see (a blind parser would pass everything).
    for (a, b) in [
        ("train::checkpoint", "train::config"),
        ("train::cuda_backend", "train::backend"),
        ("report::schema", "train::epoch_log"),
        ("conv::winograd", "conv::gemm_plan"),
        ("conv::cpu", "conv::direct"),
        ("train::trainer", "json"),
        ("report::chart", "report::schema"),
    ] {
        let key = |s: &str| s.split("::").map(str::to_string).collect::<ModPath>();
        assert!(edges.contains(&(key(a), key(b))), "the parser missed {a} -> {b}");
    }
    let bad = violations(&tree);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_cycles_of_a_planted_graph_are_found() {
    let src = |files: &[(&str, &str)]| -> Vec<(String, String)> {
        files.iter().map(|(p, t)| (p.to_string(), t.to_string())).collect()
    };
    let clean = src(&[
        ("lib.rs", "pub mod a; pub mod train; pub mod report; pub use a::Thing;"),
        ("a/mod.rs", "mod inner; pub use inner::Thing; pub struct Own;"),
        // A child naming its parent's own item, and the parent only re-exporting the child.
        ("a/inner.rs", "use super::Own; pub struct Thing(Own); // use crate::report;"),
        ("train/mod.rs", "pub struct Config; fn f() { let s = \"crate::report::x\"; }"),
        ("report/mod.rs", "use crate::train::Config; use crate::Thing;"),
    ]);
    assert_eq!(violations(&Tree::new(&clean)), Vec::<String>::new());

    let planted = src(&[
        ("lib.rs", "pub mod a; pub mod train; pub mod report;"),
        ("a/mod.rs", "pub mod x; pub mod y;"),
        ("a/x.rs", "use super::y::f; pub fn g() { f() }"),
        ("a/y.rs", "pub fn f() { crate::a::x::g() }"),
        ("train/mod.rs", "pub struct Config; fn f() -> report::R { todo!() } use crate::report;"),
        ("report/mod.rs", "pub struct R; #[cfg(test)] mod tests { use crate::a::x; }"),
    ]);
    let bad = violations(&Tree::new(&planted));
    assert!(bad.iter().any(|v| v == "import cycle: a::x -> a::y -> a::x"), "{bad:?}");
    assert!(bad.iter().any(|v| v.starts_with("train imports report")), "{bad:?}");
    assert_eq!(bad.len(), 2, "{bad:?}");
}
