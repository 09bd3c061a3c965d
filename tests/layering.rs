//! The layering of the crate, kept true: a top-level module may use only the modules of the
//! layers below its own (never a sibling of its layer, never one above). The data flows up:
//!
//! | layer | modules | what it is |
//! |---|---|---|
//! | 0 | `component` | what probes and checks share: options sections, their reference |
//! | 1 | `inventory` | which namespaces (targets) there are, and the Kubernetes view |
//! | 2 | `sources` | the kernel readers every component shares |
//! | 3 | `probes`, `checks` | what reads metrics / finds problems, one file each |
//! | 4 | `collector` | one collection over every target |
//! | 5 | `telemetry` | a collection as OpenTelemetry data, exported |
//! | 6 | `events` | problems as events, to their sinks |
//! | 7 | `http` | the endpoint |
//! | 8 | `config` | flags, environment and file, composed from everyone's sections |
//!
//! Every `crate::…` path of every source file is read with `syn` (uses, types, expressions),
//! tests included: a test that needs a higher layer belongs to that layer.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use syn::visit::Visit;

const LAYERS: &[&[&str]] = &[
    &["component"],
    &["inventory"],
    &["sources"],
    &["probes", "checks"],
    &["collector"],
    &["telemetry"],
    &["events"],
    &["http"],
    &["config"],
];

/// The binary's own modules (`main.rs` and what it declares): above every layer, they use the
/// library as `net_exporter::…`.
const BINARY: &[&str] = &["main", "diagnose"];

/// Macros exported at the crate root, by the module that defines them.
const MACROS: &[(&str, &str)] = &[("metrics", "probes")];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level modules named by the `crate::…` paths of one file.
#[derive(Default)]
struct Uses(BTreeSet<String>);

impl Uses {
    fn add(&mut self, first: &str) {
        let module = MACROS
            .iter()
            .find(|(m, _)| *m == first)
            .map_or(first, |(_, owner)| *owner);
        self.0.insert(module.to_string());
    }
}

impl<'ast> Visit<'ast> for Uses {
    fn visit_path(&mut self, p: &'ast syn::Path) {
        let mut segments = p.segments.iter();
        if let (Some(a), Some(b)) = (segments.next(), segments.next())
            && a.ident == "crate"
        {
            self.add(&b.ident.to_string());
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        if let syn::UseTree::Path(p) = &u.tree
            && p.ident == "crate"
        {
            let mut firsts = Vec::new();
            collect_firsts(&p.tree, &mut firsts);
            for f in firsts {
                self.add(&f);
            }
        }
    }
}

/// The first segments below `crate::` of a use tree (`crate::{a::x, b}` → a, b).
fn collect_firsts(tree: &syn::UseTree, out: &mut Vec<String>) {
    match tree {
        syn::UseTree::Path(p) => out.push(p.ident.to_string()),
        syn::UseTree::Name(n) => out.push(n.ident.to_string()),
        syn::UseTree::Rename(r) => out.push(r.ident.to_string()),
        syn::UseTree::Group(g) => g.items.iter().for_each(|t| collect_firsts(t, out)),
        syn::UseTree::Glob(_) => {}
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn modules_import_only_layers_below_their_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut seen_modules = BTreeSet::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|c| c.trim_end_matches(".rs").to_string())
            .unwrap_or_default();
        if top == "lib" || BINARY.contains(&top.as_str()) {
            continue;
        }
        let Some(own) = layer_of(&top) else {
            violations.push(format!(
                "{}: top-level module {top:?} has no layer (add it to LAYERS)",
                rel.display()
            ));
            continue;
        };
        seen_modules.insert(top.clone());
        let text = std::fs::read_to_string(file).expect("read source");
        let ast = syn::parse_file(&text)
            .unwrap_or_else(|e| panic!("{}: does not parse: {e}", rel.display()));
        let mut uses = Uses::default();
        uses.visit_file(&ast);
        for used in uses.0 {
            if used == top {
                continue;
            }
            match layer_of(&used) {
                Some(l) if l < own => {}
                Some(l) => violations.push(format!(
                    "{}: {top} (layer {own}) uses {used} (layer {l})",
                    rel.display()
                )),
                None => violations.push(format!(
                    "{}: uses crate::{used}, which is in no layer",
                    rel.display()
                )),
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the layering:\n{}",
        violations.join("\n")
    );
    let all: BTreeSet<String> = LAYERS
        .iter()
        .flat_map(|l| l.iter())
        .map(|m| m.to_string())
        .collect();
    assert_eq!(seen_modules, all, "every layer's module exists");
}

/// The checker itself: a file that imports upwards is caught, one that does not is not.
#[test]
fn the_checker_sees_imports_in_every_form() {
    let text = "use crate::{sources::x, collector};\nfn f() -> crate::telemetry::T { crate::metrics![] ; todo!() }\n";
    let mut uses = Uses::default();
    uses.visit_file(&syn::parse_file(text).unwrap());
    let got: Vec<&str> = uses.0.iter().map(String::as_str).collect();
    assert_eq!(got, ["collector", "probes", "sources", "telemetry"]);
}
