//! Bulk requests, pure: building the NDJSON body and classifying the
//! server's answer, so both are unit-tested on canned bodies without a
//! server.
//!
//! Every write carries `version_type=external` with the change's offset as
//! its version. Elasticsearch then refuses a write whose version is not
//! above the stored one with 409 `version_conflict_engine_exception`: that
//! is a replay of an older change and counts as done, never as an error.

use serde::Deserialize;

/// One document write, ready to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op<'a> {
    /// The Elasticsearch index (prefix included).
    pub index: &'a str,
    /// Document id.
    pub id: &'a str,
    /// The source, or `None` for a delete.
    pub document: Option<&'a str>,
    /// External version: the change's offset.
    pub version: u64,
    /// Only if absent (`create`): no version, as Elasticsearch takes
    /// only internal versioning for creates; an existing document
    /// answers 409, which counts as done.
    pub create: bool,
}

impl Op<'_> {
    /// Bytes this op adds to a bulk body (close enough to split by).
    pub fn size(&self) -> usize {
        96 + self.index.len() + self.id.len() + self.document.map_or(0, |d| d.len() + 1)
    }
}

/// Append `op` to an NDJSON bulk body.
pub fn append(body: &mut Vec<u8>, op: &Op<'_>) {
    body.extend_from_slice(match (op.document, op.create) {
        (Some(_), true) => b"{\"create\":{\"_index\":",
        (Some(_), false) => b"{\"index\":{\"_index\":",
        (None, _) => b"{\"delete\":{\"_index\":",
    });
    write_json_str(body, op.index);
    body.extend_from_slice(b",\"_id\":");
    write_json_str(body, op.id);
    if op.create {
        body.extend_from_slice(b"}}\n");
    } else {
        body.extend_from_slice(b",\"version\":");
        body.extend_from_slice(op.version.to_string().as_bytes());
        body.extend_from_slice(b",\"version_type\":\"external\"}}\n");
    }
    if let Some(doc) = op.document {
        // Plugin output is validated JSON, but a source must sit on one
        // line of the NDJSON body: raw newlines between tokens are
        // whitespace, so replacing them with spaces keeps the document.
        if doc.contains('\n') {
            body.extend(doc.bytes().map(|b| if b == b'\n' { b' ' } else { b }));
        } else {
            body.extend_from_slice(doc.as_bytes());
        }
        body.push(b'\n');
    }
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Split `ops` into consecutive runs whose bodies stay under `max_bytes`
/// (an op larger than that goes alone).
pub fn batches(ops: &[Op<'_>], max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, op) in ops.iter().enumerate() {
        let s = op.size();
        if i > start && size + s > max_bytes {
            out.push(start..i);
            start = i;
            size = 0;
        }
        size += s;
    }
    if start < ops.len() {
        out.push(start..ops.len());
    }
    out
}

/// The fields a bulk response needs, asked for with `filter_path` so a
/// large bulk's answer stays small (comma-separated, as the query wants).
pub const FILTER_PATH: &str =
    "errors,items.*.status,items.*.error.type,items.*.error.reason,items.*.error.caused_by.reason";

/// What became of one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Written, or a no-op that counts as written: a version conflict (a
    /// newer change already landed) or a delete of a missing document.
    Done,
    /// The server refused this document (mapping or parse error, other
    /// 4xx): a pillow error for the change behind it.
    Rejected(String),
    /// The server could not take it now (429, 5xx): retry later.
    Retry(String),
}

/// What became of a whole bulk request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The request was read; one outcome per op, in order.
    Items(Vec<ItemOutcome>),
    /// The request as a whole was refused for a data reason (400, ...):
    /// send its ops one at a time to find the bad one.
    Refused(String),
    /// The request was larger than the server takes (413): send it again
    /// in halves.
    TooLarge(String),
    /// The server is overloaded or down (429, 5xx, an unreadable answer):
    /// retry the same request later.
    Retry(String),
    /// The server refused us, not the data (401, 403): retrying cannot
    /// help until the configuration changes.
    Fatal(String),
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, Item>>,
}

#[derive(Deserialize)]
struct Item {
    status: u16,
    #[serde(default)]
    error: Option<ItemError>,
}

#[derive(Deserialize)]
struct ItemError {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    caused_by: Option<Box<ItemError>>,
}

impl ItemError {
    fn describe(&self) -> String {
        let mut out = match (&self.kind, &self.reason) {
            (Some(k), Some(r)) => format!("{k}: {r}"),
            (Some(k), None) => k.clone(),
            (None, Some(r)) => r.clone(),
            (None, None) => "no reason given".into(),
        };
        if let Some(reason) = self.caused_by.as_ref().and_then(|c| c.reason.as_deref()) {
            out.push_str(" (");
            out.push_str(reason);
            out.push(')');
        }
        out
    }
}

/// Classify one item of a bulk response.
pub fn classify_item(op: &str, status: u16, error: Option<String>) -> ItemOutcome {
    let why = || error.clone().unwrap_or_else(|| format!("HTTP {status}"));
    match status {
        200..=299 => ItemOutcome::Done,
        // The stored version is the same or newer: this write is a replay.
        409 => ItemOutcome::Done,
        404 if op == "delete" => ItemOutcome::Done,
        429 | 500..=599 => ItemOutcome::Retry(format!("HTTP {status}: {}", why())),
        _ => ItemOutcome::Rejected(format!("HTTP {status}: {}", why())),
    }
}

/// Classify a bulk response of `expected` ops.
pub fn classify(status: u16, body: &[u8], expected: usize) -> Reply {
    match status {
        200..=299 => {}
        429 | 500..=599 => return Reply::Retry(format!("HTTP {status}: {}", reason(body))),
        401 | 403 => return Reply::Fatal(format!("HTTP {status}: {}", reason(body))),
        413 => return Reply::TooLarge(format!("HTTP {status}: {}", reason(body))),
        _ => return Reply::Refused(format!("HTTP {status}: {}", reason(body))),
    }
    let parsed: Response = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return Reply::Retry(format!(
                "unreadable bulk response ({e}): {}",
                clip(&String::from_utf8_lossy(body))
            ));
        }
    };
    if parsed.items.len() != expected {
        return Reply::Retry(format!(
            "bulk response has {} items for {expected} writes",
            parsed.items.len()
        ));
    }
    Reply::Items(
        parsed
            .items
            .into_iter()
            .map(|item| match item.into_iter().next() {
                Some((op, item)) => {
                    classify_item(&op, item.status, item.error.map(|e| e.describe()))
                }
                None => ItemOutcome::Retry("empty bulk response item".into()),
            })
            .collect(),
    )
}

/// Why [`deliver`] stopped before every op was written or refused.
#[derive(Debug)]
pub enum Stop<E> {
    /// Sending failed (no answer).
    Send(E),
    /// The server is down or overloaded (429, 5xx): retry later.
    Retry(String),
    /// The server refuses us (401, 403).
    Fatal(String),
}

/// Sends one bulk request of `ops` and classifies the answer.
pub trait Sender {
    /// Why sending failed (no answer).
    type Error;
    /// Send `ops` as one request.
    fn send(&mut self, ops: &[Op<'_>]) -> impl Future<Output = Result<Reply, Self::Error>> + Send;
}

/// Send `ops` in bulk requests of at most `max_bytes` through `sender`.
/// A request refused as a whole for a data reason is sent again one op at
/// a time, so one bad document cannot hold back the others.
///
/// Returns the refused ops: (position in `ops`, the server's reason).
///
/// # Errors
///
/// [`Stop`] when any op could not be written for a reason other than its
/// data; writing every op again is safe (external versions).
pub async fn deliver<S: Sender>(
    ops: &[Op<'_>],
    max_bytes: usize,
    mut sender: S,
) -> Result<Vec<(usize, String)>, Stop<S::Error>> {
    let mut refused = Vec::new();
    let take = |at: usize, items: Vec<ItemOutcome>, refused: &mut Vec<(usize, String)>| {
        for (i, item) in items.into_iter().enumerate() {
            match item {
                ItemOutcome::Done => {}
                ItemOutcome::Rejected(reason) => refused.push((at + i, reason)),
                ItemOutcome::Retry(why) => {
                    return Err(Stop::Retry(format!(
                        "document {:?} of index {:?}: {why}",
                        ops[at + i].id,
                        ops[at + i].index
                    )));
                }
            }
        }
        Ok(())
    };
    // Ranges still to send, the next on top.
    let mut pending = batches(ops, max_bytes);
    pending.reverse();
    while let Some(range) = pending.pop() {
        match sender.send(&ops[range.clone()]).await.map_err(Stop::Send)? {
            Reply::Items(items) => take(range.start, items, &mut refused)?,
            Reply::Refused(why) | Reply::TooLarge(why) if range.len() == 1 => {
                refused.push((range.start, why))
            }
            Reply::TooLarge(why) => {
                let bytes: usize = ops[range.clone()].iter().map(Op::size).sum();
                tracing::warn!(writes = range.len(), bytes, reason = %why, "bulk request too large for the server; sending it in halves (set [elasticsearch] bulk_max_bytes below the server's http.max_content_length)");
                let middle = range.start + range.len() / 2;
                pending.push(middle..range.end);
                pending.push(range.start..middle);
            }
            Reply::Refused(why) => {
                tracing::warn!(writes = range.len(), reason = %why, "bulk request refused as a whole; writing its documents one at a time");
                pending.extend(range.rev().map(|at| at..at + 1));
            }
            Reply::Retry(why) => return Err(Stop::Retry(why)),
            Reply::Fatal(why) => return Err(Stop::Fatal(why)),
        }
    }
    Ok(refused)
}

/// The reason in an error body (`{"error":{"type":..,"reason":..}}`), or
/// the body itself, clipped.
pub fn reason(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Wrapper {
        error: ErrorField,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ErrorField {
        Object(ItemError),
        Text(String),
    }
    match serde_json::from_slice::<Wrapper>(body) {
        Ok(Wrapper {
            error: ErrorField::Object(e),
        }) => e.describe(),
        Ok(Wrapper {
            error: ErrorField::Text(s),
        }) => s,
        Err(_) if body.is_empty() => "empty response".into(),
        Err(_) => clip(&String::from_utf8_lossy(body)),
    }
}

fn clip(s: &str) -> String {
    crate::wasm::check::clip(s.trim(), 300)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op<'a>(id: &'a str, document: Option<&'a str>, version: u64) -> Op<'a> {
        Op {
            index: "p-case-search",
            id,
            document,
            version,
            create: false,
        }
    }

    #[test]
    fn bodies_are_ndjson_with_external_versions() {
        let mut body = Vec::new();
        append(&mut body, &op("c\"1", Some("{\"a\":\n1}"), 7));
        append(&mut body, &op("c2", None, 0));
        let text = String::from_utf8(body).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(text.ends_with('\n'));
        let header: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(header["index"]["_id"], "c\"1");
        assert_eq!(header["index"]["_index"], "p-case-search");
        assert_eq!(header["index"]["version"], 7);
        assert_eq!(header["index"]["version_type"], "external");
        let doc: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(doc["a"], 1);
        let delete: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(delete["delete"]["_id"], "c2");
        assert_eq!(delete["delete"]["version"], 0);
    }

    #[test]
    fn creates_carry_no_external_version() {
        // Elasticsearch refuses `create` with external versioning ("create
        // operations only support internal versioning").
        let mut body = Vec::new();
        let create = Op {
            create: true,
            ..op("u1", Some("{\"a\":1}"), 9)
        };
        append(&mut body, &create);
        let text = String::from_utf8(body).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let header: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(
            header,
            serde_json::json!({"create": {"_index": "p-case-search", "_id": "u1"}})
        );
        // An existing document answers 409: the create is done, not refused.
        assert_eq!(
            classify_item(
                "create",
                409,
                Some("version_conflict_engine_exception".into())
            ),
            ItemOutcome::Done
        );
    }

    #[test]
    fn batches_respect_the_byte_limit() {
        let doc = "x".repeat(1000);
        let ops: Vec<Op> = (0..10).map(|_| op("id", Some(&doc), 1)).collect();
        let one = ops[0].size();
        let runs = batches(&ops, one * 3);
        assert_eq!(runs, vec![0..3, 3..6, 6..9, 9..10]);
        // An op bigger than the limit goes alone, never dropped.
        assert_eq!(batches(&ops[..2], 10), vec![0..1, 1..2]);
        assert!(batches(&[], 10).is_empty());
    }

    #[test]
    fn items_map_to_outcomes() {
        // As osmem-server and Elasticsearch 8 answer with FILTER_PATH.
        let body = br#"{"errors":true,"items":[
            {"index":{"status":201}},
            {"index":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"[b]: version conflict, current version [5] is higher or equal to the one provided [3]"}}},
            {"delete":{"status":404}},
            {"index":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [closed] of type [boolean]","caused_by":{"type":"illegal_argument_exception","reason":"Failed to parse value [notabool] as only [true] or [false] are allowed."}}}},
            {"index":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution"}}},
            {"index":{"status":404,"error":{"type":"index_not_found_exception","reason":"no such index [x]"}}}
        ]}"#;
        let Reply::Items(items) = classify(200, body, 6) else {
            panic!("items expected")
        };
        assert_eq!(items[0], ItemOutcome::Done);
        assert_eq!(items[1], ItemOutcome::Done, "a replay is success");
        assert_eq!(
            items[2],
            ItemOutcome::Done,
            "deleting a missing doc is success"
        );
        assert_eq!(
            items[3],
            ItemOutcome::Rejected(
                "HTTP 400: mapper_parsing_exception: failed to parse field [closed] of type [boolean] (Failed to parse value [notabool] as only [true] or [false] are allowed.)".into()
            )
        );
        assert!(matches!(&items[4], ItemOutcome::Retry(m) if m.contains("429")));
        assert!(
            matches!(&items[5], ItemOutcome::Rejected(m) if m.contains("index_not_found")),
            "an index write that 404s is refused data, not success"
        );
    }

    /// A stand-in for the server, for [`deliver`]'s control flow only:
    /// answers each request with `answer` and records its ids.
    struct Scripted {
        requests: Vec<Vec<String>>,
        answer: fn(usize, &[Op<'_>]) -> Reply,
    }

    impl Sender for &mut Scripted {
        type Error = ();
        fn send(&mut self, ops: &[Op<'_>]) -> impl Future<Output = Result<Reply, ()>> + Send {
            self.requests
                .push(ops.iter().map(|o| o.id.to_owned()).collect());
            let reply = (self.answer)(self.requests.len(), ops);
            async move { Ok(reply) }
        }
    }

    #[tokio::test]
    async fn a_request_refused_whole_is_retried_one_op_at_a_time() {
        let ids = ["a", "bad", "c", "d"];
        let ops: Vec<Op> = ids.iter().map(|id| op(id, Some("{}"), 1)).collect();
        let mut server = Scripted {
            requests: Vec::new(),
            // Refuses any multi-op request whole and "bad" alone.
            answer: |_, run| match run {
                [one] if one.id == "bad" => Reply::Refused("HTTP 400: bad".into()),
                [_] => Reply::Items(vec![ItemOutcome::Done]),
                _ => Reply::Refused("HTTP 400: bad request".into()),
            },
        };
        let refused = deliver(&ops, 1 << 20, &mut server).await.unwrap();
        assert_eq!(refused, vec![(1, "HTTP 400: bad".to_owned())]);
        assert_eq!(
            server.requests,
            vec![
                vec!["a", "bad", "c", "d"],
                vec!["a"],
                vec!["bad"],
                vec!["c"],
                vec!["d"]
            ]
        );
    }

    #[tokio::test]
    async fn a_request_too_large_is_sent_again_in_halves() {
        let ids = ["a", "b", "c", "d", "e"];
        let ops: Vec<Op> = ids.iter().map(|id| op(id, Some("{}"), 1)).collect();
        let mut server = Scripted {
            requests: Vec::new(),
            // Takes at most two ops a request, and none holding "e" (too
            // large even alone).
            answer: |_, run| {
                if run.len() <= 2 && run.iter().all(|o| o.id != "e") {
                    Reply::Items(vec![ItemOutcome::Done; run.len()])
                } else {
                    Reply::TooLarge("HTTP 413: too large".into())
                }
            },
        };
        let refused = deliver(&ops, 1 << 20, &mut server).await.unwrap();
        assert_eq!(refused, vec![(4, "HTTP 413: too large".to_owned())]);
        assert_eq!(
            server.requests,
            vec![
                vec!["a", "b", "c", "d", "e"],
                vec!["a", "b"],
                vec!["c", "d", "e"],
                vec!["c"],
                vec!["d", "e"],
                vec!["d"],
                vec!["e"],
            ]
        );
    }

    #[tokio::test]
    async fn item_failures_map_to_their_ops_across_batches() {
        let doc = "x".repeat(100);
        let ops: Vec<Op> = (0..4).map(|_| op("id", Some(&doc), 1)).collect();
        let max = ops[0].size() * 2;
        let mut server = Scripted {
            requests: Vec::new(),
            answer: |n, run| {
                assert_eq!(run.len(), 2);
                Reply::Items(if n == 2 {
                    vec![ItemOutcome::Done, ItemOutcome::Rejected("no".into())]
                } else {
                    vec![ItemOutcome::Done, ItemOutcome::Done]
                })
            },
        };
        let refused = deliver(&ops, max, &mut server).await.unwrap();
        assert_eq!(
            refused,
            vec![(3, "no".to_owned())],
            "the second batch's second op"
        );

        let mut busy = Scripted {
            requests: Vec::new(),
            answer: |_, _| {
                Reply::Items(vec![
                    ItemOutcome::Done,
                    ItemOutcome::Retry("HTTP 429".into()),
                ])
            },
        };
        let stop = deliver(&ops, max, &mut busy).await.unwrap_err();
        assert!(matches!(stop, Stop::Retry(m) if m.contains("429")));
    }

    #[test]
    fn whole_responses_are_classified() {
        let error = br#"{"error":{"type":"illegal_argument_exception","reason":"The bulk request must be terminated by a newline"},"status":400}"#;
        assert_eq!(
            classify(400, error, 1),
            Reply::Refused("HTTP 400: illegal_argument_exception: The bulk request must be terminated by a newline".into())
        );
        assert!(matches!(classify(413, b"", 1), Reply::TooLarge(m) if m.contains("413")));
        assert!(
            matches!(classify(503, b"<html>down</html>", 1), Reply::Retry(m) if m.contains("down"))
        );
        assert!(matches!(classify(429, b"{}", 1), Reply::Retry(_)));
        assert!(
            matches!(classify(401, b"{\"error\":\"no\"}", 1), Reply::Fatal(m) if m.contains("no"))
        );
        assert!(
            matches!(classify(200, b"not json", 1), Reply::Retry(m) if m.contains("unreadable"))
        );
        assert!(matches!(
            classify(200, br#"{"errors":false,"items":[]}"#, 2),
            Reply::Retry(m) if m.contains("0 items for 2")
        ));
        assert_eq!(
            classify(
                200,
                br#"{"errors":false,"items":[{"index":{"status":200}}]}"#,
                1
            ),
            Reply::Items(vec![ItemOutcome::Done])
        );
    }
}
