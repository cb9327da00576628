//! The UCR plugin end to end: CommCare's data sources (a case source, a
//! form source and a repeat-group source with `base_item_expression`,
//! the files shipped in plugins/ucr/data_sources) over Kafka into
//! PostgreSQL, `related_doc` served by a PostgreSQL lookup; and
//! `pillowtop ucr eval` on the same files.

use crate::kafka::publish_lines;
use crate::support::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// CommCare's table names for the shipped data sources (domain `demo`),
/// computed with its `get_table_name` in Python.
const PATIENTS: &str = "ucr_demo_patients_1e3f2f33";
const VISITS: &str = "ucr_demo_visits_05a85b42";
const MEDICATIONS: &str = "ucr_demo_visit_medications_fdff94d6";

/// The UCR manifest reading the data sources in `sources`, subscribed to
/// `topics`.
fn ucr_manifest(dir: &Path, sources: &Path, topics: &[&str]) -> PathBuf {
    let wasm = component("plugins/ucr/ucr.wasm");
    let path = dir.join("ucr.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"ucr\"\nversion = \"test\"\ncomponent = {wasm:?}\n\
             [limits]\nfuel = 50_000_000\nmemory_mb = 64\ntimeout_ms = 5000\n\
             [subscription]\ntopics = {topics:?}\n\
             [capabilities]\ntables = [\"ucr_*\"]\nlookups = [\"cases\"]\n\
             [config_files]\ndata_sources = [{sources:?}]\n\
             [config]\ntable_prefix = \"ucr_\"\n[config.related_docs]\nCommCareCase = \"cases\"\n"
        ),
    )
    .unwrap();
    path
}

fn case(id: &str, fields: Value) -> Value {
    let mut doc = json!({"_id": id, "domain": "demo", "doc_type": "CommCareCase", "type": "patient", "closed": false});
    doc.as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    doc
}

fn form(id: &str, xmlns: &str, form: Value) -> Value {
    json!({"_id": id, "domain": "demo", "doc_type": "XFormInstance", "xmlns": xmlns,
           "received_on": "2026-01-10T09:30:00.000000Z", "form": form})
}

/// A Kafka line with the document inline.
fn line(doc: &Value) -> String {
    json!({"document_id": doc["_id"], "document_type": doc["doc_type"], "domain": doc["domain"],
           "document": doc})
    .to_string()
}

const VISIT: &str = "http://openrosa.org/formdesigner/visit";
const FOLLOWUP: &str = "http://openrosa.org/formdesigner/followup";

/// A host config of one pillow `ucr` over `topics` running `manifest`,
/// its store in `schema`, `related_doc`'s lookup `cases` answered from
/// `lookup_url`; `[reload, pillow]` are extra lines of those sections.
fn write_ucr_config(
    path: &Path,
    schema: &str,
    brokers: &str,
    topics: [&str; 2],
    manifest: &Path,
    lookup_url: &str,
    [reload, pillow]: [&str; 2],
) {
    std::fs::write(
        path,
        format!(
            "[feed]\ntype = \"kafka\"\nbrokers = {brokers:?}\n[store]\n{}\n\
             [runtime]\ncompile_cache_dir = {:?}\n[reload]\n{reload}\n\
             [[pillows]]\nname = \"ucr\"\ntopics = {topics:?}\nprocessors = [{manifest:?}]\n{pillow}\n\
             [lookups.cases.source]\ntype = \"postgres\"\nurl = {lookup_url:?}\nquery = \"SELECT id, doc FROM docs WHERE id = ANY($1)\"\n",
            pg_store_toml(schema),
            cache_dir(),
        ),
    )
    .unwrap();
}

/// Rows without `inserted_at` (the time each run wrote them).
fn without_inserted_at(rows: Vec<Value>) -> Vec<Value> {
    rows.into_iter()
        .map(|mut r| {
            r.as_object_mut().unwrap().remove("inserted_at");
            r
        })
        .collect()
}

/// Every row of `table` as JSON objects, by `doc_id` then `repeat_iteration`.
async fn rows(pool: &sqlx::PgPool, schema: &str, table: &str) -> Vec<Value> {
    let order = if table == MEDICATIONS {
        "doc_id, repeat_iteration"
    } else {
        "doc_id"
    };
    let sql =
        format!(r#"SELECT row_to_json(t)::text FROM "{schema}"."{table}" t ORDER BY {order}"#);
    let texts: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("reading {table}: {e}"));
    texts
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect()
}

/// `(column, value)` pairs of `row`, for the columns named.
fn pick(row: &Value, columns: &[&str]) -> Vec<(String, Value)> {
    columns
        .iter()
        .map(|c| (c.to_string(), row[c].clone()))
        .collect()
}

fn expect(pairs: &[(&str, Value)]) -> Vec<(String, Value)> {
    pairs
        .iter()
        .map(|(c, v)| (c.to_string(), v.clone()))
        .collect()
}

/// Cases and forms over Kafka, through the shipped data sources, into
/// PostgreSQL: each source's rows with CommCare's conversions; a test
/// patient (named filter), a household and another domain write nothing;
/// a form's repeat group makes one row per item. Then updates: a patient
/// renamed into the test filter loses its row, a deleted case loses its
/// row, a form resubmitted with one medication (a dict, not a list, as
/// CommCare's form JSON has it) keeps exactly one row.
#[tokio::test(flavor = "multi_thread")]
async fn data_sources_over_kafka_into_postgresql() {
    let db = SourceDb::create("ucr_cases").await;
    let brokers = kafka_brokers();
    let (case_topic, form_topic) = (unique("ucr-cases"), unique("ucr-forms"));
    let dir = tempfile::tempdir().unwrap();
    let shipped = root().join("plugins/ucr/data_sources");
    let manifest = ucr_manifest(dir.path(), &shipped, &[&case_topic, &form_topic]);
    let schema = pg_schema("ucr");
    let write_config = |config: &Path, schema: &str| {
        write_ucr_config(
            config,
            schema,
            &brokers,
            [&case_topic, &form_topic],
            &manifest,
            &db.url,
            ["watch = false", "chunk_size = 100\nmax_wait_ms = 50"],
        )
    };
    let config = dir.path().join("pillowtop.toml");
    write_config(&config, &schema);
    let pillowtop = |config: &Path, args: &[&str]| {
        let out = bin()
            .args(["--config", config.to_str().unwrap(), "--log", "warn"])
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let try_run = || pillowtop(&config, &["run", "--until-caught-up"]);
    let run = || {
        let (ok, text) = try_run();
        assert!(ok, "{text}");
    };

    let p1 = case(
        "p1",
        json!({"name": "Asha Kumar", "age": "41", "owner_id": "o-1", "dob": "1985-03-02",
               "district": "north", "village": "Ralegan", "weight_kg": "60", "height_cm": "160",
               "symptoms": "fever headache", "consent_given": "yes", "opened_on": "2025-12-01T08:00:00Z"}),
    );
    let p4 = case(
        "p4",
        json!({"name": "Ravi", "age": "seven", "owner_id": "o-2", "dob": "2019-02-30", "closed": true}),
    );
    let cases = [
        p1.clone(),
        case("p2", json!({"name": "test patient", "age": "30"})),
        case(
            "p3",
            json!({"type": "household", "name": "Kumar household"}),
        ),
        p4.clone(),
        {
            let mut other = case("p5", json!({"name": "Elsewhere"}));
            other["domain"] = json!("other");
            other
        },
    ];
    db.insert("p1", &p1).await;
    let f1 = form(
        "f1",
        VISIT,
        json!({"meta": {"userID": "u-1"}, "visit_date": "2026-01-10", "temperatures": [37.0, 38.2],
               "case": {"@case_id": "p1"}, "village": "Ralegan", "signs": "cough convulsions",
               "medications": {"item": [{"name": "ORS", "dose": "2"}, {"name": "zinc", "dose": "x"}]}}),
    );
    let f2 = form(
        "f2",
        FOLLOWUP,
        json!({"meta": {"userID": "u-2"}, "visit_date": "not a date", "case": {"@case_id": "p-absent"}}),
    );
    let forms = [
        f1.clone(),
        f2,
        form("f3", "http://example.com/other", json!({})),
    ];
    publish_lines(
        &brokers,
        &case_topic,
        2,
        &cases.iter().map(line).collect::<Vec<_>>(),
    );
    publish_lines(
        &brokers,
        &form_topic,
        2,
        &forms.iter().map(line).collect::<Vec<_>>(),
    );
    run();

    let pool = sqlx::PgPool::connect(&pg_url()).await.unwrap();
    let patients = rows(&pool, &schema, PATIENTS).await;
    let columns = [
        "doc_id",
        "owner_id",
        "age",
        "age_group",
        "dob",
        "district",
        "region",
        "label",
        "first_name",
        "age_in_days",
        "closed",
        "count",
        "symptoms_fever",
        "symptoms_cough",
        "consented",
    ];
    assert_eq!(
        patients
            .iter()
            .map(|r| pick(r, &columns))
            .collect::<Vec<_>>(),
        vec![
            expect(&[
                ("doc_id", json!("p1")),
                ("owner_id", json!("o-1")),
                ("age", json!(41)),
                ("age_group", json!("adult")),
                ("dob", json!("1985-03-02")),
                ("district", json!("north")),
                ("region", json!(1)),
                ("label", json!("Asha Kumar / Ralegan / 41")),
                ("first_name", json!("Asha")),
                // date(2026, 1, 1) - date(1985, 3, 2) in Python.
                ("age_in_days", json!(14915)),
                ("closed", json!(0)),
                ("count", json!(1)),
                ("symptoms_fever", json!(1)),
                ("symptoms_cough", json!(0)),
                ("consented", json!(true)),
            ]),
            // "seven" is no integer and 2019-02-30 no date: null, not an
            // error; null is not >= 18, so a child; no district.
            expect(&[
                ("doc_id", json!("p4")),
                ("owner_id", json!("o-2")),
                ("age", Value::Null),
                ("age_group", json!("child")),
                ("dob", Value::Null),
                ("district", json!("unknown")),
                ("region", json!(0)),
                ("label", json!("Ravi / seven")),
                ("first_name", json!("Ravi")),
                ("age_in_days", Value::Null),
                ("closed", json!(1)),
                ("count", json!(1)),
                ("symptoms_fever", json!(0)),
                ("symptoms_cough", json!(0)),
                ("consented", json!(false)),
            ]),
        ],
        "{patients:#?}"
    );

    let visits = rows(&pool, &schema, VISITS).await;
    let columns = [
        "doc_id",
        "user_id",
        "visit_date",
        "visit_month",
        "month_end",
        "follow_up",
        "readings",
        "max_temp",
        "fevers",
        "case_owner",
        "danger",
        "recent",
        "domain",
    ];
    assert_eq!(
        visits.iter().map(|r| pick(r, &columns)).collect::<Vec<_>>(),
        vec![
            expect(&[
                ("doc_id", json!("f1")),
                ("user_id", json!("u-1")),
                ("visit_date", json!("2026-01-10")),
                ("visit_month", json!("2026-01-01")),
                ("month_end", json!("2026-01-31")),
                ("follow_up", json!("2026-02-10")),
                ("readings", json!(2)),
                ("max_temp", json!(38.2)),
                ("fevers", json!(1)),
                // related_doc: p1's owner, read from PostgreSQL.
                ("case_owner", json!("o-1")),
                // boolean indicators are 1/0, as CommCare writes them.
                ("danger", json!(1)),
                ("recent", json!(1)),
                ("domain", json!("demo")),
            ]),
            expect(&[
                ("doc_id", json!("f2")),
                ("user_id", json!("u-2")),
                ("visit_date", Value::Null),
                ("visit_month", Value::Null),
                ("month_end", Value::Null),
                ("follow_up", Value::Null),
                ("readings", json!(0)),
                ("max_temp", Value::Null),
                ("fevers", json!(0)),
                ("case_owner", Value::Null),
                ("danger", json!(0)),
                ("recent", json!(0)),
                ("domain", json!("demo")),
            ]),
        ],
        "{visits:#?}"
    );

    let columns = [
        "doc_id",
        "repeat_iteration",
        "medication",
        "dose",
        "position",
        "user_id",
    ];
    let medications = rows(&pool, &schema, MEDICATIONS).await;
    assert_eq!(
        medications
            .iter()
            .map(|r| pick(r, &columns))
            .collect::<Vec<_>>(),
        vec![
            expect(&[
                ("doc_id", json!("f1")),
                ("repeat_iteration", json!(0)),
                ("medication", json!("ORS")),
                ("dose", json!(2)),
                ("position", json!(0)),
                ("user_id", json!("u-1")),
            ]),
            expect(&[
                ("doc_id", json!("f1")),
                ("repeat_iteration", json!(1)),
                ("medication", json!("zinc")),
                ("dose", Value::Null),
                ("position", json!(1)),
                ("user_id", json!("u-1")),
            ]),
        ],
        "{medications:#?}"
    );

    // Updates: p1 now matches the named test filter; p4 is deleted; f1
    // is resubmitted with a single medication.
    let mut p1_test = p1.clone();
    p1_test["name"] = json!("test Asha");
    let deletion = json!({"document_id": "p4", "document_type": "CommCareCase", "domain": "demo",
                          "is_deletion": true})
    .to_string();
    publish_lines(&brokers, &case_topic, 2, &[line(&p1_test), deletion]);
    let mut f1_again = f1.clone();
    f1_again["form"]["medications"] = json!({"item": {"name": "ORS", "dose": "3"}});
    publish_lines(&brokers, &form_topic, 2, &[line(&f1_again)]);
    run();
    assert_eq!(rows(&pool, &schema, PATIENTS).await, Vec::<Value>::new());
    let medications = rows(&pool, &schema, MEDICATIONS).await;
    assert_eq!(
        medications
            .iter()
            .map(|r| pick(r, &columns))
            .collect::<Vec<_>>(),
        vec![expect(&[
            ("doc_id", json!("f1")),
            ("repeat_iteration", json!(0)),
            ("medication", json!("ORS")),
            ("dose", json!(3)),
            ("position", json!(0)),
            ("user_id", json!("u-1")),
        ])],
    );
    assert_eq!(rows(&pool, &schema, VISITS).await.len(), 2);
    let store = pg_store(&schema).await;
    let errors = recent_errors(&store, "ucr", 10).await.unwrap();
    assert!(errors.is_empty(), "{errors:?}");

    // The patients data source changes what decides its rows (adults from
    // 21): its table was built by the old definition, so the pillow does
    // not start and says which table; a changed display name alone is no
    // change.
    let changed = dir.path().join("changed");
    std::fs::create_dir(&changed).unwrap();
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, changed.join(path.file_name().unwrap())).unwrap();
    }
    let patients = changed.join("patients.json");
    let text = std::fs::read_to_string(&patients).unwrap();
    std::fs::write(&patients, text.replace("\"Patients\"", "\"All patients\"")).unwrap();
    ucr_manifest(dir.path(), &changed, &[&case_topic, &form_topic]);
    // Two more patients, 19 and 40: adults under either definition's
    // threshold but the first.
    let p6 = case(
        "p6",
        json!({"name": "Meena", "age": "19", "owner_id": "o-6"}),
    );
    let p7 = case(
        "p7",
        json!({"name": "Tara", "age": "40", "owner_id": "o-7"}),
    );
    publish_lines(&brokers, &case_topic, 2, &[line(&p6), line(&p7)]);
    run();
    let age_groups = |rows: &[Value]| -> Vec<(Value, Value)> {
        rows.iter()
            .map(|r| (r["doc_id"].clone(), r["age_group"].clone()))
            .collect()
    };
    assert_eq!(
        age_groups(&rows(&pool, &schema, PATIENTS).await),
        [(json!("p6"), json!("adult")), (json!("p7"), json!("adult"))]
    );
    std::fs::write(
        &patients,
        text.replace(
            "\"operator\": \"gte\", \"property_value\": 18",
            "\"operator\": \"gte\", \"property_value\": 21",
        ),
    )
    .unwrap();
    let (ok, text) = try_run();
    assert!(!ok, "{text}");
    for needle in [PATIENTS, "another definition", "pillowtop ucr rebuild"] {
        assert!(text.contains(needle), "{needle:?} in {text}");
    }

    // `ucr rebuild patients` drops the table and replays the feed through
    // the new definition for that data source only; the pillow then
    // starts. The rows are those of a fresh run with the new definition
    // (a new store, the whole feed), and the other tables were left alone.
    let visits_before = rows(&pool, &schema, VISITS).await;
    let (ok, text) = pillowtop(&config, &["ucr", "rebuild", "patients"]);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("rebuilt {PATIENTS}")), "{text}");
    run();
    let rebuilt = rows(&pool, &schema, PATIENTS).await;
    assert_eq!(
        age_groups(&rebuilt),
        [(json!("p6"), json!("child")), (json!("p7"), json!("adult"))]
    );
    assert_eq!(rows(&pool, &schema, VISITS).await, visits_before);
    let fresh_schema = pg_schema("ucr_fresh");
    let fresh_config = dir.path().join("fresh.toml");
    write_config(&fresh_config, &fresh_schema);
    let (ok, text) = pillowtop(&fresh_config, &["run", "--until-caught-up"]);
    assert!(ok, "{text}");
    assert_eq!(
        without_inserted_at(rebuilt),
        without_inserted_at(rows(&pool, &fresh_schema, PATIENTS).await)
    );
    // A table id no data source has is refused, naming the ones there are.
    let (ok, text) = pillowtop(&config, &["ucr", "rebuild", "nope"]);
    assert!(!ok);
    assert!(
        text.contains("patients, visit_medications, visits"),
        "{text}"
    );
    db.remove().await;
}

/// A child process killed when dropped (a failing test leaves none).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ucr rebuild` while the pillow runs, in two processes: the pillow
/// runs the old version of a changed data source (the new one refused: its
/// table holds rows of the old definition), and keeps writing the other
/// tables through the rebuild; the new version goes live by itself once
/// the rebuild created the table anew, and takes the table back in every
/// partition; changes published throughout land. At the end every table
/// equals a fresh run of the new definitions over the whole feed, nothing
/// stays held, and neither process ever restarted.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_is_rebuilt_while_its_pillow_runs() {
    use std::io::BufRead;
    let db = SourceDb::create("ucr_live").await;
    let brokers = kafka_brokers();
    let (case_topic, form_topic) = (unique("ucr-live-cases"), unique("ucr-live-forms"));
    let dir = tempfile::tempdir().unwrap();
    let sources = dir.path().join("sources");
    std::fs::create_dir(&sources).unwrap();
    let shipped = root().join("plugins/ucr/data_sources");
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, sources.join(path.file_name().unwrap())).unwrap();
    }
    let manifest = ucr_manifest(dir.path(), &sources, &[&case_topic, &form_topic]);
    let schema = pg_schema("ucr_live");
    let write_config = |config: &Path, schema: &str| {
        write_ucr_config(
            config,
            schema,
            &brokers,
            [&case_topic, &form_topic],
            &manifest,
            &db.url,
            [
                "watch = true\npoll_interval_ms = 100",
                "chunk_size = 20\nmax_wait_ms = 50\nnum_processes = 2\n\
                 checkpoint_every = 1\ncheckpoint_max_delay_seconds = 1",
            ],
        )
    };
    let config = dir.path().join("pillowtop.toml");
    write_config(&config, &schema);
    let command = |config: &Path, args: &[&str]| {
        let mut c = bin();
        c.args(["--config", config.to_str().unwrap()]).args(args);
        c
    };
    // Patients of every age from 15 to 24 (the threshold moves from 18 to
    // 21), each case published twice (the second version a year older),
    // and visit forms; `round` keeps ids apart.
    let publish = |round: usize, n: usize| {
        let mut cases = Vec::new();
        let mut forms = Vec::new();
        for i in 0..n {
            let id = format!("r{round}-p{i}");
            for bump in 0..2 {
                let age = (15 + i % 10 + bump).to_string();
                cases.push(line(&case(
                    &id,
                    json!({"name": format!("P {i}"), "age": age, "owner_id": "o-1"}),
                )));
            }
            forms.push(line(&form(
                &format!("r{round}-f{i}"),
                VISIT,
                json!({"meta": {"userID": "u-1"}, "visit_date": "2026-01-10", "temperatures": [37.5],
                       "case": {"@case_id": id}, "medications": {"item": [{"name": "ORS", "dose": "1"}]}}),
            )));
        }
        publish_lines(&brokers, &case_topic, 2, &cases);
        publish_lines(&brokers, &form_topic, 2, &forms);
        2 * n + n
    };
    let mut published = publish(0, 200);

    // Two processes, each following its stderr on a thread.
    let spawn = |k: &str| {
        let (child, stderr) = spawn_started(command(
            &config,
            &["--log", "info", "run", "--process-num", k],
        ));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    };
    let (first, first_log) = spawn("0");
    let (second, second_log) = spawn("1");
    // Killed if the test fails before it stops them.
    let (mut first, mut second) = (KillOnDrop(first), KillOnDrop(second));
    let store = pg_store(&schema).await;
    let caught_up = |published: usize| {
        let store = store.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while checkpointed(&store, "ucr").await < published as u64 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the pillow did not catch up"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    caught_up(published).await;

    // The patients source changes its threshold: both processes refuse
    // the new version and run on with the old one.
    let patients = sources.join("patients.json");
    let text = std::fs::read_to_string(&patients).unwrap();
    let changed = text.replace(
        "\"operator\": \"gte\", \"property_value\": 18",
        "\"operator\": \"gte\", \"property_value\": 21",
    );
    assert_ne!(changed, text);
    std::fs::write(&patients, changed).unwrap();
    let wait_for = |log: &std::sync::mpsc::Receiver<String>, needle: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no {needle:?} in the log: {e}"),
            }
        }
    };
    for log in [&first_log, &second_log] {
        let line = wait_for(log, "plugin version refused by this pillow");
        assert!(line.contains("another definition"), "{line}");
    }
    published += publish(1, 50);
    caught_up(published).await;

    // The rebuild, with changes published all the while.
    let mut rebuild = KillOnDrop(
        command(&config, &["--log", "warn", "ucr", "rebuild", "patients"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut round = 2;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let status = loop {
        if let Some(status) = rebuild.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rebuild did not end: the pillow never took the table back"
        );
        published += publish(round, 10);
        round += 1;
    };
    let mut text = String::new();
    use std::io::Read;
    rebuild
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    rebuild
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "rebuilt {PATIENTS}: pillow ucr writes it again in every partition"
        )),
        "{text}"
    );
    for log in [&first_log, &second_log] {
        wait_for(log, "new plugin version live at this chunk boundary");
    }
    published += publish(round, 20);
    caught_up(published).await;
    assert!(first.0.try_wait().unwrap().is_none(), "process 0 exited");
    assert!(second.0.try_wait().unwrap().is_none(), "process 1 exited");
    for KillOnDrop(child) in [&mut first, &mut second] {
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        assert!(child.wait().unwrap().success());
    }

    let pool = sqlx::PgPool::connect(&pg_url()).await.unwrap();
    let held: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        r#"SELECT COUNT(*) FROM "{schema}".table_holds"#
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(held, 0);
    let fresh_schema = pg_schema("ucr_live_fresh");
    let fresh_config = dir.path().join("fresh.toml");
    write_config(&fresh_config, &fresh_schema);
    let out = command(
        &fresh_config,
        &[
            "--log",
            "warn",
            "run",
            "--until-caught-up",
            "--num-processes",
            "1",
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for table in [PATIENTS, VISITS, MEDICATIONS] {
        let live = without_inserted_at(rows(&pool, &schema, table).await);
        let fresh = without_inserted_at(rows(&pool, &fresh_schema, table).await);
        assert_eq!(live.len(), fresh.len(), "{table}");
        assert!(live == fresh, "{table} differs from a fresh run");
    }
    // The new threshold holds: a 19-year-old is a child.
    let rebuilt = rows(&pool, &schema, PATIENTS).await;
    assert!(
        rebuilt
            .iter()
            .any(|r| r["age"] == json!(19) && r["age_group"] == json!("child"))
    );
    db.remove().await;
}

/// `pillowtop ucr eval`: rows, an expression's value and a filter's
/// verdict, printed as JSON, through the component; a bad spec is
/// refused with its file and JSON path.
#[test]
fn ucr_eval_prints_rows_values_and_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, value: Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, value.to_string()).unwrap();
        path
    };
    let doc = write(
        "doc.json",
        form(
            "f9",
            VISIT,
            json!({"meta": {"userID": "u-9"}, "visit_date": "2026-03-31",
                   "case": {"@case_id": "p1"},
                   "medications": {"item": [{"name": "ORS", "dose": "1"}, {"name": "zinc", "dose": "2"}]}}),
        ),
    );
    let lookups = write(
        "lookups.json",
        json!({"cases": {"p1": {"_id": "p1", "domain": "demo", "owner_id": "o-7"}}}),
    );
    let manifest = root().join("plugins/ucr/plugin.toml");
    let sources = root().join("plugins/ucr/data_sources");
    let eval = |source: &str, extra: &[&str]| {
        let out = bin()
            .args(["ucr", "eval", "--manifest"])
            .arg(&manifest)
            .arg("--compile-cache")
            .arg(cache_dir())
            .arg("--data-source")
            .arg(sources.join(source))
            .arg("--doc")
            .arg(&doc)
            .arg("--lookups")
            .arg(&lookups)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = eval("visit_medications.json", &[]);
    assert!(ok, "{stderr}");
    let printed: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        printed
            .iter()
            .map(|r| (
                r["medication"].clone(),
                r["dose"].clone(),
                r["repeat_iteration"].clone()
            ))
            .collect::<Vec<_>>(),
        [
            (json!("ORS"), json!(1), json!(0)),
            (json!("zinc"), json!(2), json!(1))
        ],
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!("2 row(s) for table {MEDICATIONS}")),
        "{stderr}"
    );

    let (ok, stdout, stderr) = eval("visits.json", &[]);
    assert!(ok, "{stderr}");
    let row: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        (&row["case_owner"], &row["month_end"], &row["follow_up"]),
        (&json!("o-7"), &json!("2026-03-31"), &json!("2026-04-30")),
        "{row}"
    );

    let expression = write(
        "expression.json",
        json!({"type": "add_months", "date_expression": {"type": "named", "name": "visit_date"},
               "months_expression": -1}),
    );
    let (ok, stdout, stderr) = eval(
        "visits.json",
        &["--expression", expression.to_str().unwrap()],
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), r#""2026-02-28""#);

    let filter = write(
        "filter.json",
        json!({"type": "boolean_expression", "expression": {"type": "named", "name": "visit_date"},
               "operator": "gte", "property_value": "2026-04-01"}),
    );
    let (ok, stdout, stderr) = eval("visits.json", &["--filter", filter.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "false");

    // The patients source reads cases: a form does not pass.
    let (ok, stdout, stderr) = eval("patients.json", &[]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.contains("does not pass"), "{stderr}");

    let bad = write(
        "bad.json",
        json!({"type": "reduce_items", "aggregation_fn": "median", "items_expression": []}),
    );
    let (ok, _, stderr) = eval("visits.json", &["--expression", bad.to_str().unwrap()]);
    assert!(!ok);
    for needle in ["aggregation_fn", "median", "allowed: count, sum"] {
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
    }
}

/// CommCare's own test vectors (plugins/ucr/vectors) through the Wasm
/// component, the way `pillowtop ucr eval` runs them: each expression's
/// value and each filter's verdict is the one CommCare's tests expect.
#[tokio::test]
async fn commcare_test_vectors_through_the_component() {
    use pillowtop::ucr::{EvalOutput, EvalRequest, Probe, eval};
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, value: &Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, value.to_string()).unwrap();
        path
    };
    let data_source = write(
        "scope.json",
        &json!({"domain": "vectors", "table_id": "v", "referenced_doc_type": "CommCareCase",
                "configured_indicators": [{"type": "raw", "column_id": "x", "datatype": "string", "property_name": "x"}]}),
    );
    let mut files: Vec<_> = std::fs::read_dir(root().join("plugins/ucr/vectors"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let (mut count, mut failures) = (0, Vec::new());
    for file in &files {
        let vectors: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        for case in vectors["cases"].as_array().unwrap() {
            count += 1;
            let mut doc = case["doc"].clone();
            doc.as_object_mut()
                .unwrap()
                .entry("_id")
                .or_insert(json!("doc"));
            let probe = match (case.get("expression"), case.get("filter")) {
                (Some(e), None) => Probe::Expression(write("spec.json", e)),
                (None, Some(f)) => Probe::Filter(write("spec.json", f)),
                _ => panic!("a case has an expression or a filter: {case}"),
            };
            let request = EvalRequest {
                manifest: root().join("plugins/ucr/plugin.toml"),
                data_source: data_source.clone(),
                doc: write("doc.json", &doc),
                probe,
                lookups: Some(write(
                    "lookups.json",
                    case.get("lookups").unwrap_or(&json!({})),
                )),
                compile_cache: cache_dir(),
            };
            let got = eval(request).await;
            if !matches!(&got, Ok(EvalOutput::Value(v)) if *v == case["expect"]) {
                failures.push(format!(
                    "{}: {}: got {got:?}, expected {}",
                    file.file_name().unwrap().to_string_lossy(),
                    case["name"],
                    case["expect"]
                ));
            }
        }
    }
    assert!(count >= 100, "vectors found: {count}");
    assert!(
        failures.is_empty(),
        "{} of {count} vectors differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
