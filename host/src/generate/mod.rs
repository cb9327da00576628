//! Deterministic synthetic CommCare-like changes (`pillowtop gen`).
//!
//! Cases: several domains, owners and case types; 30-60 dynamic properties
//! per case (about 1.5 KB per document); updates of earlier cases, closed
//! cases and deletions. Forms: XForm submissions whose `meta.userID` is
//! sometimes a user nobody has seen. The same seed always gives the same
//! output, byte for byte. [`related`]: forms and the cases they create and
//! update, for the full stack.

pub mod related;

use serde_json::{Map, Value, json};

/// SplitMix64: small, fast, and good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 + f64::EPSILON < p
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// A 32-hex-digit id, like CommCare's.
    pub fn id(&mut self) -> String {
        format!("{:016x}{:016x}", self.next_u64(), self.next_u64())
    }
}

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `CommCareCase` changes.
    Case,
    /// `XFormInstance` changes.
    Form,
}

/// Generator settings.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Seed.
    pub seed: u64,
    /// Domains to spread over.
    pub domains: u32,
    /// Kind.
    pub kind: Kind,
}

pub(crate) const CASE_TYPES: &[&str] = &[
    "patient",
    "household",
    "pregnancy",
    "child",
    "referral",
    "visit",
];
pub(crate) const WORDS: &[&str] = &[
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
];
pub(crate) const PROPERTIES: &[&str] = &[
    "age",
    "dob",
    "sex",
    "village",
    "district",
    "phone_number",
    "height_cm",
    "weight_kg",
    "muac",
    "edd",
    "lmp",
    "gravida",
    "parity",
    "hiv_status",
    "tb_status",
    "immunization_bcg",
    "immunization_opv0",
    "immunization_penta1",
    "immunization_penta2",
    "immunization_penta3",
    "immunization_measles",
    "last_visit_date",
    "next_visit_date",
    "visit_count",
    "referral_reason",
    "referral_facility",
    "risk_level",
    "household_size",
    "water_source",
    "has_latrine",
    "bednet_count",
    "mother_name",
    "father_name",
    "caregiver_phone",
    "language",
    "literacy",
    "occupation",
    "religion",
    "marital_status",
    "insurance_id",
    "health_facility",
    "chw_id",
    "supervisor_id",
    "gps",
    "notes",
    "consent_given",
    "enrolment_date",
    "exit_date",
    "exit_reason",
    "priority",
    "program",
    "cohort",
    "arm",
    "stage",
    "blood_pressure",
    "temperature",
    "symptoms",
    "diagnosis",
    "treatment",
    "follow_up",
];

pub(crate) fn date(rng: &mut Rng, base_days: i64) -> String {
    crate::time::format_rfc3339_ms((base_days + rng.below(900) as i64) * 86_400_000)[..10]
        .to_owned()
}

pub(crate) fn property_value(rng: &mut Rng) -> String {
    match rng.below(5) {
        0 => rng.below(120).to_string(),
        1 => date(rng, 19_000),
        2 => format!("{} {}", rng.pick(WORDS), rng.pick(WORDS)),
        3 => format!("+2547{:08}", rng.below(100_000_000)),
        _ => rng.pick(WORDS).to_string(),
    }
}

/// 30 to 60 dynamic case properties (a run of [`PROPERTIES`] from a random
/// start), about 1.5 KB of case as JSON.
pub(crate) fn case_properties(rng: &mut Rng) -> Map<String, Value> {
    let mut props = Map::new();
    let count = 30 + rng.below(31) as usize;
    let start = rng.below(PROPERTIES.len() as u64) as usize;
    for i in 0..count {
        props.insert(
            PROPERTIES[(start + i) % PROPERTIES.len()].to_owned(),
            Value::String(property_value(rng)),
        );
    }
    props
}

/// A change message as CommCare's `ChangeMeta` (from its SQL data source),
/// with the document inline when there is one.
pub(crate) fn change_meta(
    id: &str,
    (doc_type, subtype): (&str, &str),
    domain: &str,
    published: &str,
    document: Option<Value>,
) -> Value {
    let mut m = json!({
        "document_id": id, "data_source_type": "sql", "data_source_name": "commcarehq",
        "document_type": doc_type, "document_subtype": subtype, "domain": domain,
        "is_deletion": document.is_none(), "publish_timestamp": published, "attempts": 0,
    });
    if let Some(d) = document {
        m["document"] = d;
    }
    m
}

/// Produces change messages (ChangeMeta JSON with the document inline).
pub struct Generator {
    rng: Rng,
    options: GenOptions,
    domains: Vec<String>,
    owners: Vec<String>,
    users: Vec<String>,
    cases: Vec<(String, String, String, String)>, // (id, domain, type, owner)
    n: u64,
}

/// First publish time: 2026-01-01T00:00:00Z.
pub(crate) const BASE_MS: i64 = 1_767_225_600_000;

impl Generator {
    /// A generator.
    pub fn new(options: GenOptions) -> Self {
        let mut rng = Rng::new(options.seed);
        let domains = (0..options.domains.max(1))
            .map(|i| format!("demo-{i}"))
            .collect();
        let owners = (0..50).map(|_| rng.id()).collect();
        let users = (0..40).map(|_| rng.id()).collect();
        Generator {
            rng,
            options,
            domains,
            owners,
            users,
            cases: Vec::new(),
            n: 0,
        }
    }

    /// The next change, as one JSON line (without the newline).
    pub fn next_line(&mut self) -> String {
        self.n += 1;
        let published = BASE_MS + self.n as i64 * 1000;
        match self.options.kind {
            Kind::Case => self.case_change(published),
            Kind::Form => self.form_change(published),
        }
        .to_string()
    }

    fn case_change(&mut self, published_ms: i64) -> Value {
        let rng = &mut self.rng;
        let roll = rng.below(100);
        // 65% new cases, 25% updates, 6% closes, 4% deletions (of existing cases).
        let existing = !self.cases.is_empty() && roll >= 65;
        let (id, domain, case_type, owner) = if existing {
            self.cases[rng.below(self.cases.len() as u64) as usize].clone()
        } else {
            let c = (
                rng.id(),
                rng.pick(&self.domains).clone(),
                rng.pick(CASE_TYPES).to_string(),
                rng.pick(&self.owners).clone(),
            );
            self.cases.push(c.clone());
            c
        };
        let published = crate::time::format_rfc3339_ms(published_ms);
        let meta = |document: Option<Value>| {
            change_meta(
                &id,
                ("CommCareCase", &case_type),
                &domain,
                &published,
                document,
            )
        };
        if existing && roll >= 96 {
            return meta(None);
        }
        let closed = existing && (90..96).contains(&roll);
        let props = case_properties(rng);
        let opened = date(rng, 19_500);
        let doc = json!({
            "_id": id,
            "doc_type": "CommCareCase",
            "domain": domain,
            "type": case_type,
            "name": format!("{} {}", rng.pick(WORDS), rng.pick(WORDS)),
            "owner_id": owner,
            "user_id": rng.pick(&self.users),
            "opened_on": format!("{opened}T08:00:00.000000Z"),
            "opened_by": rng.pick(&self.users),
            "modified_on": published,
            "server_modified_on": published,
            "closed": closed,
            "closed_on": if closed { Value::String(published.clone()) } else { Value::Null },
            "closed_by": if closed { Value::String(rng.pick(&self.users).clone()) } else { Value::Null },
            "external_id": if rng.chance(0.5) { Value::String(format!("EXT-{}", rng.below(1_000_000))) } else { Value::Null },
            "indices": [],
            "case_json": props,
        });
        meta(Some(doc))
    }

    fn form_change(&mut self, published_ms: i64) -> Value {
        let rng = &mut self.rng;
        let id = rng.id();
        let domain = rng.pick(&self.domains).clone();
        // One submission in ten comes from a user nobody has seen.
        let user = if rng.chance(0.1) {
            rng.id()
        } else {
            rng.pick(&self.users).clone()
        };
        let published = crate::time::format_rfc3339_ms(published_ms);
        let mut fields = Map::new();
        for _ in 0..(10 + rng.below(20)) {
            fields.insert(
                rng.pick(PROPERTIES).to_string(),
                Value::String(property_value(rng)),
            );
        }
        fields.insert(
            "meta".into(),
            json!({"userID": user, "username": format!("{}.{}", rng.pick(WORDS), rng.below(1000)), "deviceID": format!("device-{}", rng.below(500)),
                   "timeStart": published, "timeEnd": published, "instanceID": id}),
        );
        let xmlns = "http://openrosa.org/formdesigner/visit";
        change_meta(
            &id,
            ("XFormInstance", xmlns),
            &domain,
            &published,
            Some(
                json!({"_id": id, "doc_type": "XFormInstance", "domain": domain, "xmlns": xmlns,
                        "received_on": published, "form": fields}),
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(seed: u64, kind: Kind, n: usize) -> Vec<String> {
        let mut g = Generator::new(GenOptions {
            seed,
            domains: 3,
            kind,
        });
        (0..n).map(|_| g.next_line()).collect()
    }

    #[test]
    fn same_seed_same_output_other_seed_other_output() {
        assert_eq!(lines(7, Kind::Case, 50), lines(7, Kind::Case, 50));
        assert_ne!(lines(7, Kind::Case, 50), lines(8, Kind::Case, 50));
    }

    #[test]
    fn cases_look_like_commcare() {
        let all = lines(1, Kind::Case, 2000);
        let parsed: Vec<Value> = all
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let deletions = parsed.iter().filter(|v| v["is_deletion"] == true).count();
        let closed = parsed
            .iter()
            .filter(|v| v["document"]["closed"] == true)
            .count();
        let ids: std::collections::HashSet<_> = parsed
            .iter()
            .map(|v| v["document_id"].as_str().unwrap())
            .collect();
        assert!(
            deletions > 20 && closed > 20,
            "deletions {deletions}, closed {closed}"
        );
        assert!(
            ids.len() < parsed.len(),
            "some changes update earlier cases"
        );
        let docs: Vec<_> = parsed
            .iter()
            .filter(|v| v["document"].is_object())
            .collect();
        let avg = docs
            .iter()
            .map(|v| v["document"].to_string().len())
            .sum::<usize>()
            / docs.len();
        assert!(
            (1200..=2000).contains(&avg),
            "average case document {avg} bytes"
        );
        for d in &docs {
            let n = d["document"]["case_json"].as_object().unwrap().len();
            assert!((30..=60).contains(&n), "{n} properties");
        }
        // Every line decodes as a change.
        for l in &all {
            let m = crate::feed::Message {
                tp: crate::feed::TopicPartition::new("t", 0),
                offset: 0,
                key: None,
                value: l.clone().into_bytes(),
                timestamp_ms: None,
            };
            crate::change::decode(m).unwrap();
        }
    }

    #[test]
    fn forms_carry_a_user() {
        for l in lines(3, Kind::Form, 20) {
            let v: Value = serde_json::from_str(&l).unwrap();
            assert_eq!(v["document_type"], "XFormInstance");
            assert!(v["document"]["form"]["meta"]["userID"].is_string());
        }
    }
}
