//! The layering of `src/`, checked from the source text.
//!
//! Imports point down only: the command line and daemon (`app`) -> job runs (`jobs`) -> the engine
//! (`engine`: model folders and families, pipeline, schedulers, noise, tokenizer, rerank) -> the ONNX
//! Runtime layer (`runtime`) -> small system helpers (`sys`). The spool (`spool`) is used by `app`
//! and `jobs` and uses `sys` only. [`ALLOWED`] is that table. Inside every module, its submodules
//! must not import each other in a cycle either. And no function outside tests is longer than
//! [`MAX_FN_LINES`] lines.
//!
//! The reader is a small lexer (comments and literals skipped) that follows `crate::`, `super::`
//! and `self::` paths, grouped `use` trees included, and resolves each to the longest module path
//! that exists as a file. The synthetic trees in the unit tests below show that each rule fails
//! when broken.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules and the top-level modules each may import.
const ALLOWED: &[(&str, &[&str])] = &[
    ("app", &["jobs", "engine", "runtime", "spool", "sys"]),
    ("jobs", &["engine", "runtime", "spool", "sys"]),
    ("engine", &["runtime", "sys"]),
    ("runtime", &["sys"]),
    ("spool", &["sys"]),
    ("sys", &[]),
];

/// The longest function allowed outside tests, in lines from `fn` to its closing brace.
const MAX_FN_LINES: usize = 120;

type ModPath = Vec<String>;

/// A source file: its module path and its code with comments and literals blanked out.
struct Source {
    module: ModPath,
    file: String,
    code: String,
}

#[test]
fn src_imports_point_down_and_close_no_cycle() {
    let sources = read_src(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(
        sources.len() > 50,
        "src/ was not read ({} files)",
        sources.len()
    );
    let problems = check_imports(&sources);
    assert!(
        problems.is_empty(),
        "layering problems in src/:\n{}",
        problems.join("\n")
    );
}

#[test]
fn no_function_outside_tests_is_longer_than_the_limit() {
    let sources = read_src(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let long: Vec<String> = sources
        .iter()
        .flat_map(|s| {
            long_functions(s)
                .into_iter()
                .map(move |(name, n)| format!("{}: fn {name}: {n} lines", s.file))
        })
        .collect();
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines:\n{}",
        long.join("\n")
    );
}

fn read_src(dir: &Path) -> Vec<Source> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files);
    files
        .into_iter()
        .map(|(rel, text)| source(&rel, &text))
        .collect()
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

/// `engine/scheduler/mod.rs` -> engine::scheduler; `lib.rs` and `main.rs` -> the root.
fn source(rel: &str, text: &str) -> Source {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    Source {
        module: parts,
        file: rel.to_string(),
        code: blank_comments_and_literals(text),
    }
}

/// The text with comments, string and char literals replaced by spaces (newlines kept).
fn blank_comments_and_literals(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (next == Some('"') || next == Some('#'))
            && !ident_char(c.get(i.wrapping_sub(1)))
        {
            let mut j = i + 1;
            while c.get(j) == Some(&'#') {
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            let hashes = j - i - 1;
            let mut k = j + 1;
            while k < c.len()
                && !(c[k] == '"' && (0..hashes).all(|h| c.get(k + 1 + h) == Some(&'#')))
            {
                k += 1;
            }
            let end = (k + 1 + hashes).min(c.len());
            for &ch in &c[i..end] {
                blank(&mut out, ch);
            }
            i = end;
        } else if c[i] == '"' {
            blank(&mut out, c[i]);
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    blank(&mut out, c[i]);
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            if i < c.len() {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '\'' && char_literal_len(&c[i..]).is_some() {
            let n = char_literal_len(&c[i..]).unwrap();
            for &ch in &c[i..i + n] {
                blank(&mut out, ch);
            }
            i += n;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn ident_char(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// `'a'`, `'\n'`, `'\u{1F600}'`, `'\''`: its length; a lifetime (`'a`) is none.
fn char_literal_len(c: &[char]) -> Option<usize> {
    if c.get(1) == Some(&'\\') {
        let end = c.iter().skip(2).position(|&ch| ch == '\'')? + 2;
        return (end <= 12).then_some(end + 1);
    }
    (c.get(2) == Some(&'\'')).then_some(3)
}

/// Every module path that a file imports or names (`crate::`, `super::`, `self::`), resolved to
/// absolute paths of segments.
fn referenced_paths(s: &Source) -> Vec<ModPath> {
    let tokens = tokenize(&s.code);
    let mut out = Vec::new();
    for i in 0..tokens.len() {
        let start = tokens[i].as_str();
        if !matches!(start, "crate" | "super" | "self")
            || tokens.get(i + 1).map(String::as_str) != Some("::")
        {
            continue;
        }
        // `super::super::x` is read from its first `super`; skip the inner ones.
        if i >= 2
            && tokens[i - 1] == "::"
            && matches!(tokens[i - 2].as_str(), "super" | "crate" | "self")
        {
            continue;
        }
        let mut base: ModPath = match start {
            "crate" => Vec::new(),
            _ => s.module.clone(),
        };
        let mut j = i;
        if start == "super" {
            while tokens.get(j).map(String::as_str) == Some("super")
                && tokens.get(j + 1).map(String::as_str) == Some("::")
            {
                base.pop();
                j += 2;
            }
        } else {
            j += 2;
        }
        let mut trees = Vec::new();
        use_tree(&tokens, j, base, &mut trees);
        out.extend(trees);
    }
    out
}

/// Reads a path (or grouped `use` tree) starting at `tokens[at]` below `prefix`.
fn use_tree(
    tokens: &[String],
    mut at: usize,
    mut prefix: ModPath,
    out: &mut Vec<ModPath>,
) -> usize {
    loop {
        match tokens.get(at).map(String::as_str) {
            Some("{") => {
                at += 1;
                loop {
                    at = use_tree(tokens, at, prefix.clone(), out);
                    match tokens.get(at).map(String::as_str) {
                        Some(",") => at += 1,
                        Some("}") => return at + 1,
                        _ => return at,
                    }
                    if tokens.get(at).map(String::as_str) == Some("}") {
                        return at + 1;
                    }
                }
            }
            Some(t) if t.chars().all(|c| c.is_alphanumeric() || c == '_') && t != "self" => {
                prefix.push(t.to_string());
                at += 1;
                if tokens.get(at).map(String::as_str) == Some("::") {
                    at += 1;
                    continue;
                }
                out.push(prefix);
                return at;
            }
            _ => {
                out.push(prefix);
                return at + usize::from(tokens.get(at).map(String::as_str) == Some("self"));
            }
        }
    }
}

fn tokenize(code: &str) -> Vec<String> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if c[i].is_alphanumeric() || c[i] == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(c[start..i].iter().collect());
        } else if c[i] == ':' && c.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else {
            if !c[i].is_whitespace() {
                out.push(c[i].to_string());
            }
            i += 1;
        }
    }
    out
}

/// The layering problems: imports between top-level modules that [`ALLOWED`] does not list, and
/// cycles among the submodules of any module.
fn check_imports(sources: &[Source]) -> Vec<String> {
    let modules: BTreeSet<ModPath> = sources.iter().map(|s| s.module.clone()).collect();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut problems = Vec::new();
    // Edges between siblings, keyed by their parent: (parent, from, to) -> an example file.
    let mut edges: BTreeMap<(ModPath, String, String), String> = BTreeMap::new();
    for s in sources.iter().filter(|s| !s.module.is_empty()) {
        for path in referenced_paths(s) {
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains(p))
                .unwrap_or_default();
            let common = s
                .module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == s.module.len() || common == target.len() {
                continue; // itself, an ancestor or a descendant
            }
            let key = (
                s.module[..common].to_vec(),
                s.module[common].clone(),
                target[common].clone(),
            );
            edges
                .entry(key)
                .or_insert_with(|| format!("{} uses {}", s.file, path.join("::")));
        }
    }
    for ((parent, from, to), example) in &edges {
        if !parent.is_empty() {
            continue;
        }
        match allowed.get(from.as_str()) {
            None => problems.push(format!(
                "top-level module `{from}` is not in the layer table ({example})"
            )),
            Some(ok) if !ok.contains(&to.as_str()) => {
                problems.push(format!("`{from}` may not import `{to}`: {example}"))
            }
            Some(_) => {}
        }
    }
    problems.extend(cycles(&edges));
    problems
}

/// Cycles among siblings, one line each, found by depth-first search per parent.
fn cycles(edges: &BTreeMap<(ModPath, String, String), String>) -> Vec<String> {
    let mut by_parent: BTreeMap<&ModPath, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
    for (parent, from, to) in edges.keys() {
        by_parent
            .entry(parent)
            .or_default()
            .entry(from.as_str())
            .or_default()
            .push(to.as_str());
    }
    let mut out = Vec::new();
    for (parent, graph) in by_parent {
        let mut done = BTreeSet::new();
        for &start in graph.keys() {
            let mut stack = vec![start];
            if let Some(cycle) = find_cycle(&graph, &mut stack, &mut done) {
                let at = if parent.is_empty() {
                    "src".to_string()
                } else {
                    parent.join("::")
                };
                let cycle = cycle.iter().map(|m| {
                    let (p, f, t) = (parent.clone(), m.0.to_string(), m.1.to_string());
                    format!("{} -> {} ({})", m.0, m.1, edges[&(p, f, t)])
                });
                out.push(format!(
                    "import cycle in {at}: {}",
                    cycle.collect::<Vec<_>>().join("; ")
                ));
                break; // one cycle per module: the next is often the same one seen from elsewhere
            }
        }
    }
    out
}

fn find_cycle<'a>(
    graph: &BTreeMap<&'a str, Vec<&'a str>>,
    stack: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
) -> Option<Vec<(&'a str, &'a str)>> {
    let node = *stack.last().unwrap();
    if done.contains(node) {
        return None;
    }
    for &next in graph.get(node).into_iter().flatten() {
        if let Some(pos) = stack.iter().position(|&m| m == next) {
            let mut path: Vec<&str> = stack[pos..].to_vec();
            path.push(next);
            return Some(path.windows(2).map(|w| (w[0], w[1])).collect());
        }
        stack.push(next);
        let found = find_cycle(graph, stack, done);
        stack.pop();
        if found.is_some() {
            return found;
        }
    }
    done.insert(node);
    None
}

/// Functions longer than [`MAX_FN_LINES`], outside `#[cfg(test)]` modules and `#[test]` functions.
fn long_functions(s: &Source) -> Vec<(String, usize)> {
    let lines: Vec<&str> = s.code.lines().collect();
    let mut skip_until = 0;
    let mut out = Vec::new();
    let mut attrs = String::new();
    for (n, line) in lines.iter().enumerate() {
        let t = line.trim();
        if n < skip_until {
            continue;
        }
        if t.starts_with("#[") {
            attrs.push_str(t);
            continue;
        }
        let is_test = attrs.contains("cfg(test)") || attrs.contains("#[test]");
        attrs.clear();
        let words: Vec<&str> = t
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        let Some(fn_at) = words.iter().position(|w| *w == "fn" || *w == "mod") else {
            continue;
        };
        if words[..fn_at].iter().any(|w| {
            !matches!(
                *w,
                "pub" | "crate" | "super" | "in" | "const" | "async" | "unsafe" | "extern"
            )
        }) {
            continue;
        }
        let Some(end) = block_end(&lines, n) else {
            continue;
        };
        if is_test {
            skip_until = end + 1;
        } else if words[fn_at] == "fn" && end + 1 - n > MAX_FN_LINES {
            out.push((
                words.get(fn_at + 1).unwrap_or(&"?").to_string(),
                end + 1 - n,
            ));
        }
    }
    out
}

/// The line of the brace closing the block that opens on or after line `start` (none for a
/// declaration ending in `;` first).
fn block_end(lines: &[&str], start: usize) -> Option<usize> {
    let mut depth = 0i32;
    let mut opened = false;
    for (n, line) in lines.iter().enumerate().skip(start) {
        for ch in line.chars() {
            match ch {
                '{' => {
                    depth += 1;
                    opened = true;
                }
                '}' => {
                    depth -= 1;
                    if opened && depth == 0 {
                        return Some(n);
                    }
                }
                ';' if !opened && depth == 0 => return None,
                _ => {}
            }
        }
    }
    None
}

mod rules_fail_when_broken {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> Vec<Source> {
        files.iter().map(|(rel, text)| source(rel, text)).collect()
    }

    #[test]
    fn an_upward_import_is_reported() {
        let t = tree(&[
            ("lib.rs", "pub mod sys; pub mod engine;"),
            ("sys/mod.rs", "pub mod yaml;"),
            ("sys/yaml.rs", "use crate::engine::pipeline::Pipeline;"),
            ("engine/mod.rs", "pub mod pipeline;"),
            (
                "engine/pipeline.rs",
                "use crate::sys::yaml; // crate::app::x in a comment\nlet s = \"crate::app\";",
            ),
        ]);
        let p = check_imports(&t);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains(
                "`sys` may not import `engine`: sys/yaml.rs uses engine::pipeline::Pipeline"
            ),
            "{p:?}"
        );
        assert!(p[1].starts_with("import cycle in src: "), "{p:?}");
    }

    #[test]
    fn a_cycle_between_submodules_is_reported_through_grouped_and_super_paths() {
        let t = tree(&[
            ("engine/mod.rs", "pub mod a; pub mod b; pub mod c;"),
            ("engine/a.rs", "use super::{b::X, c};"),
            (
                "engine/b.rs",
                "use crate::{sys::{hash, yaml::parse}, engine::c::Y};",
            ),
            ("engine/c.rs", "fn f() { super::super::engine::a::g(); }"),
            ("sys/mod.rs", ""),
            ("sys/hash.rs", ""),
            ("sys/yaml.rs", ""),
        ]);
        let p = check_imports(&t);
        assert_eq!(
            p,
            vec![
                "import cycle in engine: a -> b (engine/a.rs uses engine::b::X); b -> c (engine/b.rs uses engine::c::Y); c -> a (engine/c.rs uses engine::a::g)"
            ]
        );
    }

    #[test]
    fn downward_imports_and_lifetimes_pass() {
        let t = tree(&[
            (
                "app/mod.rs",
                "use crate::jobs::run; fn f<'a>(x: &'a str) -> char { 'x' }",
            ),
            (
                "jobs/mod.rs",
                "pub mod run; use crate::spool::{self, Spool}; use crate::engine;",
            ),
            ("jobs/run.rs", "use super::super::sys::time;"),
            ("spool/mod.rs", "use crate::sys::atomic::write;"),
            ("engine/mod.rs", "use crate::runtime::Session;"),
            ("runtime/mod.rs", "use crate::sys;"),
            ("sys/mod.rs", "pub mod atomic; pub mod time;"),
            ("sys/atomic.rs", ""),
            ("sys/time.rs", ""),
        ]);
        assert_eq!(check_imports(&t), Vec::<String>::new());
    }

    #[test]
    fn a_long_function_is_reported_and_test_code_is_not() {
        let body = "    let x = 1;\n".repeat(MAX_FN_LINES);
        let text = format!(
            "pub(crate) fn long() {{\n{body}}}\nfn short() {{ }}\n#[cfg(test)]\nmod tests {{\n    fn long_test() {{\n{body}    }}\n}}\n"
        );
        let s = source("sys/x.rs", &text);
        assert_eq!(
            long_functions(&s),
            vec![("long".to_string(), MAX_FN_LINES + 2)]
        );
    }
}
