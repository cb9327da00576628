"""CommCare's case-search document in plain Python: the transform of the
Python case-search plugin (app.py wraps it in the WIT contract) and of the
bench's Python reference pillow (host/examples/bench/reference_pillow.py),
so both produce the Rust plugin's documents, byte for byte (see
plugins/case-search/src/transform.rs for the rules)."""

import json
import time

# The top-level properties of CommCare's case-search mapping copied from the
# case (the Rust plugin's transform::FIELDS), in the mapping's order.
FIELDS = (
    "closed", "closed_by", "closed_on", "doc_id", "doc_type", "domain", "external_id",
    "indices", "location_id", "modified_on", "name", "opened_by", "opened_on", "owner_id",
    "server_modified_on", "type", "user_id", "__is_tombstone__",
)
DEFAULT_INDEX = "case-search-20230524"


def _indexed_on(ms):
    """Epoch milliseconds as CommCare's json_format_datetime writes them."""
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}000Z"


def is_live(text):
    """A deletion whose current document is live (doc_type set, not -Deleted) deletes nothing."""
    try:
        doc = json.loads(text)
    except ValueError:
        return False
    doc_type = doc.get("doc_type") if isinstance(doc, dict) else None
    return bool(doc_type) and not (isinstance(doc_type, str) and doc_type.endswith("-Deleted"))


def case_search_document(change_id, text, indexed_on_ms):
    """The case-search document for case document `text` as JSON text, or
    None for a deleted case (doc_type ending in -Deleted); raises
    ValueError."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ValueError(f"case document is not valid JSON: {e}") from None
    out = search_document(change_id, doc, indexed_on_ms)
    return None if out is None else json.dumps(out, separators=(",", ":"), ensure_ascii=False)


def search_document(change_id, doc, indexed_on_ms):
    """The case-search document for the parsed case `doc`, as a dict, or
    None for a deleted case; raises ValueError."""
    if not isinstance(doc, dict):
        raise ValueError("case document is not a JSON object")
    case_json = doc.get("case_json", {})
    if not isinstance(case_json, dict):
        raise ValueError("case document field `case_json` must be an object of case properties")
    doc_type = doc.get("doc_type")
    if isinstance(doc_type, str) and doc_type.endswith("-Deleted"):
        return None
    if doc.get("__is_tombstone__"):
        raise ValueError(
            "case document sets `__is_tombstone__`, which CommCare reserves for index tombstones; remove it from the case"
        )
    case_id = doc.get("_id", change_id)
    out = {field: doc.get(field) for field in FIELDS}
    out["doc_id"] = case_id
    out["@indexed_on"] = _indexed_on(indexed_on_ms)
    special = [
        ("@case_id", case_id),
        ("@case_type", doc.get("type")),
        ("@owner_id", doc.get("owner_id")),
        ("@status", "closed" if doc.get("closed") else "open"),
        ("name", doc.get("name")),
        ("case_name", doc.get("name")),
        ("external_id", doc.get("external_id", "")),
        ("date_opened", doc.get("opened_on")),
        ("closed_on", doc.get("closed_on")),
        ("last_modified", doc.get("modified_on")),
    ]
    properties = [{"key": k, "value": v} for k, v in special]
    # Dynamic values as text, by Python's own str(): True, None, ['a', 'b'].
    properties += [{"key": k, "value": v if isinstance(v, str) else str(v)} for k, v in case_json.items()]
    out["case_properties"] = properties
    return out


def _name(config, key, default):
    value = config.get(key, default)
    if not isinstance(value, str) or not value:
        raise ValueError(f"config key `{key}` must be a non-empty string, e.g. {key} = {json.dumps(default or 'case_search')}")
    return value


def _domain_list(value):
    return isinstance(value, list) and all(isinstance(d, str) for d in value)


def parse_config(text):
    """(index, aliases, only, excluded) from the plugin's [config]."""
    config = json.loads(text)
    valid = ("index", "alias", "exclude_domains", "domains")
    unknown = [k for k in config if k not in valid]
    if unknown:
        raise ValueError(f"unknown config key `{unknown[0]}`; valid keys: {', '.join(valid)}")
    index = _name(config, "index", DEFAULT_INDEX)
    aliases = [_name(config, "alias", None)] if "alias" in config else []
    if index in aliases:
        raise ValueError(f'config key `alias` must differ from `index` (both are "{index}")')
    excluded = config.get("exclude_domains", [])
    if not _domain_list(excluded):
        raise ValueError('config key `exclude_domains` must list domain names, e.g. exclude_domains = ["big-project"]')
    only = config.get("domains", "*")
    if only == "*":
        only = None
    elif _domain_list(only):
        # ["*"] means every domain too, not a domain named "*".
        only = None if "*" in only else frozenset(only)
    else:
        raise ValueError('config key `domains` must be "*" (every domain, the default) or a list of the only domains to index')
    return index, aliases, only, frozenset(excluded)


def domain_enabled(config, domain):
    _, _, only, excluded = config
    return bool(domain) and domain not in excluded and (only is None or domain in only)
