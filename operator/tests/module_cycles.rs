//! No import cycles between the modules of any library crate in the workspace (issue 13).
//!
//! Reads every `.rs` file under each member's `src/` (binaries under `src/bin/` and `main.rs` are
//! crate roots of their own and import the library by name), takes the file's own imports — the
//! `use` items at the top level of the file, and every `crate::…` path outside its
//! `#[cfg(test)]` part — resolves each to the deepest module it names, and fails on any strongly
//! connected component of more than one module. A module's edges to its own ancestors or
//! descendants are not counted: a parent re-exporting its children and a child using its
//! parent's items is one module's inside, not a cycle between modules.
//!
//! Runs without a cluster or network; plain `cargo test -p chat-cluster-operator`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path, `["crate", "reconcile", "build"]`.
type Module = Vec<String>;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("operator/ has a parent")
        .to_path_buf()
}

/// The `members = [...]` of the workspace manifest.
fn members(root: &Path) -> Vec<PathBuf> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("workspace Cargo.toml");
    let line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("workspace members");
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(|m| root.join(m))
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The library module a file under `src/` defines; None for binary roots.
fn module_of(src: &Path, file: &Path) -> Option<Module> {
    let relative = file.strip_prefix(src).expect("file under src");
    let parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") || parts == ["main.rs"] {
        return None;
    }
    let mut module = vec!["crate".to_owned()];
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match (last, part.as_str()) {
            (true, "lib.rs" | "mod.rs") => {}
            (true, file) => module.push(file.trim_end_matches(".rs").to_owned()),
            (false, dir) => module.push(dir.to_owned()),
        }
    }
    Some(module)
}

/// `text` without its `#[cfg(test)]` items: after each such attribute, the next item is left out
/// — a one-line `mod x;` (or any item ending in `;`), or a block up to its balanced closing
/// brace — and the scan goes on after it, so production code after a test item is still read.
fn production_part(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut depth = 0i64;
        let mut opened = false;
        for item in lines.by_ref() {
            if item.trim_start().starts_with("#[") && !opened {
                continue;
            }
            depth += item.matches('{').count() as i64 - item.matches('}').count() as i64;
            opened |= item.contains('{');
            if (opened && depth <= 0) || (!opened && item.trim_end().ends_with(';')) {
                break;
            }
        }
    }
    out
}

/// `line` without its visibility (`pub`, `pub(crate)`, `pub(super)`, `pub(in path)`).
fn without_visibility(line: &str) -> &str {
    let line = line.trim_start();
    if let Some(rest) = line.strip_prefix("pub(") {
        return rest.find(')').map_or(line, |i| rest[i + 1..].trim_start());
    }
    line.strip_prefix("pub ").map_or(line, str::trim_start)
}

/// The `use` items of `text` (top-level and indented, e.g. inside a function), each as one
/// string without `use`, visibility and `;`, with whether it is a re-export (`pub…`).
fn use_items_with_visibility(text: &str) -> Vec<(String, bool)> {
    let mut items = Vec::new();
    let mut current: Option<(String, bool)> = None;
    for line in text.lines() {
        if let Some((item, _)) = current.as_mut() {
            item.push_str(line.trim());
        } else if let Some(rest) = without_visibility(line).strip_prefix("use ") {
            current = Some((rest.trim().to_owned(), line.trim_start().starts_with("pub")));
        } else {
            continue;
        }
        if let Some((item, public)) = current.take_if(|(i, _)| i.ends_with(';')) {
            items.push((item.trim_end_matches(';').to_owned(), public));
        }
    }
    items
}

/// The `use` items of `text`, as [`use_items_with_visibility`] without the visibility.
fn use_items(text: &str) -> Vec<String> {
    use_items_with_visibility(text)
        .into_iter()
        .map(|(item, _)| item)
        .collect()
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        return vec![path.to_owned()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').expect("balanced braces")];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand)
        .map(|p| format!("{prefix}{p}"))
        .collect()
}

/// `crate::…`, `super::…` and `self::…` paths used anywhere in the code of `text` (qualified
/// calls and types, not only `use` items); comments are skipped.
fn qualified_paths(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    for root in ["crate::", "super::", "self::"] {
        out.extend(paths_from(&code, root));
    }
    out
}

/// The paths in `code` that start with `root` (not inside a longer path or identifier).
fn paths_from(code: &str, root: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(root) {
        let preceded_by_ident = rest[..i]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        if !preceded_by_ident {
            out.push(tail[..end].trim_end_matches(':').to_owned());
        }
        rest = &tail[end.max(1)..];
    }
    out
}

/// The deepest known module `path` (as written in `from`) names, and the segment after it (an
/// item of that module, if any).
fn resolve_item(
    path: &str,
    from: &Module,
    modules: &BTreeSet<Module>,
) -> Option<(Module, Option<String>)> {
    let mut segments = path.split("::").map(str::trim).filter(|s| !s.is_empty());
    let first = segments.next()?;
    let mut module: Module = match first {
        "crate" => vec!["crate".to_owned()],
        "self" => from.clone(),
        "super" => from[..from.len().saturating_sub(1)].to_vec(),
        child => {
            let mut m = from.clone();
            m.push(child.to_owned());
            if !modules.contains(&m) {
                return None; // an extern crate or a local item
            }
            m
        }
    };
    for segment in segments {
        match segment {
            "super" => {
                module.pop();
            }
            "self" | "*" => {}
            name => {
                let mut deeper = module.clone();
                deeper.push(name.to_owned());
                if modules.contains(&deeper) {
                    module = deeper;
                } else {
                    return Some((module, Some(name.to_owned())));
                }
            }
        }
    }
    Some((module, None))
}

/// The deepest known module `path` (as written in `from`) names.
fn resolve(path: &str, from: &Module, modules: &BTreeSet<Module>) -> Option<Module> {
    resolve_item(path, from, modules).map(|(module, _)| module)
}

/// For each module, the names it re-exports (`pub use …::Name`, any visibility) and the module
/// each comes from.
type ReExports = BTreeMap<Module, BTreeMap<String, Module>>;

fn re_exports(sources: &[(Module, String)], modules: &BTreeSet<Module>) -> ReExports {
    let mut out = ReExports::new();
    for (module, text) in sources {
        for (item, public) in use_items_with_visibility(&production_part(text)) {
            if !public {
                continue;
            }
            for path in expand(&item) {
                let name = path.rsplit("::").next().unwrap_or(&path).trim().to_owned();
                if let Some(from) = resolve(&path, module, modules)
                    && &from != module
                {
                    out.entry(module.clone()).or_default().insert(name, from);
                }
            }
        }
    }
    out
}

/// Where `path` (as written in `from`) really leads: the module it names, or, when that module
/// only re-exports the item, the module the item comes from (followed a few hops).
fn target(
    path: &str,
    from: &Module,
    modules: &BTreeSet<Module>,
    re_exports: &ReExports,
) -> Option<Module> {
    let (mut module, item) = resolve_item(path, from, modules)?;
    for _ in 0..4 {
        // The item by its name, else a glob re-export (`pub use x::*`) of the module; the
        // same name is then looked up in the next module (a re-export of a re-export).
        let Some(next) = item.as_ref().and_then(|name| {
            let names = re_exports.get(&module)?;
            names.get(name).or_else(|| names.get("*"))
        }) else {
            break;
        };
        module = next.clone();
    }
    Some(module)
}

fn nested(a: &Module, b: &Module) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The import graph of the library crate rooted at `src`.
fn graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let sources: Vec<(Module, String)> = files
        .iter()
        .filter_map(|f| {
            let module = module_of(src, f)?;
            Some((module, std::fs::read_to_string(f).expect("readable source")))
        })
        .collect();
    let modules: BTreeSet<Module> = sources.iter().map(|(m, _)| m.clone()).collect();
    let re_exports = re_exports(&sources, &modules);
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, text) in &sources {
        let text = production_part(text);
        let items = use_items(&text);
        let paths = items
            .iter()
            .flat_map(|item| expand(item))
            .chain(qualified_paths(&text));
        let targets = edges.entry(module.clone()).or_default();
        for path in paths {
            if let Some(target) = target(&path, module, &modules, &re_exports)
                && !nested(&target, module)
            {
                targets.insert(target);
            }
        }
    }
    edges
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct Tarjan<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        found: Vec<Vec<Module>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a Module) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.found
}

fn show(component: &[Module]) -> String {
    component
        .iter()
        .map(|m| m.join("::"))
        .collect::<Vec<_>>()
        .join(" ↔ ")
}

#[test]
fn no_library_crate_has_an_import_cycle() {
    let mut checked = Vec::new();
    let mut found = Vec::new();
    for member in members(&workspace_root()) {
        let src = member.join("src");
        if !src.join("lib.rs").exists() {
            continue;
        }
        let edges = graph(&src);
        // A crate of one file has no import to cycle through; in a crate of several files, a
        // graph of one module would mean the `mod`/`use` reading broke.
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        assert!(
            edges.len() > 1 || files.len() == 1,
            "{} has modules",
            src.display()
        );
        found.extend(
            cycles(&edges)
                .iter()
                .map(|c| format!("{}: {}", member.display(), show(c))),
        );
        checked.push(member);
    }
    let names: Vec<String> = checked.iter().map(|m| m.display().to_string()).collect();
    assert!(
        names.iter().any(|n| n.ends_with("operator"))
            && names.iter().any(|n| n.ends_with("chat-server")),
        "checked {names:?}"
    );
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

/// The checker itself: it sees a cycle through `use` items and through qualified paths, and
/// ignores parent/child imports and test modules.
#[test]
fn the_checker_finds_a_planted_cycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    let write = |path: &str, text: &str| {
        let file = src.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(file, text).expect("write");
    };
    write(
        "lib.rs",
        "pub mod a;\npub mod b;\npub mod c;\npub mod d;\npub mod e;\npub mod f;\npub mod g;\npub mod h;\n",
    );
    write(
        "a/mod.rs",
        "pub mod inner;\nuse inner::X;\nuse crate::{b::Y, c};\n",
    );
    write("a/inner.rs", "use super::Z;\n");
    write("b.rs", "pub fn f() { crate::a::g() }\n");
    write(
        "c.rs",
        "\n#[cfg(test)]\nmod tests {\n    use crate::a::Z;\n}\n",
    );
    // Production code after a one-line test module, and an import inside a function body.
    write(
        "d.rs",
        "#[cfg(test)]\nmod sim;\npub fn h() {\n    use crate::e::W;\n}\n",
    );
    write("e.rs", "pub use crate::d::h;\n");
    // A cycle through the parent's re-export: f::x uses `super::Y`, which is f::y's.
    write("f/mod.rs", "pub mod x;\npub mod y;\npub use self::y::Y;\n");
    write("f/x.rs", "use super::Y;\n");
    write("f/y.rs", "use super::x::X;\n");
    // Through inline `super::` paths in function bodies.
    write("g/mod.rs", "pub mod p;\npub mod q;\n");
    write("g/p.rs", "pub fn a() {\n    super::q::b()\n}\n");
    write("g/q.rs", "pub fn b() {\n    super::p::a()\n}\n");
    // Through restricted re-exports.
    write("h/mod.rs", "pub mod r;\npub mod s;\n");
    write("h/r.rs", "pub(super) use super::s::S;\n");
    write("h/s.rs", "pub(in crate::h) use super::r::R;\n");
    let edges = graph(src);
    let found = cycles(&edges);
    let module = |p: &str| p.split("::").map(str::to_owned).collect::<Module>();
    let mut found = found;
    found.sort();
    assert_eq!(
        found,
        vec![
            vec![module("crate::a"), module("crate::b")],
            vec![module("crate::d"), module("crate::e")],
            vec![module("crate::f::x"), module("crate::f::y")],
            vec![module("crate::g::p"), module("crate::g::q")],
            vec![module("crate::h::r"), module("crate::h::s")],
        ]
    );
    assert!(edges[&module("crate::c")].is_empty(), "test imports count");
    assert!(
        edges[&module("crate::a::inner")].is_empty(),
        "parent import counts"
    );
}
