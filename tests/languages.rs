//! The same contract in three languages: the Rust, Python (componentize-py)
//! and JavaScript (componentize-js) case-search plugins pass the same golden
//! fixtures, declare the same index, and agree action for action on
//! generated CommCare-like changes.

use crate::support::*;
use pillowtop::change;
use pillowtop::feed::{Message, TopicPartition};
use pillowtop::fixtures;
use pillowtop::generate::{GenOptions, Generator, Kind};
use pillowtop::manifest::Manifest;
use pillowtop::wasm::Processor;
use std::path::PathBuf;

fn manifests() -> Vec<(&'static str, PathBuf)> {
    component("plugins/examples/python-case-search/case_search_py.wasm");
    component("plugins/examples/js-case-search/case_search_js.wasm");
    vec![
        ("rust", case_search_manifest()),
        (
            "python",
            root().join("plugins/examples/python-case-search/plugin.toml"),
        ),
        (
            "js",
            root().join("plugins/examples/js-case-search/plugin.toml"),
        ),
    ]
}

fn load_all() -> Vec<(&'static str, Processor)> {
    manifests()
        .into_iter()
        .map(|(lang, m)| (lang, load(&m)))
        .collect()
}

#[test]
fn every_language_passes_the_rust_plugins_golden_fixtures() {
    let rust_fixtures = root().join("plugins/case-search/fixtures");
    for (lang, manifest) in manifests() {
        let m = Manifest::load(&manifest).unwrap();
        assert_eq!(
            std::fs::canonicalize(m.fixtures.as_ref().unwrap()).unwrap(),
            std::fs::canonicalize(&rust_fixtures).unwrap(),
            "{lang} must use the Rust plugin's fixtures"
        );
        let mut p = load(&manifest);
        let loaded = fixtures::load(&rust_fixtures).unwrap();
        assert_eq!(loaded.len(), 16);
        for (name, f) in &loaded {
            let r = fixtures::run(&mut p, name, f);
            assert_eq!(r.failure, None, "{lang} {name}");
            assert!(r.fuel_used > 0, "{lang} {name}: fuel is metered");
        }
    }
}

/// `domains = ["*"]` means every domain in every language (not a domain
/// named "*", which would silently index nothing).
#[test]
fn every_language_takes_a_list_holding_star_as_every_domain() {
    for (lang, path) in manifests() {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("\ndomains = "), "{lang}: no allow-list yet");
        let text = text.replace("[config]\n", "[config]\ndomains = [\"*\"]\n");
        let manifest = Manifest::parse(&text, &path).unwrap();
        let mut p = runtime().load(&manifest).unwrap().0;
        let change = pillowtop::change::decode(pillowtop::feed::Message {
            tp: pillowtop::feed::TopicPartition::new("case-sql", 0),
            offset: 1,
            key: None,
            value: br#"{"document_id": "c1", "document_type": "CommCareCase", "domain": "not-listed-anywhere", "document": {"_id": "c1", "case_json": {}}}"#.to_vec(),
            timestamp_ms: None,
        })
        .unwrap();
        let actions = p.process(&change).unwrap();
        assert_eq!(actions.len(), 1, "{lang}: {actions:?}");
    }
}

#[test]
fn every_language_declares_the_same_index_and_mappings() {
    let all = load_all();
    let (_, rust) = &all[0];
    for (lang, p) in &all[1..] {
        assert_eq!(p.plugin().info(), rust.plugin().info(), "{lang}");
    }
}

#[test]
fn every_language_gives_the_same_actions_on_generated_changes() {
    let mut all = load_all();
    let mut g = Generator::new(GenOptions {
        seed: 11,
        domains: 4,
        kind: Kind::Case,
    });
    let (mut indexed, mut deleted, mut skipped) = (0, 0, 0);
    for offset in 0..300u64 {
        let line = g.next_line();
        let message = Message {
            tp: TopicPartition::new("case-sql", 0),
            offset,
            key: None,
            value: line.into_bytes(),
            timestamp_ms: None,
        };
        let change = change::decode(message).unwrap();
        let mut results = all.iter_mut().map(|(lang, p)| {
            let out = p.process(&change).map(|actions| {
                actions
                    .iter()
                    .map(fixtures::action_json)
                    .collect::<Vec<_>>()
            });
            (*lang, out)
        });
        let (_, expected) = results.next().unwrap();
        let expected = expected.unwrap_or_else(|e| panic!("rust failed at {offset}: {e}"));
        for (lang, got) in results {
            let got = got.unwrap_or_else(|e| panic!("{lang} failed at {offset}: {e}"));
            assert_eq!(got, expected, "{lang} differs from rust at offset {offset}");
        }
        match expected
            .first()
            .and_then(|a| a.as_object())
            .and_then(|o| o.keys().next().cloned())
        {
            Some(k) if k == "index_document" => indexed += 1,
            Some(_) => deleted += 1,
            None => skipped += 1,
        }
    }
    // The sample covers each path (documents, deletions, disabled domains).
    assert!(
        indexed > 100 && deleted > 0 && skipped > 0,
        "{indexed} {deleted} {skipped}"
    );
}

/// Where `make` installed componentize-py and componentize-js.
fn tools() -> PathBuf {
    std::env::var_os("PILLOWTOP_TOOLS").map_or_else(
        || PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/pillowtop/tools"),
        PathBuf::from,
    )
}

/// `plugin new` in each language gives a plugin that builds with its own
/// Makefile and passes `plugin check`, as docs/writing-plugins.md says.
#[test]
fn plugin_new_scaffolds_a_working_plugin_in_every_language() {
    let dir = tempfile::tempdir().unwrap();
    let tools = tools();
    let py = tools.join("py/bin/componentize-py");
    let js = tools.join("js/node_modules/.bin/componentize-js");
    assert!(
        py.exists() && js.exists(),
        "componentize-py / componentize-js missing under {}: run `make plugins` (make test does)",
        tools.display()
    );
    let bin = env!("CARGO_BIN_EXE_pillowtop");
    for (lang, make_var) in [
        ("rust", String::new()),
        ("python", format!("COMPONENTIZE_PY={}", py.display())),
        ("js", format!("COMPONENTIZE_JS={}", js.display())),
    ] {
        let plugin = dir.path().join(format!("hello-{lang}"));
        let out = std::process::Command::new(bin)
            .args([
                "plugin",
                "new",
                &format!("hello-{lang}"),
                "--lang",
                lang,
                "--dir",
            ])
            .arg(&plugin)
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut make = std::process::Command::new("make");
        make.arg("-C").arg(&plugin);
        if !make_var.is_empty() {
            make.arg(&make_var);
        }
        // Share the workspace's target dir: the SDK and wit-bindgen are built already.
        make.env(
            "CARGO_TARGET_DIR",
            std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| root().join("target").into()),
        );
        let out = make.output().unwrap();
        assert!(
            out.status.success(),
            "{lang}: make failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let out = std::process::Command::new(bin)
            .args(["plugin", "check"])
            .arg(plugin.join("plugin.toml"))
            .arg("--compile-cache")
            .arg(cache_dir())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{lang}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("fixtures: 2 passed, 0 failed"),
            "{lang}: {stdout}"
        );
    }
}
