//! `pillowtop gen`: synthetic changes for trying and benchmarking.

use anyhow::{Context, Result};
use pillowtop::generate::{self, related};
use std::io::Write;
use std::path::Path;

fn bar(count: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(count);
    bar.set_style(
        indicatif::ProgressStyle::with_template("gen [{bar:40}] {pos}/{len} ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// `count` case or form changes as JSON lines on stdout.
pub fn changes(kind: generate::Kind, count: u64, seed: u64, domains: u32) -> Result<()> {
    let mut g = generate::Generator::new(generate::GenOptions {
        seed,
        domains,
        kind,
    });
    let bar = bar(count);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for i in 0..count {
        out.write_all(g.next_line().as_bytes())?;
        out.write_all(b"\n")?;
        if i % 1000 == 999 {
            bar.inc(1000);
        }
    }
    out.flush()?;
    bar.finish_and_clear();
    Ok(())
}

/// `count` submissions and their cases into `dir`: `form-sql.jsonl`,
/// `case-sql.jsonl` (one change per line, for `pillowtop publish`) and
/// `primary.sql` (for `psql -f`).
pub fn related(dir: &Path, count: u64, seed: u64, domains: u32, schema: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let create = |name: &str| -> Result<std::io::BufWriter<std::fs::File>> {
        let path = dir.join(name);
        let file = std::fs::File::create(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(std::io::BufWriter::new(file))
    };
    let (mut forms, mut cases) = (create("form-sql.jsonl")?, create("case-sql.jsonl")?);
    let mut g = related::Related::new(related::RelatedOptions { seed, domains });
    let bar = bar(count);
    let (mut form_count, mut case_count) = (0u64, 0u64);
    for i in 0..count {
        let step = g.next_step();
        if let Some(form) = step.form {
            forms.write_all(form.as_bytes())?;
            forms.write_all(b"\n")?;
            form_count += 1;
        }
        cases.write_all(step.case.as_bytes())?;
        cases.write_all(b"\n")?;
        case_count += 1;
        if i % 1000 == 999 {
            bar.inc(1000);
        }
    }
    forms.flush()?;
    cases.flush()?;
    bar.finish_and_clear();
    let primary = dir.join("primary.sql");
    std::fs::write(&primary, g.primary_sql(schema))
        .with_context(|| format!("cannot write {}", primary.display()))?;
    println!(
        "{form_count} form changes -> {0}/form-sql.jsonl\n{case_count} case changes -> {0}/case-sql.jsonl\nprimary database (schema {schema}) -> {0}/primary.sql",
        dir.display()
    );
    Ok(())
}
