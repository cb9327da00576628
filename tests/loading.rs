//! Loading plugins: the compile cache, golden fixtures, and precise errors
//! for missing, broken and over-reaching plugins.

use crate::support::*;
use pillowtop::fixtures;
use pillowtop::manifest::Manifest;
use pillowtop::wasm::cache::CacheOutcome;
use pillowtop::wasm::{LoadError, Runtime, RuntimeOptions};

fn runtime_with_cache(dir: &std::path::Path) -> Runtime {
    Runtime::new(RuntimeOptions {
        compile_cache_dir: Some(dir.to_owned()),
        ..RuntimeOptions::default()
    })
    .unwrap()
}

#[test]
fn the_second_start_loads_from_the_compile_cache() {
    let cache = tempfile::tempdir().unwrap();
    let manifest = Manifest::load(&case_search_manifest()).unwrap();
    let (_, cold) = runtime_with_cache(cache.path()).load(&manifest).unwrap();
    assert_eq!(cold.cache, CacheOutcome::Miss);
    let entries: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "one compiled entry written");
    // A new runtime (as after a restart) finds it.
    let (_, warm) = runtime_with_cache(cache.path()).load(&manifest).unwrap();
    assert_eq!(warm.cache, CacheOutcome::Hit);
}

#[test]
fn a_corrupt_cache_entry_is_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    let manifest = Manifest::load(&case_search_manifest()).unwrap();
    runtime_with_cache(cache.path()).load(&manifest).unwrap();
    let entry = std::fs::read_dir(cache.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&entry, b"not machine code").unwrap();
    let (mut processor, t) = runtime_with_cache(cache.path()).load(&manifest).unwrap();
    assert_eq!(t.cache, CacheOutcome::Miss);
    // And it works.
    let fx = fixtures::load(manifest.fixtures.as_ref().unwrap()).unwrap();
    let (name, f) = &fx[0];
    assert_eq!(fixtures::run(&mut processor, name, f).failure, None);
}

/// Every plugin the product ships passes its golden fixtures (with the
/// lookups and processing time each fixture gives).
#[test]
fn shipped_plugins_pass_their_golden_fixtures() {
    for (plugin, at_least) in [
        ("case-search", 16),
        ("unknown-users", 17),
        ("messaging-sync", 22),
        ("ucr", 13),
    ] {
        let path = root().join("plugins").join(plugin).join("plugin.toml");
        let manifest = Manifest::load(&path).unwrap();
        let mut processor = load(&path);
        let fx = fixtures::load(manifest.fixtures.as_ref().unwrap()).unwrap();
        assert!(
            fx.len() >= at_least,
            "{plugin}: fixtures found: {}",
            fx.len()
        );
        for (name, f) in &fx {
            let r = fixtures::run(&mut processor, name, f);
            assert_eq!(r.failure, None, "{plugin}: {name}");
        }
    }
}

#[test]
fn a_wrong_fixture_fails_and_says_where() {
    let mut processor = load(&case_search_manifest());
    let text =
        std::fs::read_to_string(root().join("plugins/case-search/fixtures/02-closed-case.json"))
            .unwrap();
    let wrong = text.replace(
        r#"{"key": "@status", "value": "closed"}"#,
        r#"{"key": "@status", "value": "open"}"#,
    );
    assert_ne!(
        text, wrong,
        "the fixture text changed shape; update this test"
    );
    let fixture: fixtures::Fixture = serde_json::from_str(&wrong).unwrap();
    let failure = fixtures::run(&mut processor, "wrong", &fixture)
        .failure
        .expect("a wrong expectation must fail");
    assert!(
        failure.contains("at .index_document.document.case_properties[3].value"),
        "{failure}"
    );
}

fn load_err(manifest_text: &str) -> LoadError {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plugin.toml");
    std::fs::write(&path, manifest_text).unwrap();
    let m = Manifest::load(&path).unwrap();
    match runtime().load(&m) {
        Ok(_) => panic!("expected a load error for {manifest_text}"),
        Err(e) => e,
    }
}

#[test]
fn load_errors_are_precise() {
    let hostile = component("plugins/testing/hostile/hostile.wasm");
    let grants = "[capabilities]\nindices = [\"hostile\"]\ntables = [\"hostile_rows\"]";

    let e = load_err("name = \"x\"\nversion = \"1\"\ncomponent = \"/nonexistent/x.wasm\"");
    assert!(matches!(e, LoadError::Read { .. }), "{e}");
    assert!(e.to_string().contains("make plugins"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm garbage").unwrap();
    let e = load_err(&format!(
        "name = \"x\"\nversion = \"1\"\ncomponent = {garbage:?}"
    ));
    assert!(matches!(e, LoadError::Compile { .. }), "{e}");

    let e = load_err(&format!(
        "name = \"x\"\nversion = \"1\"\ncomponent = {hostile:?}\n{grants}\n[config]\nfail_init = true"
    ));
    assert!(matches!(e, LoadError::Init { .. }), "{e}");
    assert!(e.to_string().contains("config asks init to fail"), "{e}");

    // The plugin declares a table the manifest does not grant.
    let e = load_err(&format!(
        "name = \"x\"\nversion = \"1\"\ncomponent = {hostile:?}\n[capabilities]\nindices = [\"hostile\"]"
    ));
    assert!(e.to_string().contains("table \"hostile_rows\", which the manifest does not grant; add it to capabilities.tables (or a prefix grant such as \"hostile_*\")"), "{e}");

    // A core module (not a component) is refused at compile.
    let module = dir.path().join("module.wasm");
    std::fs::write(&module, [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]).unwrap();
    let e = load_err(&format!(
        "name = \"x\"\nversion = \"1\"\ncomponent = {module:?}"
    ));
    assert!(matches!(e, LoadError::Compile { .. }), "{e}");
}
