"""A Python pillow of CommCare's shape, for the bench (section 15): the
reference pillowtop's CPU per change is compared with, on the same topic in
the same run.

What it does is what CommCare's case-search pillow does per change, with
the libraries CommCare's stack uses or would (confluent-kafka, psycopg,
the standard `json` and a keep-alive HTTP connection):

- read the topic's partitions from their checkpoints (a table in
  PostgreSQL, CommCare's KafkaCheckpoint), as chunks of up to 500 changes
  (CommCare's processor chunk);
- decode each message's `ChangeMeta` with `json.loads`;
- build the case-search document with the same transform the Python
  plugin runs (plugins/examples/python-case-search/case_search.py), so
  both pillows write the same documents;
- send the chunk as one bulk request and read its answer for errors;
- save the checkpoint of every partition after every 1000 changes
  (CommCare's checkpoint frequency), in one transaction.

It favours Python where CommCare does more: CommCare wraps each change in
jsonobject classes and reads the document from its database; here the
document arrives inline and `json.loads` is all the decoding there is.

Usage: reference_pillow.py --brokers B --topic T --partitions 4
  --count N --es-url URL --index I --pg-url DSN --table T
Prints one line: `<changes> changes, <bulk errors> bulk errors`.
"""

import argparse
import http.client
import json
import os
import sys
import time
import urllib.parse

sys.path.insert(
    0,
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../plugins/examples/python-case-search"),
)

import psycopg  # noqa: E402
from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING  # noqa: E402

from case_search import search_document  # noqa: E402

CHUNK = 500
CHECKPOINT_EVERY = 1000
CASE_TYPES = (None, "CommCareCase", "CommCareCase-Deleted")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--brokers", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--partitions", type=int, required=True)
    p.add_argument("--count", type=int, required=True, help="stop after this many changes")
    p.add_argument("--es-url", required=True)
    p.add_argument("--index", required=True)
    p.add_argument("--pg-url", required=True)
    p.add_argument("--table", required=True, help="checkpoint table (created if missing)")
    return p.parse_args()


class Checkpoints:
    """One row per (pillow, topic, partition): the next offset to read."""

    def __init__(self, dsn, table, topic):
        self.conn = psycopg.connect(dsn)
        self.table = table
        self.topic = topic
        with self.conn.transaction():
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (topic text, partition int, next_offset bigint, "
                "PRIMARY KEY (topic, partition))"
            )

    def load(self):
        rows = self.conn.execute(
            f"SELECT partition, next_offset FROM {self.table} WHERE topic = %s", (self.topic,)
        ).fetchall()
        return dict(rows)

    def save(self, positions):
        with self.conn.transaction():
            with self.conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {self.table} (topic, partition, next_offset) VALUES (%s, %s, %s) "
                    "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                    [(self.topic, p, o) for p, o in positions.items()],
                )


class Bulk:
    """Bulk requests over one keep-alive connection."""

    def __init__(self, url):
        parts = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port or 9200)

    def send(self, lines):
        body = ("\n".join(lines) + "\n").encode()
        self.conn.request("POST", "/_bulk", body, {"Content-Type": "application/x-ndjson"})
        response = self.conn.getresponse()
        answer = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"bulk answered {response.status}: {answer}")
        if not answer.get("errors"):
            return 0
        return sum(1 for item in answer["items"] for r in item.values() if r.get("status", 500) >= 300)


def bulk_lines(message, index, lines):
    """Append the bulk lines of one change; CommCare's transform for a case."""
    meta = json.loads(message.value())
    doc_id = meta["document_id"]
    if meta.get("document_type") not in CASE_TYPES:
        return
    action = json.dumps({"_index": index, "_id": doc_id})
    doc = meta.get("document")
    out = None
    if doc is not None and not meta.get("is_deletion"):
        out = search_document(doc_id, doc, int(time.time() * 1000))
    if out is None:
        lines.append('{"delete":' + action + "}")
    else:
        lines.append('{"index":' + action + "}")
        lines.append(json.dumps(out, separators=(",", ":"), ensure_ascii=False))


def main():
    args = parse_args()
    checkpoints = Checkpoints(args.pg_url, args.table, args.topic)
    positions = checkpoints.load()
    consumer = Consumer(
        {
            "bootstrap.servers": args.brokers,
            "group.id": "reference-pillow",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # As pillowtop's consumer: tansu answers a fetch only after its
            # whole wait, so the default 500 ms would bound the rate.
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.assign(
        [TopicPartition(args.topic, p, positions.get(p, OFFSET_BEGINNING)) for p in range(args.partitions)]
    )
    bulk = Bulk(args.es_url)
    done = errors = since_checkpoint = 0
    while done < args.count:
        messages = consumer.consume(num_messages=CHUNK, timeout=0.5)
        lines = []
        for m in messages:
            if m.error():
                raise RuntimeError(f"kafka: {m.error()}")
            bulk_lines(m, args.index, lines)
            positions[m.partition()] = m.offset() + 1
        if lines:
            errors += bulk.send(lines)
        done += len(messages)
        since_checkpoint += len(messages)
        if since_checkpoint >= CHECKPOINT_EVERY or (done >= args.count and since_checkpoint):
            checkpoints.save(positions)
            since_checkpoint = 0
    consumer.close()
    print(f"{done} changes, {errors} bulk errors")


if __name__ == "__main__":
    main()
