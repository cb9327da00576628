//! A plugin that misbehaves on request, for the host's sandbox tests.
//!
//! The change's document field `"hostile"` picks the behaviour; any other
//! document is processed normally (one document into index `hostile`, one
//! row into table `hostile_rows`), so tests can check that the partition
//! goes on after each kind of failure. Some modes read a size from the
//! document (`"kib"`, `"copies"`, `"from_call"`). Mode `"fail-first"` fails
//! while `change.attempts` is 0 and is processed normally on a retry.
//!
//! `init` misbehaves when the manifest's `[config]` has one of the keys
//! `fail_init`, `sleep_init`, `reserved_table`, `wide_table`.

#[cfg(target_arch = "wasm32")]
mod component {
    use pillowtop_sdk::host::{self, Level};
    use pillowtop_sdk::json;
    use pillowtop_sdk::types::{Value as Cell, *};
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Hostile;

    /// Calls of `process-change` on this instance.
    static CALLS: AtomicU32 = AtomicU32::new(0);

    fn column(name: String, kind: ColumnType, nullable: bool) -> Column {
        Column {
            name,
            kind,
            nullable,
        }
    }

    /// A JSON object document of about `kib` KiB.
    fn padded(kib: usize) -> String {
        let mut d = String::with_capacity(kib * 1024 + 16);
        d.push_str("{\"pad\":\"");
        d.push_str(&"x".repeat(kib * 1024));
        d.push_str("\"}");
        d
    }

    fn index(id: &str, document: String) -> Action {
        Action::IndexDocument(IndexDocument {
            index: "hostile".into(),
            id: id.into(),
            document,
        })
    }

    impl pillowtop_sdk::Guest for Hostile {
        fn init(config: String) -> Result<PluginInfo, String> {
            if config.contains("fail_init") {
                return Err("config asks init to fail (fail_init)".into());
            }
            if config.contains("sleep_init") {
                // An hour, were the clock real.
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
            let mut columns = vec![
                column("doc_id".into(), ColumnType::Text, false),
                column("n".into(), ColumnType::Integer, true),
            ];
            if config.contains("wide_table") {
                columns.extend(
                    (0..10_000).map(|i| column(format!("c{i}"), ColumnType::Integer, true)),
                );
            }
            let name = if config.contains("reserved_table") {
                "checkpoints"
            } else {
                "hostile_rows"
            };
            Ok(PluginInfo {
                tables: vec![TableSpec {
                    name: name.into(),
                    columns,
                    primary_key: vec!["doc_id".into()],
                    version_column: None,
                    definition: None,
                }],
                indices: vec![IndexSpec {
                    name: "hostile".into(),
                    mappings: "{}".into(),
                    aliases: vec![],
                }],
            })
        }

        fn process_change(change: Change) -> Result<Vec<Action>, ProcessError> {
            let call = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
            let doc = change.document.clone().unwrap_or_else(|| "{}".into());
            let parsed = json::Value::parse(&doc).ok();
            let field = |name: &str| parsed.as_ref().and_then(|v| v.get(name));
            let number = |name: &str, default: usize| {
                field(name)
                    .and_then(|v| v.as_f64())
                    .map_or(default, |n| n as usize)
            };
            let mode = field("hostile")
                .and_then(|v| v.as_str().map(|s| s.into_owned()))
                .unwrap_or_default();
            if mode == "fail-first" && change.attempts == 0 {
                // Passes once the retry queue tries it again (its
                // `attempts` counts the failures before).
                return Err(ProcessError::Retryable(
                    "fails on its first attempt, passes on a retry".into(),
                ));
            }
            match mode.as_str() {
                "sleep" => {
                    // An hour, were the clock real; then carry on normally.
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                    Ok(vec![index(&change.id, "{\"slept\":true}".into())])
                }
                "sleep-loop" => {
                    // Sleeps that return at once, with work between them so
                    // the loop spends its fuel in Wasm rather than in
                    // millions of host calls: it must end by fuel.
                    let mut x = 0u64;
                    loop {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        for i in 0..10_000u64 {
                            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                        }
                    }
                }
                "alias" => {
                    // `copies` index actions whose documents are all the same
                    // `kib` KiB string of this instance's memory: a small
                    // guest, a large output once the host copies each one.
                    let document = std::mem::ManuallyDrop::new(padded(number("kib", 1024)));
                    let (ptr, len) = (document.as_ptr() as *mut u8, document.len());
                    let actions = (0..number("copies", 100))
                        .map(|i| {
                            // SAFETY (as far as the guest goes): the strings
                            // alias one leaked buffer and are never dropped
                            // here; lowering only reads them. This is the
                            // point of the test: the host must not trust
                            // that outputs are disjoint.
                            let document = unsafe { String::from_raw_parts(ptr, len, len) };
                            index(&format!("{}-{i}", change.id), document)
                        })
                        .collect();
                    Ok(actions)
                }
                "big" => Ok(vec![index(&change.id, padded(number("kib", 1024)))]),
                "big-error" => Err(ProcessError::Retryable(
                    "e".repeat(number("kib", 1024) * 1024),
                )),
                "random" => {
                    use std::hash::BuildHasher;
                    let random = getrandom::u64().unwrap_or(0);
                    let hashed = std::collections::hash_map::RandomState::new().hash_one(42u64);
                    let t0 = std::time::Instant::now();
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    let elapsed = t0.elapsed().as_nanos();
                    let wall = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos())
                        .unwrap_or(1);
                    let out = format!(
                        "{{\"random\":\"{random}\",\"hash\":\"{hashed}\",\"monotonic_elapsed_ns\":{elapsed},\"wall_ns\":{wall}}}"
                    );
                    Ok(vec![index(&change.id, out)])
                }
                "drift" => {
                    // Deterministic for the first calls of an instance, then not.
                    let n = if call >= number("from_call", 3) as u32 {
                        call
                    } else {
                        0
                    };
                    Ok(vec![index(&change.id, format!("{{\"n\":{n}}}"))])
                }
                "lookups" => {
                    // `n` lookups of key "k" in the granted resource "slow".
                    let found = (0..number("n", 2))
                        .filter(|_| matches!(host::lookup("slow", "k"), Ok(Some(_))))
                        .count();
                    Ok(vec![index(&change.id, format!("{{\"found\":{found}}}"))])
                }
                "long-key" => Ok(vec![Action::UpsertRows(UpsertRows {
                    table: "hostile_rows".into(),
                    rows: vec![vec![Cell::Text("k".repeat(1000)), Cell::Integer(1)]],
                })]),
                "loop" => {
                    let mut n: u64 = 0;
                    loop {
                        n = std::hint::black_box(n.wrapping_add(1));
                    }
                }
                "bomb" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(vec![7u8; 1 << 20]);
                        std::hint::black_box(&hoard);
                    }
                }
                "panic" => panic!("hostile plugin panics on purpose for change {}", change.id),
                "stack" => {
                    #[allow(unconditional_recursion)]
                    fn recurse(n: u64) -> u64 {
                        std::hint::black_box(recurse(n + 1)) + 1
                    }
                    recurse(0);
                    unreachable!()
                }
                "undeclared-table" => Ok(vec![Action::UpsertRows(UpsertRows {
                    table: "secret_table".into(),
                    rows: vec![vec![Cell::Text(change.id.clone())]],
                })]),
                "undeclared-index" => Ok(vec![Action::IndexDocument(IndexDocument {
                    index: "someone-elses-index".into(),
                    id: change.id.clone(),
                    document: "{}".into(),
                })]),
                "bad-json" => Ok(vec![index(&change.id, "{\"unterminated\": ".into())]),
                "bad-row" => Ok(vec![Action::UpsertRows(UpsertRows {
                    table: "hostile_rows".into(),
                    rows: vec![vec![Cell::Integer(1)]],
                })]),
                "retryable" => Err(ProcessError::Retryable("lookup not ready yet".into())),
                "permanent" => Err(ProcessError::Permanent(
                    "document can never be processed".into(),
                )),
                "lookup-ungranted" => {
                    // Carries on with what it got: the host must fail
                    // the change anyway, and never hand it data.
                    let got = match host::lookup("not-granted", "x") {
                        Ok(Some(leaked)) => format!("leaked {leaked}"),
                        Ok(None) => "none".into(),
                        Err(host::LookupError::NotGranted(_)) => "not-granted".into(),
                        Err(host::LookupError::Unavailable(_)) => "unavailable".into(),
                    };
                    Ok(vec![index(&change.id, format!("{{\"got\":{got:?}}}"))])
                }
                "log-flood" => {
                    for i in 0..10_000 {
                        println!("flood line {i}");
                        host::log(Level::Info, &format!("flood log {i}"));
                    }
                    Ok(vec![index(&change.id, "{}".into())])
                }
                "sandbox" => {
                    // Report what the sandbox lets this plugin see, and how
                    // it refuses what it does not.
                    let env = std::env::vars().count();
                    let probe = std::env::var("PILLOWTOP_SANDBOX_PROBE").ok();
                    let args = std::env::args().count();
                    let fs = std::fs::read_dir("/").is_ok() || std::fs::read("/etc/passwd").is_ok();
                    let (net, net_error) = match std::net::TcpStream::connect("127.0.0.1:5432") {
                        Ok(_) => (true, String::new()),
                        Err(e) => (false, format!("{:?}", e.kind())),
                    };
                    let clock = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    let mut out = String::from("{\"env\":");
                    out.push_str(&env.to_string());
                    out.push_str(",\"probe\":");
                    match probe {
                        Some(p) => json::write_str(&mut out, &p),
                        None => out.push_str("null"),
                    }
                    out.push_str(",\"args\":");
                    out.push_str(&args.to_string());
                    out.push_str(",\"fs\":");
                    out.push_str(if fs { "true" } else { "false" });
                    out.push_str(",\"net\":");
                    out.push_str(if net { "true" } else { "false" });
                    out.push_str(",\"net_error\":");
                    json::write_str(&mut out, &net_error);
                    out.push_str(",\"clock_secs\":");
                    out.push_str(&clock.to_string());
                    out.push('}');
                    Ok(vec![index(&change.id, out)])
                }
                _ => {
                    let mut out = String::from("{\"id\":");
                    json::write_str(&mut out, &change.id);
                    out.push('}');
                    Ok(vec![
                        index(&change.id, out),
                        Action::UpsertRows(UpsertRows {
                            table: "hostile_rows".into(),
                            rows: vec![vec![
                                Cell::Text(change.id.clone()),
                                Cell::Integer(change.offset as i64),
                            ]],
                        }),
                    ])
                }
            }
        }
    }

    pillowtop_sdk::export!(Hostile);
}
