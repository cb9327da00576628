//! Forms and the cases they belong to (`pillowtop gen --kind related`),
//! for the full stack: CommCare's case pillow and form pillow reading the
//! same submissions.
//!
//! Each submission is an `XFormInstance` whose case block creates or
//! updates one case, followed by that case's change as the form left it
//! (`xform_ids`, `user_id`, `modified_on` from the form). A few changes
//! delete a case, with no form. What the sample exercises:
//!
//! - users: most forms come from the project's known users, about one in
//!   ten from a handful of user ids HQ has never seen (the unknown-users
//!   processor's work);
//! - phone numbers: most new cases get a unique valid
//!   `contact_phone_number` in a lenient format (`+254 7xx xxx xxx`), some
//!   an invalid one, some none; some updates change it, some cases are
//!   closed (messaging-sync's work);
//! - registration and visit forms: a visit has a `visit_date`, temperature
//!   readings and a `medications` repeat group, which CommCare's form JSON
//!   holds as a list of items, or a single object for one item (the UCR
//!   sources' work, with `related_doc` back to the case);
//! - the primary database's view of it all ([`Related::primary_sql`]): the
//!   known users and every case as it ends up, which the full stack's
//!   lookups read.

use super::{
    BASE_MS, CASE_TYPES, PROPERTIES, Rng, WORDS, case_properties, change_meta, date, property_value,
};
use serde_json::{Map, Value, json};

/// The registration form's namespace.
pub const REGISTRATION: &str = "http://openrosa.org/formdesigner/registration";
/// The visit form's namespace.
pub const VISIT: &str = "http://openrosa.org/formdesigner/visit";
const MEDICATIONS: &[&str] = &[
    "amoxicillin",
    "paracetamol",
    "ors",
    "zinc",
    "iron",
    "vitamin_a",
];

/// Settings.
#[derive(Debug, Clone)]
pub struct RelatedOptions {
    /// Seed; the same seed gives the same sample.
    pub seed: u64,
    /// Domains to spread the submissions over (`demo-0`, `demo-1`, ...).
    pub domains: u32,
}

/// One step of the sample: a submission and the case change it made, or a
/// case deletion alone.
#[derive(Debug, Clone)]
pub struct Step {
    /// The form change (topic `form-sql`), as one JSON line.
    pub form: Option<String>,
    /// The case change (topic `case-sql`), as one JSON line.
    pub case: String,
}

#[derive(Debug, Clone)]
struct Case {
    id: String,
    domain: String,
    case_type: String,
    name: String,
    owner: String,
    opened_on: String,
    opened_by: String,
    external_id: Option<String>,
    properties: Map<String, Value>,
    xform_ids: Vec<String>,
    /// The last form's time and user.
    modified: (String, String),
    closed: Option<(String, String)>,
    deleted: bool,
}

/// Generates the sample step by step; [`Related::primary_sql`] then says
/// what the primary database holds.
pub struct Related {
    rng: Rng,
    domains: Vec<String>,
    owners: Vec<String>,
    known: Vec<(String, String)>,
    unknown: Vec<String>,
    cases: Vec<Case>,
    /// Indexes into `cases` of cases neither closed nor deleted.
    open: Vec<usize>,
    phones: u64,
    n: u64,
}

impl Related {
    /// A generator.
    pub fn new(options: RelatedOptions) -> Self {
        let mut rng = Rng::new(options.seed ^ 0x7265_6c61_7465_6400);
        let domains = (0..options.domains.max(1))
            .map(|i| format!("demo-{i}"))
            .collect();
        let owners = (0..20).map(|_| rng.id()).collect();
        let known = (0..40)
            .map(|i| (rng.id(), format!("{}.{i}", rng.pick(WORDS))))
            .collect();
        let unknown = (0..6).map(|_| rng.id()).collect();
        Related {
            rng,
            domains,
            owners,
            known,
            unknown,
            cases: Vec::new(),
            open: Vec::new(),
            phones: 0,
            n: 0,
        }
    }

    /// The next step.
    pub fn next_step(&mut self) -> Step {
        self.n += 1;
        let published = crate::time::format_rfc3339_ms(BASE_MS + self.n as i64 * 1000);
        let roll = self.rng.below(100);
        if roll < 2 && !self.open.is_empty() {
            let at = self.rng.below(self.open.len() as u64) as usize;
            let case = &mut self.cases[self.open.swap_remove(at)];
            case.deleted = true;
            let meta = change_meta(
                &case.id,
                ("CommCareCase", &case.case_type),
                &case.domain,
                &published,
                None,
            );
            return Step {
                form: None,
                case: meta.to_string(),
            };
        }
        let update = roll < 45 && !self.open.is_empty();
        let form = self.submission(update, &published);
        let case = &self.cases[form.case];
        let case_change = change_meta(
            &case.id,
            ("CommCareCase", &case.case_type),
            &case.domain,
            &published,
            Some(case_document(case)),
        );
        Step {
            form: Some(form.change.to_string()),
            case: case_change.to_string(),
        }
    }

    /// A submission that opens a case or updates an open one (closing it
    /// now and then); the case's state is updated with it.
    fn submission(&mut self, update: bool, published: &str) -> Submission {
        let rng = &mut self.rng;
        let form_id = rng.id();
        let (user, username) = if rng.chance(0.1) {
            (
                rng.pick(&self.unknown).clone(),
                format!("unknown.{}", rng.below(100)),
            )
        } else {
            rng.pick(&self.known).clone()
        };
        let mut block = Map::new();
        let index = if update {
            let at = rng.below(self.open.len() as u64) as usize;
            let index = self.open[at];
            let mut changed = Map::new();
            for _ in 0..3 + rng.below(6) {
                changed.insert(
                    rng.pick(PROPERTIES).to_string(),
                    Value::String(property_value(rng)),
                );
            }
            if rng.chance(0.1) {
                self.phones += 1;
                changed.insert("contact_phone_number".into(), phone(self.phones).into());
            }
            if rng.chance(0.08) {
                block.insert("close".into(), json!({}));
                self.cases[index].closed = Some((published.to_owned(), user.clone()));
                self.open.swap_remove(at);
            }
            let case = &mut self.cases[index];
            case.properties.extend(changed.clone());
            block.insert("update".into(), Value::Object(changed));
            index
        } else {
            let case_type = if rng.chance(0.7) {
                "patient"
            } else {
                *rng.pick(CASE_TYPES)
            };
            let mut properties = case_properties(rng);
            match rng.below(20) {
                0..=11 => {
                    self.phones += 1;
                    properties.insert("contact_phone_number".into(), phone(self.phones).into());
                    let verified = if rng.chance(0.5) { "1" } else { "0" };
                    properties.insert("contact_phone_number_is_verified".into(), verified.into());
                }
                12..=14 => {
                    let bad = *rng.pick(&["call me", "12a34", "0", "+"]);
                    properties.insert("contact_phone_number".into(), bad.into());
                }
                _ => {}
            }
            let case = Case {
                id: rng.id(),
                domain: rng.pick(&self.domains).clone(),
                case_type: case_type.to_owned(),
                name: format!("{} {}", rng.pick(WORDS), rng.pick(WORDS)),
                owner: rng.pick(&self.owners).clone(),
                opened_on: published.to_owned(),
                opened_by: user.clone(),
                external_id: rng
                    .chance(0.5)
                    .then(|| format!("EXT-{}", rng.below(1_000_000))),
                properties: properties.clone(),
                xform_ids: Vec::new(),
                modified: (published.to_owned(), user.clone()),
                closed: None,
                deleted: false,
            };
            block.insert(
                "create".into(),
                json!({"case_type": case.case_type, "case_name": case.name, "owner_id": case.owner}),
            );
            block.insert("update".into(), Value::Object(properties));
            self.cases.push(case);
            self.open.push(self.cases.len() - 1);
            self.cases.len() - 1
        };
        let case = &mut self.cases[index];
        case.xform_ids.push(form_id.clone());
        case.modified = (published.to_owned(), user.clone());
        let mut case_block = Map::new();
        case_block.insert("@case_id".into(), case.id.clone().into());
        case_block.insert("@user_id".into(), user.clone().into());
        case_block.insert("@date_modified".into(), published.into());
        case_block.extend(block);
        let (xmlns, name) = if update {
            (VISIT, "Visit")
        } else {
            (REGISTRATION, "Registration")
        };
        let mut form = Map::new();
        form.insert("@xmlns".into(), xmlns.into());
        form.insert("@name".into(), name.into());
        if update {
            form.insert("visit_date".into(), date(rng, 20_400).into());
            let readings: Vec<Value> = (0..1 + rng.below(4))
                .map(|_| json!(f64::from(360 + rng.below(45) as u32) / 10.0))
                .collect();
            form.insert("temperatures".into(), readings.into());
            let items: Vec<Value> = (0..rng.below(4))
                .map(|_| json!({"name": rng.pick(MEDICATIONS), "dose": (1 + rng.below(3)).to_string()}))
                .collect();
            // CommCare's form JSON: a repeat with one item is that item.
            match items.len() {
                0 => {}
                1 => {
                    form.insert("medications".into(), json!({"item": items[0]}));
                }
                _ => {
                    form.insert("medications".into(), json!({"item": items}));
                }
            }
        }
        form.insert("case".into(), Value::Object(case_block));
        form.insert(
            "meta".into(),
            json!({"@xmlns": "http://openrosa.org/jr/xforms", "userID": user, "username": username,
                   "deviceID": format!("device-{}", rng.below(200)), "instanceID": form_id,
                   "timeStart": published, "timeEnd": published}),
        );
        let domain = case.domain.clone();
        let change = change_meta(
            &form_id,
            ("XFormInstance", xmlns),
            &domain,
            published,
            Some(
                json!({"_id": form_id, "doc_type": "XFormInstance", "domain": domain,
                        "xmlns": xmlns, "received_on": published, "form": form}),
            ),
        );
        Submission {
            change,
            case: index,
        }
    }

    /// SQL (PostgreSQL) that loads the primary database's view of what was
    /// generated into `schema`: `users (id, doc)` with the known users,
    /// and `cases (case_id, domain, doc)` with every case as it ends up
    /// (deleted ones are gone). Replaces the tables if they exist.
    pub fn primary_sql(&self, schema: &str) -> String {
        let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let schema = q(schema);
        let mut sql = format!(
            "-- pillowtop gen --kind related: the primary database's users and cases.\n\
             CREATE SCHEMA IF NOT EXISTS {schema};\n\
             DROP TABLE IF EXISTS {schema}.users, {schema}.cases;\n\
             CREATE TABLE {schema}.users (id text PRIMARY KEY, doc json NOT NULL);\n\
             CREATE TABLE {schema}.cases (case_id text PRIMARY KEY, domain text NOT NULL, doc json NOT NULL);\n"
        );
        for chunk in self.known.chunks(500) {
            sql.push_str(&format!("INSERT INTO {schema}.users (id, doc) VALUES\n"));
            let rows: Vec<String> = chunk
                .iter()
                .map(|(id, username)| {
                    let doc = json!({"_id": id, "doc_type": "CommCareUser", "username": username});
                    format!("({}, {})", literal(id), literal(&doc.to_string()))
                })
                .collect();
            sql.push_str(&rows.join(",\n"));
            sql.push_str(";\n");
        }
        let live: Vec<&Case> = self.cases.iter().filter(|c| !c.deleted).collect();
        for chunk in live.chunks(500) {
            sql.push_str(&format!(
                "INSERT INTO {schema}.cases (case_id, domain, doc) VALUES\n"
            ));
            let rows: Vec<String> = chunk
                .iter()
                .map(|c| {
                    let doc = case_document(c).to_string();
                    format!(
                        "({}, {}, {})",
                        literal(&c.id),
                        literal(&c.domain),
                        literal(&doc)
                    )
                })
                .collect();
            sql.push_str(&rows.join(",\n"));
            sql.push_str(";\n");
        }
        sql
    }
}

struct Submission {
    change: Value,
    case: usize,
}

/// A unique, valid number written as a person would (CommCare's leniency
/// strips the spaces and the `+`).
fn phone(n: u64) -> String {
    let digits = format!("{:08}", n % 100_000_000);
    format!("+254 7{} {} {}", &digits[..2], &digits[2..5], &digits[5..])
}

/// A SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The case as CommCare serialises it after its last form.
fn case_document(case: &Case) -> Value {
    let (modified_on, modified_by) = &case.modified;
    let (closed_on, closed_by) = match &case.closed {
        Some((on, by)) => (Value::String(on.clone()), Value::String(by.clone())),
        None => (Value::Null, Value::Null),
    };
    json!({
        "_id": case.id,
        "doc_type": "CommCareCase",
        "domain": case.domain,
        "type": case.case_type,
        "name": case.name,
        "owner_id": case.owner,
        "user_id": modified_by,
        "opened_on": case.opened_on,
        "opened_by": case.opened_by,
        "modified_on": modified_on,
        "server_modified_on": modified_on,
        "closed": case.closed.is_some(),
        "closed_on": closed_on,
        "closed_by": closed_by,
        "external_id": case.external_id,
        "xform_ids": case.xform_ids,
        "indices": [],
        "case_json": case.properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn sample(seed: u64, n: usize) -> (Vec<Step>, Related) {
        let mut g = Related::new(RelatedOptions { seed, domains: 3 });
        let steps = (0..n).map(|_| g.next_step()).collect();
        (steps, g)
    }

    fn parse(line: &str) -> Value {
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn same_seed_same_sample() {
        let lines = |seed| {
            let (steps, g) = sample(seed, 200);
            let mut out: Vec<String> = steps
                .into_iter()
                .flat_map(|s| s.form.into_iter().chain([s.case]))
                .collect();
            out.push(g.primary_sql("commcarehq"));
            out
        };
        assert_eq!(lines(5), lines(5));
        assert_ne!(lines(5), lines(6));
    }

    #[test]
    fn each_form_is_followed_by_the_case_it_made() {
        let (steps, g) = sample(1, 3000);
        let known: HashSet<&str> = g.known.iter().map(|(id, _)| id.as_str()).collect();
        let (mut unknown, mut single_item, mut lists, mut closes, mut deletions) = (0, 0, 0, 0, 0);
        let mut forms_of: HashMap<String, Vec<String>> = HashMap::new();
        for step in &steps {
            let case = parse(&step.case);
            let id = case["document_id"].as_str().unwrap().to_owned();
            let Some(form) = &step.form else {
                assert_eq!(case["is_deletion"], true);
                assert!(case.get("document").is_none());
                deletions += 1;
                continue;
            };
            let form = parse(form);
            let f = &form["document"]["form"];
            assert_eq!(
                f["case"]["@case_id"],
                id.as_str(),
                "the form's case block names the case"
            );
            assert_eq!(form["domain"], case["domain"]);
            let user = f["meta"]["userID"].as_str().unwrap();
            assert_eq!(case["document"]["user_id"], user);
            if !known.contains(user) {
                unknown += 1;
            }
            let forms = forms_of.entry(id).or_default();
            forms.push(form["document_id"].as_str().unwrap().to_owned());
            assert_eq!(case["document"]["xform_ids"], json!(forms));
            match &f["medications"]["item"] {
                Value::Object(_) => single_item += 1,
                Value::Array(items) => {
                    assert!(items.len() > 1);
                    lists += 1;
                }
                _ => {}
            }
            if f["case"].get("close").is_some() {
                assert_eq!(case["document"]["closed"], true);
                closes += 1;
            }
        }
        let forms = steps.iter().filter(|s| s.form.is_some()).count();
        assert!(
            (forms / 20..forms / 5).contains(&unknown),
            "{unknown} of {forms} forms from unknown users"
        );
        assert!(single_item > 50 && lists > 50 && closes > 20 && deletions > 20);
    }

    #[test]
    fn the_primary_database_holds_known_users_and_live_cases() {
        let (steps, g) = sample(2, 500);
        let sql = g.primary_sql("p");
        let deleted: HashSet<String> = steps
            .iter()
            .map(|s| parse(&s.case))
            .filter(|c| c["is_deletion"] == true)
            .map(|c| c["document_id"].as_str().unwrap().to_owned())
            .collect();
        let live = g.cases.iter().filter(|c| !deleted.contains(&c.id)).count();
        assert_eq!(sql.matches("INSERT INTO \"p\".users").count(), 1);
        assert_eq!(sql.matches("', 'demo-").count(), live);
        for id in &deleted {
            assert!(
                !sql.contains(id.as_str()),
                "deleted case {id} in the primary"
            );
        }
    }

    #[test]
    fn phone_numbers_are_unique_and_lenient() {
        assert_eq!(phone(1), "+254 700 000 001");
        assert_ne!(phone(2), phone(3));
    }
}
