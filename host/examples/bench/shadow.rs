//! Section 12: the embedded pipeline with a candidate beside the live
//! case-search plugin (the same component under another version: every
//! change runs twice, the candidate's actions compared and dropped),
//! against the same run without, one after the other.

use crate::{embedded_case_search, pillowtop_cmd, publish_generated, run_child};

pub fn shadow_bench(n: usize) {
    println!(
        "\n## 12. Shadow: the embedded pipeline with a candidate beside the live plugin ({n} changes, chunk 2000)\n"
    );
    println!(
        "`pillowtop run --until-caught-up`, with and without `--shadow` (case-search under another version: the transform runs twice per change and the results are compared).\n"
    );
    println!(
        "| transform_threads | shadow | changes/s (wall) | vs without | pillow CPU µs/change | changes compared | differ |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for threads in [1usize, 2] {
        let mut without = 0.0;
        for shadow in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let config = embedded_case_search(dir.path(), 2000, threads);
            let live = std::fs::read_to_string(dir.path().join("plugin/plugin.toml")).unwrap();
            let candidate = dir.path().join("candidate");
            std::fs::create_dir_all(&candidate).unwrap();
            std::fs::write(
                candidate.join("plugin.toml"),
                live.replacen("version = \"0.1.0\"", "version = \"0.1.0-candidate\"", 1),
            )
            .unwrap();
            let config = config.to_str().unwrap();
            publish_generated(config, n);
            let candidate = candidate.join("plugin.toml");
            let mut args = vec![
                "--config",
                config,
                "--log",
                "warn",
                "run",
                "--until-caught-up",
            ];
            if shadow {
                args.extend(["--shadow", candidate.to_str().unwrap()]);
            }
            let (wall, cpu, _, _) = run_child(&args, None);
            let rate = n as f64 / wall;
            let (compared, differ) = if shadow { compared(config) } else { (0, 0) };
            if shadow {
                assert!(compared > 0, "the candidate compared nothing");
            } else {
                without = rate;
            }
            println!(
                "| {threads} | {} | {rate:.0} | {:.2}x | {:.1} | {compared} | {differ} |",
                if shadow { "yes" } else { "no" },
                rate / without,
                cpu * 1e6 / n as f64
            );
        }
    }
}

/// Changes the candidate was compared on, and how many differed
/// (`pillowtop plugin diff --json`).
fn compared(config: &str) -> (u64, u64) {
    let out = pillowtop_cmd()
        .args([
            "--config",
            config,
            "plugin",
            "diff",
            "case-search",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = report["runs"].as_array().unwrap();
    let sum = |key: &str| -> u64 {
        runs.iter()
            .map(|r| r["tally"][key].as_u64().unwrap_or(0))
            .sum()
    };
    let failed: u64 = runs
        .iter()
        .flat_map(|r| {
            r["tally"]["failed"]
                .as_object()
                .cloned()
                .unwrap_or_default()
        })
        .map(|(_, n)| n.as_u64().unwrap_or(0))
        .sum();
    (sum("agree") + sum("differ") + failed, sum("differ"))
}
