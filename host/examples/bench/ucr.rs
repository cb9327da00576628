//! Section 11: the UCR plugin, one core: a data source of 20 indicators
//! (property, conditional, date and reduce expressions; shipped as
//! plugins/ucr/bench/cases.json) over generated 1.5 KB cases, the native
//! build of the evaluator beside the Wasm component with fuel.

use crate::{best_rate, root};
use pillowtop::action::Action;
use pillowtop::change::Change;
use pillowtop::manifest::Manifest;
use pillowtop::wasm::{Runtime, RuntimeOptions};
use ucr::processor::{ChangeView, Processor, TableAction};

pub fn ucr_bench(changes: &[Change]) {
    println!("\n## 11. UCR: 20 indicators over 1.5 KB cases (one core)\n");
    let file = "bench/cases.json";
    let spec = std::fs::read_to_string(root().join("plugins/ucr").join(file)).unwrap();
    let config = format!(r#"{{"data_sources":[{{"file":"{file}","spec":{spec}}}]}}"#);
    // The data source's domain only: a document of another domain costs
    // a lookup of its domain and nothing else.
    let docs: Vec<&Change> = changes
        .iter()
        .filter(|c| c.domain.as_deref() == Some("demo-0"))
        .take(20_000)
        .collect();
    let bytes: usize = docs.iter().map(|c| c.document().unwrap().len()).sum();

    let native = Processor::from_config(&config).expect("the bench data source parses");
    let mut rows = 0usize;
    let native_rate = best_rate(3, docs.len(), || {
        rows = 0;
        for c in &docs {
            let view = ChangeView {
                id: &c.id,
                domain: c.domain.as_deref(),
                doc_type: c.document_type.as_deref(),
                is_deletion: c.is_deletion,
                document: c.document(),
                processing_time_ms: c.processing_time_ms,
            };
            let actions = native.process(&view, &|_, _| Ok(None)).unwrap();
            rows += actions
                .iter()
                .map(|a| match a {
                    TableAction::UpsertRows { rows, .. } => rows.len(),
                    TableAction::DeleteRows { .. } => 0,
                })
                .sum::<usize>();
            std::hint::black_box(actions);
        }
    });

    let mut m =
        Manifest::load(&root().join("plugins/ucr/plugin.toml")).expect("run `make plugins` first");
    m.config_json = config;
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(RuntimeOptions {
        compile_cache_dir: Some(cache.path().to_owned()),
        perf_map: std::env::var_os("BENCH_PERFMAP").is_some(),
        ..RuntimeOptions::default()
    })
    .unwrap();
    let (mut p, _) = runtime.load(&m).unwrap();
    let mut fuel = 0u64;
    let mut wasm_rows = 0usize;
    let wasm_rate = best_rate(3, docs.len(), || {
        fuel = 0;
        wasm_rows = 0;
        for c in &docs {
            let actions = p.process(c).unwrap();
            fuel += p.last_fuel_used();
            wasm_rows += actions
                .iter()
                .map(|a| match a {
                    Action::UpsertRows { rows, .. } => rows.len(),
                    _ => 0,
                })
                .sum::<usize>();
            std::hint::black_box(actions);
        }
    });
    assert_eq!(
        rows, wasm_rows,
        "native and Wasm wrote different row counts"
    );
    println!("| build | documents/s | vs native | fuel per document | rows |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| native (the plugin crate as a Rust library) | {native_rate:.0} | 1.000x | - | {rows} |"
    );
    println!(
        "| Wasm component, fuel metered (`limits.fuel` {}) | {wasm_rate:.0} | {:.3}x | {} | {wasm_rows} |",
        m.limits.fuel,
        wasm_rate / native_rate,
        fuel / docs.len() as u64,
    );
    println!(
        "\n{} documents of domain demo-0 (of `pillowtop gen --seed 42 --domains 3`), {:.0} bytes on average; every one passes the filter and makes one row of 22 columns.",
        docs.len(),
        bytes as f64 / docs.len() as f64
    );
}
