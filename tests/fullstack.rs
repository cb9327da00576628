//! The full stack as `make run-full` runs it: `config/full-stack.toml`
//! (CommCare's case pillow and form pillow, all four processors, two
//! processes each) over Kafka, PostgreSQL and Elasticsearch, on a sample
//! from `pillowtop gen --kind related`, with the primary database loaded
//! from its `primary.sql`. Every expectation is worked out here from the
//! generated changes, not read back from the host. The test has a broker
//! of its own, so the shipped topic names (which the plugins' manifests
//! subscribe to) are its alone.

use crate::support::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// The shipped full-stack config with this test's broker, store schema,
/// index prefix and primary schema; paths made absolute.
fn full_stack_config(
    dir: &Path,
    brokers: &str,
    schema: &str,
    prefix: &str,
    primary: &str,
) -> std::path::PathBuf {
    let shipped = root().join("config/full-stack.toml");
    let mut c: toml::Table = toml::from_str(&std::fs::read_to_string(&shipped).unwrap()).unwrap();
    let s = |v: &str| toml::Value::String(v.to_owned());
    c["feed"]["brokers"] = s(brokers);
    c["store"]["url"] = s(&pg_url());
    c["store"]["schema"] = s(schema);
    c["elasticsearch"]["url"] = s(&es_url());
    c["elasticsearch"]["index_prefix"] = s(prefix);
    c["runtime"]["compile_cache_dir"] = s(cache_dir().to_str().unwrap());
    c["admin"]["listen_address"] = s("127.0.0.1:0");
    let lookups = c["lookups"].as_table_mut().unwrap();
    for (_, l) in lookups.iter_mut() {
        let source = l["source"].as_table_mut().unwrap();
        if let Some(q) = source.get("query").and_then(|q| q.as_str()) {
            let q = q.replace("commcarehq.", &format!("\"{primary}\"."));
            source.insert("query".into(), s(&q));
            source.insert("url".into(), s(&pg_url()));
        }
        if source["type"].as_str() == Some("elasticsearch") {
            source.insert("url".into(), s(&es_url()));
            source.insert("index".into(), s(&format!("{prefix}users")));
        }
    }
    let pillows = c["pillows"].as_array_mut().unwrap();
    for pillow in pillows.iter_mut() {
        let processors = pillow["processors"].as_array_mut().unwrap();
        for p in processors.iter_mut() {
            let path = root().join("config").join(p.as_str().unwrap());
            *p = s(path.to_str().unwrap());
        }
    }
    let path = dir.join("full-stack.toml");
    std::fs::write(&path, toml::to_string(&c).unwrap()).unwrap();
    path
}

/// `out`, once its command succeeded; otherwise a failure with its stderr.
fn succeeded(what: &str, out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// CommCare's leniency and format check, as messaging-sync applies them.
fn valid_phone(raw: &Value) -> Option<String> {
    let text: String = raw
        .as_str()?
        .chars()
        .filter(|c| !matches!(c, '(' | ')' | '-' | '.') && !c.is_whitespace())
        .collect();
    let digits = text.strip_prefix('+').unwrap_or(&text).to_owned();
    (!digits.is_empty() && digits != "0" && digits.bytes().all(|b| b.is_ascii_digit()))
        .then_some(digits)
}

async fn table_rows(pool: &sqlx::PgPool, schema: &str, like: &str) -> Vec<Value> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 AND table_name LIKE $2",
    )
    .bind(schema)
    .bind(like)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(tables.len(), 1, "one table like {like}: {tables:?}");
    let sql = format!(
        r#"SELECT row_to_json(t)::text FROM "{schema}"."{}" t"#,
        tables[0]
    );
    let texts: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await
        .unwrap();
    texts
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect()
}

/// Rows by `key`, each once.
fn by(rows: Vec<Value>, key: &str) -> BTreeMap<String, Value> {
    let n = rows.len();
    let map: BTreeMap<String, Value> = rows
        .into_iter()
        .map(|r| (r[key].as_str().unwrap().to_owned(), r))
        .collect();
    assert_eq!(map.len(), n, "one row per {key}");
    map
}

#[tokio::test(flavor = "multi_thread")]
async fn the_case_and_form_pillows_fill_every_sink_of_the_full_stack() {
    let dir = tempfile::tempdir().unwrap();
    let schema = pg_schema("full_stack");
    let primary = pg_schema("full_stack_primary");
    let prefix = es_prefix("full-stack");
    let broker = Broker::start();
    let config = full_stack_config(dir.path(), &broker.addr, &schema, &prefix, &primary);
    let sample = dir.path().join("sample");
    let run = |args: &[&str]| succeeded(&format!("{args:?}"), bin().args(args).output().unwrap());
    run(&[
        "gen",
        "--kind",
        "related",
        "--count",
        "1200",
        "--seed",
        "11",
        "--out",
        sample.to_str().unwrap(),
        "--primary-schema",
        &primary,
    ]);
    let pool = sqlx::PgPool::connect(&pg_url()).await.unwrap();
    let sql = std::fs::read_to_string(sample.join("primary.sql")).unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&pool)
        .await
        .unwrap();
    for topic in ["case-sql", "form-sql"] {
        let file = std::fs::File::open(sample.join(format!("{topic}.jsonl"))).unwrap();
        let mut publish = bin();
        publish
            .args([
                "--config",
                config.to_str().unwrap(),
                "publish",
                "--topic",
                topic,
            ])
            .stdin(file);
        succeeded(topic, publish.output().unwrap());
    }

    // Two processes, each with its half of both pillows' partitions.
    let processes: Vec<_> = (0..2)
        .map(|n| {
            bin()
                .args([
                    "--config",
                    config.to_str().unwrap(),
                    "run",
                    "--until-caught-up",
                    "--process-num",
                    &n.to_string(),
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (n, p) in processes.into_iter().enumerate() {
        succeeded(&format!("process {n}"), p.wait_with_output().unwrap());
    }

    // What the sample says should be where.
    let cases = lines(&sample.join("case-sql.jsonl"));
    let forms = lines(&sample.join("form-sql.jsonl"));
    let mut last: BTreeMap<String, &Value> = BTreeMap::new();
    for c in &cases {
        last.insert(c["document_id"].as_str().unwrap().to_owned(), c);
    }
    let live: BTreeMap<&str, &Value> = last
        .iter()
        .filter(|(_, c)| c["is_deletion"] == false)
        .map(|(id, c)| (id.as_str(), &c["document"]))
        .collect();
    assert!(
        live.len() > 300 && live.len() < last.len(),
        "{} of {}",
        live.len(),
        last.len()
    );

    // The case-search index: every live case of an indexed domain.
    let es = es_sink(&prefix);
    es.refresh(CASE_SEARCH_INDEX).await.unwrap();
    let indexed: Vec<&&Value> = live
        .values()
        .filter(|d| case_search_indexes(d["domain"].as_str().unwrap()))
        .collect();
    assert_eq!(
        es.count(CASE_SEARCH_INDEX).await.unwrap(),
        indexed.len() as u64
    );
    let sample_case = indexed
        .iter()
        .find(|d| d["xform_ids"].as_array().unwrap().len() > 1)
        .expect("a case updated by a visit");
    let stored = es
        .document(CASE_SEARCH_INDEX, sample_case["_id"].as_str().unwrap())
        .await
        .unwrap()
        .expect("the sample case is indexed")
        .source;
    for field in ["owner_id", "name", "modified_on", "user_id", "closed"] {
        assert_eq!(stored[field], sample_case[field], "{field}");
    }
    let properties: HashMap<&str, &Value> = stored["case_properties"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["key"].as_str().unwrap(), &p["value"]))
        .collect();
    for (key, value) in sample_case["case_json"].as_object().unwrap() {
        assert_eq!(
            properties.get(key.as_str()),
            Some(&value),
            "case property {key}"
        );
    }

    // UCR, case pillow: demo-0's patients, closed ones included.
    let patients = by(
        table_rows(&pool, &schema, "ucr_demo-0_patients_%").await,
        "doc_id",
    );
    let expected: Vec<&&Value> = live
        .values()
        .filter(|d| d["domain"] == "demo-0" && d["type"] == "patient")
        .collect();
    assert_eq!(patients.len(), expected.len());
    assert!(expected.len() > 20, "{}", expected.len());
    for d in &expected {
        let row = &patients[d["_id"].as_str().unwrap()];
        assert_eq!(row["owner_id"], d["owner_id"]);
        assert_eq!(row["name"], d["name"]);
        assert_eq!(
            row["forms"],
            json!(d["xform_ids"].as_array().unwrap().len())
        );
        // A boolean indicator is a 0/1 integer column, as in CommCare.
        assert_eq!(row["closed"], json!(i32::from(d["closed"] == true)));
        assert_eq!(row["phone"], d["case_json"]["contact_phone_number"]);
    }

    // UCR, form pillow: demo-0's visits, the visited case's owner read from
    // the primary database (none once the case is deleted), and one row
    // per medication given (a single item is an object, not a list).
    let visits = by(
        table_rows(&pool, &schema, "ucr_demo-0_visits_%").await,
        "doc_id",
    );
    let medications = table_rows(&pool, &schema, "ucr_demo-0_visit_medications_%").await;
    let demo0_visits: Vec<&Value> = forms
        .iter()
        .map(|f| &f["document"])
        .filter(|f| {
            f["domain"] == "demo-0" && f["xmlns"] == "http://openrosa.org/formdesigner/visit"
        })
        .collect();
    assert_eq!(visits.len(), demo0_visits.len());
    let mut expected_medications = BTreeSet::new();
    let (mut owners_seen, mut deleted_seen) = (0, 0);
    for f in &demo0_visits {
        let row = &visits[f["_id"].as_str().unwrap()];
        let case_id = f["form"]["case"]["@case_id"].as_str().unwrap();
        assert_eq!(row["user_id"], f["form"]["meta"]["userID"]);
        assert_eq!(row["case_id"], case_id);
        match live.get(case_id) {
            Some(case) => {
                assert_eq!(row["case_owner"], case["owner_id"]);
                owners_seen += 1;
            }
            None => {
                assert_eq!(row["case_owner"], Value::Null);
                deleted_seen += 1;
            }
        }
        let temps = f["form"]["temperatures"].as_array().unwrap();
        assert_eq!(row["readings"], json!(temps.len()));
        let max = temps
            .iter()
            .map(|t| t.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert_eq!(row["max_temp"].as_f64(), Some(max), "{row}");
        assert_eq!(
            row["closes_case"],
            json!(i32::from(f["form"]["case"].get("close").is_some()))
        );
        let items = match &f["form"]["medications"]["item"] {
            Value::Array(items) => items.clone(),
            Value::Object(_) => vec![f["form"]["medications"]["item"].clone()],
            _ => vec![],
        };
        for (i, item) in items.iter().enumerate() {
            expected_medications.insert((
                f["_id"].as_str().unwrap().to_owned(),
                i as i64,
                item["name"].as_str().unwrap().to_owned(),
                item["dose"].as_str().unwrap().parse::<i64>().unwrap(),
            ));
        }
    }
    assert!(owners_seen > 10, "{owners_seen} visits with an owner");
    let got_medications: BTreeSet<_> = medications
        .iter()
        .map(|r| {
            (
                r["doc_id"].as_str().unwrap().to_owned(),
                r["repeat_iteration"].as_i64().unwrap(),
                r["medication"].as_str().unwrap().to_owned(),
                r["dose"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got_medications.len(), medications.len());
    assert_eq!(got_medications, expected_medications);
    eprintln!("visits: {owners_seen} with a case owner, {deleted_seen} of deleted cases");

    // Messaging: a row per open case with a valid number; verified ones
    // two-way (the sample's numbers are unique).
    let contacts = by(
        table_rows(&pool, &schema, "messaging_phone_numbers").await,
        "doc_id",
    );
    let with_numbers: Vec<(&str, String, &Value)> = live
        .iter()
        .filter(|(_, d)| d["closed"] == false)
        .filter_map(|(id, d)| {
            let number = valid_phone(&d["case_json"]["contact_phone_number"])?;
            Some((*id, number, *d))
        })
        .collect();
    assert_eq!(contacts.len(), with_numbers.len());
    assert!(with_numbers.len() > 100, "{}", with_numbers.len());
    let invalid = live
        .values()
        .filter(|d| d["case_json"]["contact_phone_number"].is_string())
        .filter(|d| valid_phone(&d["case_json"]["contact_phone_number"]).is_none())
        .count();
    assert!(invalid > 10, "the sample has invalid numbers: {invalid}");
    for (id, number, d) in &with_numbers {
        let row = &contacts[*id];
        assert_eq!(row["phone_number"], number.as_str());
        assert_eq!(row["domain"], d["domain"]);
        if d["case_json"]["contact_phone_number_is_verified"] == "1" {
            assert_eq!(row["is_two_way"], true, "{row}");
        }
    }

    // The users index: every user id HQ does not know, once, found in one
    // of that user's forms.
    let known: BTreeSet<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        r#"SELECT id FROM "{primary}".users"#
    )))
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let mut unknown: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for f in &forms {
        let user = f["document"]["form"]["meta"]["userID"].as_str().unwrap();
        if !known.contains(user) {
            unknown
                .entry(user)
                .or_default()
                .insert(f["document_id"].as_str().unwrap());
        }
    }
    assert!(unknown.len() >= 3, "{unknown:?}");
    es.refresh("users").await.unwrap();
    assert_eq!(es.count("users").await.unwrap(), unknown.len() as u64);
    for (user, their_forms) in &unknown {
        let doc = es
            .document("users", user)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("unknown user {user} is not in the users index"))
            .source;
        assert_eq!(doc["doc_type"], "UnknownUser");
        let found_in = doc["first_form_found_in"].as_str().unwrap();
        assert!(their_forms.contains(found_in), "{doc}");
    }

    // Nothing failed, and both pillows are caught up.
    let status = run(&["--config", config.to_str().unwrap(), "status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    for p in status["pillows"].as_array().unwrap() {
        assert_eq!(p["need_processing"], 0, "{p}");
        let parts = p["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 4);
        assert!(
            parts.iter().all(|x| x["checkpoint"] == x["end_offset"]),
            "{p}"
        );
        assert_eq!(
            parts
                .iter()
                .map(|x| x["process"].as_u64().unwrap())
                .collect::<BTreeSet<_>>(),
            [0, 1].into(),
            "two processes share the partitions: {p}"
        );
    }
    let errors: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        r#"SELECT count(*) FROM "{schema}".pillow_errors"#
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(errors, 0, "no pillow errors");
}
