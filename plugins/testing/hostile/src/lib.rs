//! A plugin that misbehaves on request, for the host's sandbox tests.
//!
//! The change's document field `"hostile"` picks the behaviour; any other
//! document is processed normally (one document into index `hostile`, one
//! row into table `hostile_rows`), so tests can check that the partition
//! goes on after each kind of failure.

#[cfg(target_arch = "wasm32")]
mod component {
    use pillowtop_sdk::host::{self, Level};
    use pillowtop_sdk::json;
    use pillowtop_sdk::types::{Value as Cell, *};

    struct Hostile;

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
            Ok(PluginInfo {
                tables: vec![TableSpec {
                    name: "hostile_rows".into(),
                    columns: vec![
                        Column {
                            name: "doc_id".into(),
                            kind: ColumnType::Text,
                            nullable: false,
                        },
                        Column {
                            name: "n".into(),
                            kind: ColumnType::Integer,
                            nullable: true,
                        },
                    ],
                    primary_key: vec!["doc_id".into()],
                }],
                indices: vec![IndexSpec {
                    name: "hostile".into(),
                    mappings: "{}".into(),
                }],
            })
        }

        fn process_change(change: Change) -> Result<Vec<Action>, ProcessError> {
            let doc = change.document.clone().unwrap_or_else(|| "{}".into());
            let mode = json::Value::parse(&doc)
                .ok()
                .and_then(|v| v.get("hostile"))
                .and_then(|v| v.as_str().map(|s| s.into_owned()))
                .unwrap_or_default();
            match mode.as_str() {
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
                    let _ = host::lookup("not-granted", "x");
                    Ok(vec![])
                }
                "log-flood" => {
                    for i in 0..10_000 {
                        println!("flood line {i}");
                        host::log(Level::Info, &format!("flood log {i}"));
                    }
                    Ok(vec![index(&change.id, "{}".into())])
                }
                "sandbox" => {
                    // Report what the sandbox lets this plugin see.
                    let env = std::env::vars().count();
                    let args = std::env::args().count();
                    let fs = std::fs::read_dir("/").is_ok() || std::fs::read("/etc/passwd").is_ok();
                    let net = std::net::TcpStream::connect("127.0.0.1:5432").is_ok();
                    let clock = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    let mut out = String::from("{\"env\":");
                    out.push_str(&env.to_string());
                    out.push_str(",\"args\":");
                    out.push_str(&args.to_string());
                    out.push_str(",\"fs\":");
                    out.push_str(if fs { "true" } else { "false" });
                    out.push_str(",\"net\":");
                    out.push_str(if net { "true" } else { "false" });
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
