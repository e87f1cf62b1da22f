//! The module graph of a crate, read from its sources, and the circles in it.
//!
//! Rule: within a crate, no module imports a module that imports it back, directly or round a
//! longer circle. A module *imports* another when its code names it by path: `crate::a::b`,
//! `super::b`, `self::b`, or the name of one of its own child modules (`b::Item`). Two kinds
//! of edge are not counted:
//! - between a module and its ancestors or descendants: a parent declaring, composing and
//!   re-exporting its children while they use its items is the module tree itself;
//! - to the crate root: `lib.rs`/`main.rs` is the crate's facade (declarations, re-exports).
//!
//! `#[cfg(test)]` modules are left out: a test module may use anything.
//!
//! This is a reading of the text, not of the compiler's name resolution: comments, strings
//! and character literals are removed first; paths are followed as far as they name modules
//! that exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module, as its path below the crate root (`["http", "view"]`); the root is `[]`.
pub type ModPath = Vec<String>;

/// The modules of one crate and the edges between them.
#[derive(Debug, Default)]
pub struct Graph {
    /// Every module, with the file it is in.
    pub modules: BTreeMap<ModPath, PathBuf>,
    /// module -> the modules it imports (see the module docs for what counts).
    pub edges: BTreeMap<ModPath, BTreeSet<ModPath>>,
}

/// Reads the crate whose root file is `root` (a `lib.rs` or `main.rs`).
pub fn read_crate(root: &Path) -> Result<Graph, String> {
    let mut g = Graph::default();
    let mut refs: Vec<(ModPath, Vec<Ref>)> = Vec::new();
    let dir = root.parent().ok_or("a crate root has a directory")?;
    walk(root, dir, Vec::new(), &mut g, &mut refs)?;
    for (from, list) in refs {
        for r in list {
            if let Some(to) = resolve(&g, &from, &r) {
                let related = to.starts_with(&from) || from.starts_with(&to);
                if !to.is_empty() && !related {
                    g.edges.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    Ok(g)
}

/// A path found in a module's code: where it starts and its segments.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ref {
    /// Number of leading `super`s; `None` for a `crate::` path.
    up: Option<usize>,
    segments: Vec<String>,
}

/// Reads one file: its modules (inline ones included), their declarations and references.
fn walk(
    file: &Path,
    dir: &Path,
    module: ModPath,
    g: &mut Graph,
    refs: &mut Vec<(ModPath, Vec<Ref>)>,
) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let code = strip(&text);
    let parsed = parse_file(&code);
    for (inline, decl) in parsed.modules {
        let mut path = module.clone();
        path.extend(inline.iter().cloned());
        g.modules.insert(path.clone(), file.to_path_buf());
        for child in decl {
            // `a.rs` keeps its children in `a/`; `mod.rs`, `lib.rs` and `main.rs` beside them.
            let mut base = dir.to_path_buf();
            for m in &inline {
                base.push(m);
            }
            let name = child.clone();
            let candidates = [
                base.join(format!("{name}.rs")),
                base.join(&name).join("mod.rs"),
            ];
            let Some(found) = candidates.iter().find(|p| p.exists()) else {
                return Err(format!("{}: `mod {name};` has no file", file.display()));
            };
            let child_dir = if found.ends_with("mod.rs") {
                found.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                base.join(&name)
            };
            let mut child_path = path.clone();
            child_path.push(name);
            walk(found, &child_dir, child_path, g, refs)?;
        }
    }
    for (inline, list) in parsed.refs {
        let mut path = module.clone();
        path.extend(inline);
        refs.push((path, list));
    }
    Ok(())
}

/// What one file holds, by inline module (relative to the file's module).
#[derive(Debug, Default)]
struct Parsed {
    /// Each inline module (the file's own is `[]`) and the `mod x;` it declares.
    modules: BTreeMap<Vec<String>, Vec<String>>,
    /// Each inline module's references, children named relatively included.
    refs: BTreeMap<Vec<String>, Vec<Ref>>,
}

/// Whether `c` can be part of an identifier.
fn ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Splits stripped code into words and punctuation, keeping `::` as one token.
fn tokens(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if ident_char(c) {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
            continue;
        }
        if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
            continue;
        }
        if !c.is_whitespace() {
            out.push(c.to_string());
        }
        i += 1;
    }
    out
}

fn parse_file(code: &str) -> Parsed {
    let t = tokens(code);
    let mut p = Parsed::default();
    p.modules.insert(Vec::new(), Vec::new());
    // The inline modules open at this point, with the brace depth each one opened at.
    let mut stack: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut test_attr = false;
    let mut i = 0;
    let current = |stack: &[(String, usize)]| -> Vec<String> {
        stack.iter().map(|(n, _)| n.clone()).collect()
    };
    while i < t.len() {
        let tok = t[i].as_str();
        match tok {
            "#" if t.get(i + 1).map(String::as_str) == Some("[") => {
                // An attribute: note `#[cfg(test)]`, skip the rest.
                let mut j = i + 2;
                let mut d = 1;
                let mut words = Vec::new();
                while j < t.len() && d > 0 {
                    match t[j].as_str() {
                        "[" => d += 1,
                        "]" => d -= 1,
                        w => words.push(w.to_string()),
                    }
                    j += 1;
                }
                let has = |x: &str| words.iter().any(|w| w == x);
                if words.first().is_some_and(|w| w == "cfg") && has("test") && !has("not") {
                    test_attr = true;
                }
                i = j;
                continue;
            }
            "mod" if t.get(i + 1).is_some_and(|n| n.chars().all(ident_char)) => {
                let name = t[i + 1].clone();
                match t.get(i + 2).map(String::as_str) {
                    Some(";") => {
                        if !test_attr {
                            p.modules.entry(current(&stack)).or_default().push(name);
                        }
                        i += 3;
                    }
                    Some("{") if test_attr => {
                        // Skip the whole test module.
                        let mut j = i + 3;
                        let mut d = 1;
                        while j < t.len() && d > 0 {
                            match t[j].as_str() {
                                "{" => d += 1,
                                "}" => d -= 1,
                                _ => {}
                            }
                            j += 1;
                        }
                        i = j;
                    }
                    Some("{") => {
                        depth += 1;
                        stack.push((name, depth));
                        p.modules.entry(current(&stack)).or_default();
                        i += 3;
                    }
                    _ => i += 1,
                }
                test_attr = false;
                continue;
            }
            "{" => depth += 1,
            "}" => {
                if stack.last().is_some_and(|(_, d)| *d == depth) {
                    stack.pop();
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        // Anything but an attribute ends the item a `#[cfg(test)]` applied to.
        if tok != "pub" && tok != "(" && tok != ")" && tok != "crate" && tok != "super" {
            test_attr = false;
        }
        let after_path = i > 0 && t[i - 1] == "::";
        if !after_path && t.get(i + 1).is_some_and(|n| n == "::") {
            let start = match tok {
                "crate" => Some(None),
                "super" | "self" => Some(Some(0)),
                w if w.chars().all(ident_char) => Some(Some(0)),
                _ => None,
            };
            if let Some(up) = start {
                let mut prefix = Vec::new();
                let mut up = up;
                let mut j = i;
                // Leading `self::`/`super::` segments.
                while j < t.len() && (t[j] == "super" || t[j] == "self") {
                    if t[j] == "super" {
                        up = up.map(|u| u + 1);
                    }
                    if t.get(j + 1).is_some_and(|n| n == "::") {
                        j += 2;
                    } else {
                        break;
                    }
                }
                if tok == "crate" {
                    j = i + 2;
                } else if tok != "super" && tok != "self" {
                    // A relative path: counted only if it names a child module (checked when
                    // resolving, where the module tree is known).
                    prefix.push("\u{0}relative".to_string());
                }
                let mut found = Vec::new();
                let next = path_tree(&t, j, &prefix, &mut found);
                let here = current(&stack);
                for segments in found {
                    let (up, segments) = match segments.first().map(String::as_str) {
                        Some("\u{0}relative") => (Some(0), segments[1..].to_vec()),
                        _ => (up, segments),
                    };
                    p.refs
                        .entry(here.clone())
                        .or_default()
                        .push(Ref { up, segments });
                }
                i = next.max(i + 1);
                continue;
            }
        }
        i += 1;
    }
    p
}

/// Reads the path (or `{...}` tree of paths) starting at `t[j]`; pushes every full path into
/// `out` and returns the index after it.
fn path_tree(t: &[String], mut j: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut segs = prefix.to_vec();
    loop {
        match t.get(j).map(String::as_str) {
            Some("{") => {
                j += 1;
                loop {
                    match t.get(j).map(String::as_str) {
                        None => return j,
                        Some("}") => return j + 1,
                        Some(",") => j += 1,
                        Some(_) => j = path_tree(t, j, &segs, out),
                    }
                }
            }
            Some(w) if w.chars().all(ident_char) && !w.is_empty() => {
                segs.push(w.to_string());
                j += 1;
                if t.get(j).is_some_and(|n| n == "::") {
                    j += 1;
                    continue;
                }
                out.push(segs);
                return j;
            }
            _ => {
                out.push(segs);
                return j;
            }
        }
    }
}

/// The module a reference made in `from` leads to: the longest prefix of its absolute path
/// that is a module. `None` when it names no module of this crate.
fn resolve(g: &Graph, from: &ModPath, r: &Ref) -> Option<ModPath> {
    let mut abs: ModPath = match r.up {
        None => Vec::new(),
        Some(up) => {
            if up > from.len() {
                return None;
            }
            from[..from.len() - up].to_vec()
        }
    };
    let relative = r.up == Some(0);
    if relative {
        // Only a child module of `from` (or `self::x`) can be named this way.
        let mut child = from.clone();
        child.push(r.segments.first()?.clone());
        if !g.modules.contains_key(&child) {
            return None;
        }
    }
    let base = abs.len();
    let mut best = if r.up.is_some() && r.up != Some(0) {
        Some(abs.clone())
    } else {
        None
    };
    for s in &r.segments {
        if s == "self" {
            continue;
        }
        abs.push(s.clone());
        if g.modules.contains_key(&abs) {
            best = Some(abs.clone());
        } else if abs.len() > base {
            break;
        }
    }
    best
}

/// Removes comments, string literals and character literals, keeping line structure.
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '/' if c.get(i + 1) == Some(&'/') => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '/' if c.get(i + 1) == Some(&'*') => {
                let mut d = 0;
                while i < c.len() {
                    if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                        d += 1;
                        i += 2;
                    } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                        d -= 1;
                        i += 2;
                        if d == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(' ');
            }
            'r' if (c.get(i + 1) == Some(&'#') || c.get(i + 1) == Some(&'"'))
                && (i == 0 || !ident_char(c[i - 1])) =>
            {
                // Raw string r"..." or r#"..."#.
                let mut j = i + 1;
                let mut hashes = 0;
                while c.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if c.get(j) != Some(&'"') {
                    out.push(c[i]);
                    i += 1;
                    continue;
                }
                j += 1;
                'raw: while j < c.len() {
                    if c[j] == '"' && (0..hashes).all(|k| c.get(j + 1 + k) == Some(&'#')) {
                        j += 1 + hashes;
                        break 'raw;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
            }
            '"' => {
                i += 1;
                while i < c.len() && c[i] != '"' {
                    if c[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            '\'' => {
                // A character literal ('a', '\n', '\u{..}') or a lifetime ('a).
                if c.get(i + 1) == Some(&'\\') {
                    let mut j = i + 2;
                    while j < c.len() && c[j] != '\'' {
                        j += 1;
                    }
                    i = j + 1;
                    out.push_str("' '");
                } else if c.get(i + 2) == Some(&'\'') {
                    i += 3;
                    out.push_str("' '");
                } else {
                    out.push('\'');
                    i += 1;
                }
            }
            ch => {
                out.push(ch);
                i += 1;
            }
        }
    }
    out
}

/// The circles of `g`: strongly connected components of more than one module, each sorted.
pub fn circles(g: &Graph) -> Vec<Vec<ModPath>> {
    // Tarjan's algorithm, iterative enough for module graphs (recursion depth = modules).
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        on: BTreeSet<&'a ModPath>,
        stack: Vec<&'a ModPath>,
        next: usize,
        out: Vec<Vec<ModPath>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a ModPath) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        if let Some(ws) = t.g.edges.get(v) {
            for w in ws {
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low[v];
                    t.low.insert(v, lv.min(lw));
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low[v];
                    t.low.insert(v, lv.min(iw));
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        on: BTreeSet::new(),
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    let nodes: Vec<&ModPath> = g.edges.keys().collect();
    for v in nodes {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out.sort();
    t.out
}

/// `a::b` for a module path (`crate` for the root).
pub fn show(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// The edges inside one circle, `a -> b` each, for the report.
pub fn circle_edges(g: &Graph, circle: &[ModPath]) -> Vec<String> {
    let mut out = Vec::new();
    for a in circle {
        for b in g.edges.get(a).into_iter().flatten() {
            if circle.contains(b) {
                out.push(format!("{} -> {}", show(a), show(b)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crate from `(file, text)` pairs in a fresh directory.
    fn krate(files: &[(&str, &str)]) -> Graph {
        let dir = std::env::temp_dir().join(format!(
            "modgraph-{}-{}",
            std::process::id(),
            files.len() * 1000 + files.iter().map(|f| f.1.len()).sum::<usize>()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, text) in files {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let g = read_crate(&dir.join("lib.rs")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        g
    }

    fn names(c: &[Vec<ModPath>]) -> Vec<Vec<String>> {
        c.iter().map(|c| c.iter().map(show).collect()).collect()
    }

    #[test]
    fn sibling_imports_both_ways_are_a_circle() {
        let g = krate(&[
            ("lib.rs", "mod a; mod b; pub use a::A;"),
            ("a.rs", "use crate::b::B; pub struct A;"),
            ("b.rs", "pub struct B; fn f() { let _ = crate::a::A; }"),
        ]);
        assert_eq!(names(&circles(&g)), vec![vec!["a", "b"]]);
    }

    #[test]
    fn a_longer_circle_through_super_and_groups() {
        let g = krate(&[
            ("lib.rs", "pub mod h;"),
            ("h/mod.rs", "mod x; mod y; mod z; pub use x::X;"),
            ("h/x.rs", "use super::{y::Y, other};"),
            ("h/y.rs", "pub struct Y; use super::z::Z as _;"),
            ("h/z.rs", "pub struct Z; fn f() { super::x::g() }"),
        ]);
        assert_eq!(names(&circles(&g)), vec![vec!["h::x", "h::y", "h::z"]]);
    }

    #[test]
    fn parents_children_tests_comments_and_strings_do_not_count() {
        let g = krate(&[
            ("lib.rs", "mod p; mod q;"),
            ("p.rs", "mod c; pub use c::C; pub struct P;"),
            ("p/c.rs", "use super::P; pub struct C;"),
            (
                "q.rs",
                "// crate::p::P\nconst S: &str = \"crate::p::P\"; fn f<'a>(x: &'a u8) -> char { 'x' }\n\
                 #[cfg(test)]\nmod tests { use crate::p::P; }",
            ),
        ]);
        assert!(circles(&g).is_empty(), "{:?}", g.edges);
        assert!(
            !g.edges.contains_key(&vec!["q".to_string()]),
            "{:?}",
            g.edges
        );
    }

    #[test]
    fn one_way_imports_are_fine_and_recorded() {
        let g = krate(&[
            ("lib.rs", "mod a; mod b;"),
            ("a.rs", "use crate::b; fn f() { b::g() }"),
            ("b.rs", "pub fn g() {}"),
        ]);
        assert!(circles(&g).is_empty());
        assert_eq!(
            g.edges[&vec!["a".to_string()]],
            BTreeSet::from([vec!["b".to_string()]])
        );
    }
}
