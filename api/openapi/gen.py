#!/usr/bin/env python3
"""Generates openapi.json (OpenAPI 3.1) for kurz-api: python3 api/openapi/gen.py > api/openapi/openapi.json

The document is written here, next to the code it describes, and checked against it three ways
in `deploy/dev test`: the committed JSON must be this script's output, every route of the
router must be in it (api/tests/api/openapi.rs), and Schemathesis fuzzes the running API with
it (api/openapi/check.sh): every operation, no 5xx, every response conforming."""
import json
import sys

R = lambda name: {"$ref": f"#/components/schemas/{name}"}
P = lambda name: {"$ref": f"#/components/parameters/{name}"}
RESP = lambda name: {"$ref": f"#/components/responses/{name}"}
H = lambda name: {"$ref": f"#/components/headers/{name}"}

# Character classes the API refuses in free text: control characters (Unicode Cc).
CC = "\\u0000-\\u001f\\u007f-\\u009f"
TS_PATTERN = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}$"
# A non-blank text: at least one non-whitespace character, no NUL.
NONBLANK = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"
RESERVED = ["health", "ready", "metrics", "users", "urls", "events", "auth", "links", "api",
            "docs", "ui", "admin", "static", "assets", "favicon.ico", "robots.txt", "login",
            "logout", "register", "status", "stats", "tags", "openapi.json", "well-known"]
CODE_PATTERN = "^[A-Za-z0-9_-]{3,64}$"
TAG_PATTERN = "^[A-Za-z0-9._-]([A-Za-z0-9 ._-]{0,30}[A-Za-z0-9._-])?$"
# Future timestamps, ISO 8601: a date, or a date and time (fraction optional), zone-less (UTC),
# with `Z` or with an offset. The API takes any ISO 8601 instant in the future; the pattern keeps
# to years 2030-2999 so that every value it describes is accepted whatever the day of the run.
FUTURE_TS = ("^(20[3-9][0-9]|2[1-9][0-9]{2})-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
             "(T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])?)?$")
LABEL = "[A-Za-z0-9]{1,20}(-[A-Za-z0-9]{1,20}){0,2}"
URL_PATTERN = ("^https?://" + LABEL + "(\\." + LABEL + ")*\\.[A-Za-z]{2,12}"
               "(/[A-Za-z0-9._~%!$&'()*+,;=:@/-]*)?(\\?[A-Za-z0-9._~%!$&()*+,;=:@/?-]*)?$")

schemas = {}
params = {}
headers = {}
responses = {}

# ---------------------------------------------------------------- shared schemas
schemas["Timestamp"] = {
    "type": "string", "pattern": TS_PATTERN,
    "description": "UTC, ISO 8601 to the second, without a zone suffix (the contract's format).",
    "examples": ["2025-09-19T22:25:05"],
}
schemas["Error"] = {
    "type": "object",
    "description": "Every error body. `details` is an object for validation errors (one reason per "
                   "field) and bulk-row errors (`row`, `line`, `column`, `reason`), `null` otherwise.",
    "required": ["error", "message", "details"],
    "properties": {
        "error": {"type": "string", "enum": [
            "bad_request", "validation_error", "unauthorized", "password_required", "forbidden",
            "rate_limited", "not_found", "gone", "conflict", "payload_too_large",
            "unsupported_media_type", "method_not_allowed", "service_unavailable",
            "internal_error"]},
        "message": {"type": "string"},
        "details": {"type": ["object", "null"], "additionalProperties": True},
    },
    "additionalProperties": True,
}


def error_with(code, details=None, desc=None):
    s = {"allOf": [R("Error"), {"type": "object", "properties": {"error": {"const": code}}}]}
    if details is not None:
        s["allOf"][1]["properties"]["details"] = details
    if desc:
        s["description"] = desc
    return s


schemas["ValidationError"] = error_with(
    "validation_error",
    {"type": "object", "additionalProperties": {"type": "string"},
     "description": "Each failing field (or path such as `details.key`, `tags`) with its reason."},
    "400 `validation_error`: every failing field at once, `{\"field\": \"reason\"}`.")
schemas["BadRowError"] = error_with(
    "validation_error",
    {"type": "object", "required": ["row", "line", "column", "reason"],
     "properties": {"row": {"type": "integer", "minimum": 0, "description": "data row, from 1"},
                    "line": {"type": "integer", "minimum": 0, "description": "line of the file"},
                    "column": {"type": "string"}, "reason": {"type": "string"}},
     "additionalProperties": True},
    "400 for a bulk upload or import: the first bad row; nothing was imported.")
schemas["BadRequestError"] = {
    "description": "A 400: `bad_request` (body not a JSON object, malformed query parameter, "
                   "malformed multipart) or `validation_error` (fields, with `details`; bulk rows).",
    "oneOf": [error_with("bad_request", {"type": "null"}), R("ValidationError"), R("BadRowError")],
}

user_props = {
    "id": {"type": "integer", "format": "int64", "minimum": 1},
    "username": {"type": "string"},
    "email": {"type": "string"},
    "created_at": R("Timestamp"),
}
schemas["User"] = {"type": "object", "required": list(user_props), "properties": user_props,
                   "additionalProperties": True}
schemas["Me"] = {"allOf": [R("User"), {"type": "object", "required": ["is_admin"],
                                        "properties": {"is_admin": {"type": "boolean"}}}],
                 "description": "`GET /auth/me`: the caller, and whether they are an admin."}

USERNAME = {"type": "string", "minLength": 1, "maxLength": 64,
            "pattern": f"^[^\\s{CC}]+$",
            "description": "1-64 characters, no whitespace or control characters. Unique among live "
                           "users for API writes (409), though bulk imports may repeat one."}
# Printable ASCII without `@` (and, in the domain, without `.`): what the API takes, spelled so
# that every value the pattern admits fits the API's 254-*byte* limit at 254 characters.
LOCAL_CH = "[!-?A-~]"
DOMAIN_CH = "[!-\\-/-?A-~]"
EMAIL = {"type": "string", "minLength": 5, "maxLength": 254,
         "pattern": f"^{LOCAL_CH}+@{DOMAIN_CH}+(\\.{DOMAIN_CH}+)+$",
         "description": "`local@domain.tld` (one `@`, a dot in the domain, no empty domain labels, no "
                        "whitespace or control characters), at most 254 bytes; unique "
                        "case-insensitively (409). Non-ASCII addresses are accepted too, within the "
                        "254 bytes; the pattern keeps to ASCII so that its length limit is exact."}
schemas["NewUser"] = {"type": "object", "required": ["username", "email"],
                      "properties": {"username": USERNAME, "email": EMAIL}}
schemas["UserUpdate"] = {"type": "object", "description": "Partial: only the fields given change; "
                         "`null` is refused.", "properties": {"username": USERNAME, "email": EMAIL}}

TAGS_OUT = {"type": "array", "items": {"type": "string"},
            "description": "Stored trimmed, lower case, sorted, without repeats."}
link_props = {
    "id": {"type": "integer", "format": "int64", "minimum": 1},
    "user_id": {"type": ["integer", "null"], "format": "int64"},
    "short_code": {"type": "string"},
    "short_url": {"type": "string", "description": "BASE_URL + \"/\" + short_code"},
    "original_url": {"type": "string"},
    "title": {"type": ["string", "null"]},
    "is_active": {"type": "boolean"},
    "redirect_type": {"type": "integer", "enum": [301, 302, 307, 308]},
    "max_visits": {"type": ["integer", "null"], "minimum": 1, "maximum": 2147483647},
    "visits": {"type": "integer", "minimum": 0, "description": "clicks stored for the link"},
    "has_password": {"type": "boolean"},
    "imported_clicks": {"type": "integer", "minimum": 0},
    "tags": TAGS_OUT,
    "created_at": R("Timestamp"),
    "updated_at": R("Timestamp"),
    "expires_at": {**R("Timestamp"), "description": "present only when set"},
}
schemas["Link"] = {"type": "object",
                   "required": [k for k in link_props if k != "expires_at"],
                   "properties": link_props, "additionalProperties": True}

ORIGINAL_URL = {"type": "string", "minLength": 1, "maxLength": 2047, "pattern": URL_PATTERN,
                "description": "An absolute http(s) URL, at most 2048 bytes as given and once normalised (a bare host gains a `/`; characters outside URLs are percent-encoded), without credentials, "
                               "control characters or empty host labels. Refused (400) too: "
                               "loopback/private/link-local addresses and `localhost`, the "
                               "service's own host (BASE_URL) and configured deny-listed hosts. "
                               "The pattern describes a safe subset of what is accepted."}
TITLE = {"type": ["string", "null"], "maxLength": 512, "pattern": NONBLANK,
         "description": "At most 512 characters, not blank."}
EXPIRES = {"type": ["string", "null"], "pattern": FUTURE_TS,
           "description": "ISO 8601 (zone-less is UTC; `Z`/offset and a bare date are accepted), "
                          "and in the future (400 otherwise). `null`: no expiry."}
REDIRECT = {"type": "integer", "enum": [301, 302, 307, 308],
            "description": "The redirect status; 302 by default. `null` is refused."}
MAX_VISITS = {"type": ["integer", "null"], "minimum": 1, "maximum": 2147483647,
              "description": "Counted visits after which the link answers 410; `null`: no limit."}
LINK_PASSWORD = {"type": ["string", "null"], "writeOnly": True, "minLength": 1, "maxLength": 128,
                 "pattern": NONBLANK,
                 "description": "Puts the link behind a password (never returned; see "
                                "`has_password`). `null` removes it (in a PUT)."}
TAGS_IN = {"type": ["array", "null"], "maxItems": 20,
           "items": {"type": "string", "pattern": TAG_PATTERN,
                     "description": "1-32 letters, digits, spaces, `-`, `_` or `.` once trimmed"},
           "description": "At most 20 distinct tags once normalised; `null` is no tags. "
                          "Letters beyond ASCII are accepted too."}
SHORT_CODE = {"type": "string", "pattern": CODE_PATTERN,
              "not": {"enum": RESERVED},
              "description": "3-64 characters of A-Z, a-z, 0-9, `_`, `-`; not a reserved word "
                             "(compared case-insensitively). Taken: 409."}
schemas["NewLink"] = {
    "type": "object", "required": ["user_id", "original_url"],
    "description": "`user_id` is required in `open` auth mode; in `required` mode it defaults to "
                   "the caller (another user's id is for admins).",
    "properties": {
        "user_id": {"type": "integer", "format": "int64", "minimum": 1},
        "original_url": ORIGINAL_URL,
        "title": TITLE,
        "short_code": {**SHORT_CODE, "type": ["string", "null"]},
        "expires_at": EXPIRES,
        "redirect_type": REDIRECT,
        "max_visits": MAX_VISITS,
        "password": LINK_PASSWORD,
        "tags": TAGS_IN,
    },
}
schemas["LinkUpdate"] = {
    "type": "object",
    "description": "Partial: only the fields given change (one `updated` event per changed "
                   "field); no real change answers 200 with the link unchanged.",
    "properties": {
        "title": TITLE,
        "is_active": {"type": "boolean", "description": "`null` is refused"},
        "original_url": {**ORIGINAL_URL, "description": "`null` is refused. " + ORIGINAL_URL["description"]},
        "expires_at": EXPIRES,
        "redirect_type": REDIRECT,
        "max_visits": MAX_VISITS,
        "password": LINK_PASSWORD,
        "tags": TAGS_IN,
    },
}
schemas["TagCount"] = {"type": "object", "required": ["tag", "links"],
                       "properties": {"tag": {"type": "string"},
                                      "links": {"type": "integer", "minimum": 0}},
                       "additionalProperties": True}

EVENT_TYPES = ["created", "updated", "deleted", "click"]
schemas["Event"] = {
    "type": "object", "required": ["id", "url_id", "user_id", "event_type", "timestamp", "details"],
    "properties": {
        "id": {"type": "integer", "format": "int64", "minimum": 1},
        "url_id": {"type": "integer", "format": "int64"},
        "user_id": {"type": ["integer", "null"], "format": "int64"},
        "event_type": {"type": "string", "enum": EVENT_TYPES},
        "timestamp": R("Timestamp"),
        "details": {"type": "object", "additionalProperties": True},
    },
    "additionalProperties": True,
}
schemas["NewEvent"] = {
    "type": "object", "required": ["url_id", "event_type"],
    "properties": {
        "url_id": {"type": "integer", "format": "int64", "minimum": 1},
        "user_id": {"type": ["integer", "null"], "format": "int64", "minimum": 1},
        "event_type": {"type": "string", "enum": EVENT_TYPES},
        "details": {"type": ["object", "null"], "additionalProperties": True,
                    "description": "A JSON object (no key or string may hold NUL) of at most 64 values and "
                                   "8 objects, nested ones counted, and 8 KiB as JSON text; default `{}`."},
    },
}


def breakdown(key):
    return {"type": "array", "maxItems": 10,
            "items": {"type": "object", "required": [key, "clicks"],
                      "properties": {key: {"type": ["string", "null"]},
                                     "clicks": {"type": "integer", "minimum": 0}},
                      "additionalProperties": True}}


DATE = {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
schemas["Stats"] = {
    "type": "object",
    "required": ["url_id", "clicks", "bots", "visitors", "include_bots", "from", "to", "last_click_at", "daily",
                 "top_referrers", "referrer_hosts", "browsers", "operating_systems", "devices",
                 "imported_clicks"],
    "properties": {
        "url_id": {"type": "integer", "format": "int64"},
        "clicks": {"type": "integer", "minimum": 0},
        "bots": {"type": "integer", "minimum": 0},
        "visitors": {"type": "integer", "minimum": 0,
                     "description": "Sum over the days of each day's unique visitors (bots excluded)."},
        "include_bots": {"type": "boolean"},
        "from": {"type": ["string", "null"], "pattern": DATE["pattern"]},
        "to": {"type": ["string", "null"], "pattern": DATE["pattern"]},
        "last_click_at": {"type": ["string", "null"], "pattern": TS_PATTERN},
        "daily": {"type": "array", "items": {
            "type": "object", "required": ["date", "clicks", "bots", "visitors"],
            "properties": {"date": {"type": "string", "pattern": DATE["pattern"]},
                           "clicks": {"type": "integer", "minimum": 0},
                           "bots": {"type": "integer", "minimum": 0},
                           "visitors": {"type": "integer", "minimum": 0}},
            "additionalProperties": True}},
        "top_referrers": breakdown("referrer"),
        "referrer_hosts": breakdown("host"),
        "browsers": breakdown("name"),
        "operating_systems": breakdown("name"),
        "devices": breakdown("name"),
        "imported_clicks": {"type": "integer", "minimum": 0},
    },
    "additionalProperties": True,
}
schemas["Health"] = {"type": "object", "required": ["status"],
                     "properties": {"status": {"const": "ok"}}, "additionalProperties": True}
schemas["Readiness"] = {
    "type": "object", "required": ["status", "db", "cache"],
    "properties": {"status": {"type": "string", "enum": ["ready", "degraded", "not_ready"]},
                   "db": {"type": "string", "enum": ["ok", "down"]},
                   "cache": {"type": "string", "enum": ["ok", "down"]}},
    "additionalProperties": True,
}
schemas["Session"] = {
    "type": "object", "required": ["token", "expires_at", "user"],
    "properties": {"token": {"type": "string"}, "expires_at": R("Timestamp"), "user": R("User")},
    "additionalProperties": True,
}
PASSWORD = {"type": "string", "writeOnly": True, "minLength": 8, "maxLength": 1024,
            "pattern": NONBLANK, "description": "8 to 1024 characters, not blank."}
schemas["Register"] = {"type": "object", "required": ["username", "email", "password"],
                       "properties": {"username": USERNAME, "email": EMAIL, "password": PASSWORD}}
ANY_TEXT = {"type": "string", "minLength": 1, "pattern": NONBLANK}
schemas["Login"] = {
    "type": "object", "required": ["password"],
    "description": "`email` or `username` (email wins when both are given) and the password.",
    "properties": {"email": ANY_TEXT, "username": ANY_TEXT,
                   "password": {**ANY_TEXT, "writeOnly": True}},
    "anyOf": [{"required": ["email"]}, {"required": ["username"]}],
}
schemas["PasswordChange"] = {
    "type": "object", "required": ["current_password", "new_password"],
    "properties": {"current_password": {**ANY_TEXT, "writeOnly": True}, "new_password": PASSWORD},
}
schemas["NewApiKey"] = {"type": "object", "required": ["name"],
                        "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 100,
                                                "pattern": NONBLANK}}}
key_props = {
    "id": {"type": "integer", "format": "int64", "minimum": 1},
    "name": {"type": "string"},
    "prefix": {"type": "string", "description": "the key's first characters, to recognise it"},
    "created_at": R("Timestamp"),
    "last_used_at": {"type": ["string", "null"], "pattern": TS_PATTERN},
}
schemas["ApiKey"] = {"type": "object", "required": list(key_props), "properties": key_props,
                     "additionalProperties": True}
schemas["ApiKeyCreated"] = {"allOf": [R("ApiKey"), {
    "type": "object", "required": ["key"],
    "properties": {"key": {"type": "string", "description": "the secret, shown only here"}}}]}
schemas["BulkCount"] = {"type": "object", "required": ["count"],
                        "properties": {"count": {"type": "integer", "minimum": 0}},
                        "additionalProperties": True}
schemas["UrlsBulkCount"] = {
    "type": "object", "required": ["count", "needs_password"],
    "properties": {"count": {"type": "integer", "minimum": 0},
                   "needs_password": {"type": "array", "items": {"type": "string"},
                                      "description": "the codes of rows marked `has_password` "
                                                     "imported switched off (a file holds no "
                                                     "password)"}},
    "additionalProperties": True}
schemas["Upload"] = {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "contentMediaType": "text/csv",
                            "description": "The CSV (or, for `kutt`, JSON) file."}},
}
schemas["ImportReport"] = {
    "type": "object", "required": ["format", "imported", "user_id"],
    "properties": {
        "format": {"type": "string", "enum": ["bitly", "yourls", "shlink", "kutt", "csv"]},
        "imported": {"type": "integer", "minimum": 0},
        "user_id": {"type": "integer", "format": "int64"},
        "mapped": {"type": "array", "items": {"type": "string", "enum": [
            "short_code", "title", "created_at", "clicks", "tags", "has_password", "is_active",
            "expires_at"]},
            "description": "absent for `csv`; `has_password`, `is_active`, `expires_at` when a "
                           "record was behind a password, banned or expiring (Kutt)"},
        "codes": {"type": "array", "description": "absent for `csv`", "items": {
            "type": "object", "required": ["record", "source_code", "short_code", "generated"],
            "properties": {"record": {"type": "integer"},
                           "source_code": {"type": ["string", "null"]},
                           "short_code": {"type": "string"},
                           "generated": {"type": "boolean"}},
            "additionalProperties": True}},
        "dropped_tags": {"type": "array", "description": "absent for `csv`; tags kurz does not take "
                         "(other characters than letters, digits, spaces, `-`, `_`, `.`, or over "
                         "32), left out of their links; the first 1,000, each cut to 64 "
                         "characters", "items": {
            "type": "object", "required": ["record", "tag"],
            "properties": {"record": {"type": "integer"}, "tag": {"type": "string"}},
            "additionalProperties": True}},
        "dropped_tag_count": {"type": "integer", "minimum": 0,
                              "description": "absent for `csv`; every tag left out"},
        "needs_password": {"type": "array", "items": {"type": "string"},
                           "description": "the codes of rows marked `has_password` (Kutt: "
                                          "`password: true`), imported switched off (an export "
                                          "holds no password)"},
    },
    "additionalProperties": True,
}
schemas["Preview"] = {
    "type": "object",
    "required": ["short_code", "short_url", "original_url", "title", "clicks", "redirect_type",
                 "has_password"],
    "properties": {
        "short_code": {"type": "string"}, "short_url": {"type": "string"},
        "original_url": {"type": ["string", "null"], "description": "null behind a password"},
        "title": {"type": ["string", "null"]},
        "clicks": {"type": "integer", "minimum": 0},
        "redirect_type": {"type": "integer", "enum": [301, 302, 307, 308]},
        "has_password": {"type": "boolean"},
    },
    "additionalProperties": True,
}
schemas["LinkPassword"] = {"type": "object", "required": ["password"],
                           "properties": {"password": {"type": "string", "minLength": 1,
                                                       "writeOnly": True},
                                          "csrf": {"type": "string", "description":
                                                   "Form posts only: the form's token, equal to "
                                                   "the `csrf` cookie."}}}

# ---------------------------------------------------------------- headers
headers["X-Request-Id"] = {"description": "The request's id (quote it when reporting a 500).",
                           "schema": {"type": "string"}}
headers["X-Total-Count"] = {"required": True, "description": "Rows matching, over all pages.",
                            "schema": {"type": "integer", "minimum": 0}}
headers["Link"] = {"description": "RFC 8288 `rel=\"next\"` / `rel=\"prev\"` page links, when there are neighbours.",
                   "schema": {"type": "string"}}
headers["Retry-After"] = {"required": True, "description": "Seconds to wait.",
                          "schema": {"type": "integer", "minimum": 0}}
headers["Allow"] = {"required": True, "description": "The methods the path accepts.",
                    "schema": {"type": "string"}}
headers["WWW-Authenticate"] = {"required": True, "schema": {"type": "string", "const": "Bearer"}}
headers["Location"] = {"required": True, "description": "The link's target (`original_url`).",
                       "schema": {"type": "string"}}
headers["ETag"] = {"required": True, "schema": {"type": "string"}}
headers["Cache-Control"] = {"schema": {"type": "string"}}
headers["Clicks-Pending"] = {"description": "Present when the read may miss recent clicks: how many "
                             "were still queued (`unknown` when Redis could not tell).",
                             "schema": {"type": "string"}}
headers["Idempotent-Replayed"] = {"description": "`true` when this is the earlier answer of the same "
                                  "Idempotency-Key.", "schema": {"type": "string", "const": "true"}}


def with_std_headers(h=None):
    out = {"X-Request-Id": H("X-Request-Id")}
    out.update(h or {})
    return out


def json_content(schema):
    return {"application/json": {"schema": schema}}


def err(desc, schema=None, extra_headers=None):
    return {"description": desc, "headers": with_std_headers(extra_headers),
            "content": json_content(schema or R("Error"))}


responses["BadRequest"] = err("Malformed request (`bad_request`) or invalid fields "
                              "(`validation_error`, with `details`).", R("BadRequestError"))
responses["Unauthorized"] = err("`unauthorized`: a token is needed, or the one sent is invalid, "
                                "expired or revoked (in either auth mode).",
                                error_with("unauthorized"), {"WWW-Authenticate": H("WWW-Authenticate")})
responses["Forbidden"] = err("`forbidden` (auth mode `required`): another user's data, or admins only.",
                             error_with("forbidden"))
responses["NotFound"] = err("`not_found`: the resource in the path, or one the body references.",
                            error_with("not_found"))
responses["MethodNotAllowed"] = err("`method_not_allowed`; `Allow` lists the path's methods.",
                                    error_with("method_not_allowed"), {"Allow": H("Allow")})
responses["Conflict"] = err("`conflict`.", error_with("conflict"))
responses["Gone"] = err("`gone`: the link expired or its `max_visits` are used up.", error_with("gone"))
responses["PayloadTooLarge"] = err("`payload_too_large`: over the body limit (1 MiB JSON, 32 MiB uploads "
                                   "by default).", error_with("payload_too_large"))
responses["UnsupportedMediaType"] = err("`unsupported_media_type`.", error_with("unsupported_media_type"))
responses["TooManyRequests"] = err("`rate_limited`: too many failures; wait `Retry-After` seconds.",
                                   error_with("rate_limited"), {"Retry-After": H("Retry-After")})
responses["UploadUnderWay"] = err("`rate_limited`: an upload from this address is under way (one at a "
                                  "time); retry after `Retry-After` seconds.",
                                  error_with("rate_limited"), {"Retry-After": H("Retry-After")})
responses["ServiceUnavailable"] = err("`service_unavailable`: PostgreSQL (or, for sessions, Redis) is "
                                      "down or saturated, the request ran past its deadline, or (a "
                                      "create) no free generated short code was found.",
                                      error_with("service_unavailable"), {"Retry-After": H("Retry-After")})

# ---------------------------------------------------------------- parameters
INT64_MAX = 9223372036854775807
params["Page"] = {"name": "page", "in": "query", "required": False,
                  "description": "Page number, from 1 (with `per_page`, default 50). The API takes any "
                                 "page for which page × per_page fits in 64 bits (400 beyond); the "
                                 "maximum here is the bound that holds for every `per_page`.",
                  "schema": {"type": "integer", "minimum": 1, "maximum": INT64_MAX // 1000}}
params["PerPage"] = {"name": "per_page", "in": "query", "required": False,
                     "description": "Rows per page, 1 to 1000. With neither `page` nor `per_page`, "
                                    "every row up to `limits.list_limit` (default 10000).",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
ID_SCHEMA = {"type": "integer", "format": "int64", "minimum": 1, "maximum": INT64_MAX}
params["AfterId"] = {"name": "after_id", "in": "query", "required": False,
                     "description": "Instead of `page`: the rows with an id above this one (0: from the "
                                    "start), `per_page` of them (default 50). Rows deleted between two "
                                    "such pages shift nothing; a row committed after a page holding a "
                                    "higher id was read is behind the cursor. `X-Total-Count` then counts "
                                    "the rows after it; `Link` has `rel=\"next\"` only, after the "
                                    "page's last id. With `page`: 400.",
                     "schema": {"type": "integer", "format": "int64", "minimum": 0, "maximum": INT64_MAX}}
params["UserIdPath"] = {"name": "id", "in": "path", "required": True, "schema": ID_SCHEMA,
                        "description": "A user id (a non-numeric id answers 404)."}
params["UrlIdPath"] = {"name": "id", "in": "path", "required": True, "schema": ID_SCHEMA,
                       "description": "A link id (a non-numeric id answers 404)."}
params["KeyIdPath"] = {"name": "id", "in": "path", "required": True, "schema": ID_SCHEMA,
                       "description": "An API key id."}
params["CodePath"] = {"name": "code", "in": "path", "required": True,
                      "description": "A short code (anything else answers 404).",
                      "schema": {"type": "string", "pattern": CODE_PATTERN}}
params["UserIdFilter"] = {"name": "user_id", "in": "query", "required": False,
                          "description": "Only this user's; absent: no filter, empty: 400.", "schema": ID_SCHEMA}
params["UrlIdFilter"] = {"name": "url_id", "in": "query", "required": False,
                         "description": "Only this link's; absent: no filter, empty: 400.", "schema": ID_SCHEMA}
params["IsActiveFilter"] = {"name": "is_active", "in": "query", "required": False,
                            "description": "`true`/`false` (also `1`/`0`, any case); absent: no filter, empty: 400.",
                            "schema": {"type": "boolean"}}
params["TagFilter"] = {"name": "tag", "in": "query", "required": False, "style": "form", "explode": True,
                       "description": "Repeatable: links carrying every tag given (normalised like tags); "
                                      "more than 20 (what a link carries at most): 400.",
                       "schema": {"type": "array", "maxItems": 20,
                                  "items": {"type": "string", "pattern": TAG_PATTERN}}}
params["EventTypeFilter"] = {"name": "event_type", "in": "query", "required": False,
                             "schema": {"type": "string", "enum": EVENT_TYPES}}
params["QrFormat"] = {"name": "format", "in": "query", "required": False,
                      "schema": {"type": "string", "enum": ["svg", "png"], "default": "svg"}}
params["QrSize"] = {"name": "size", "in": "query", "required": False,
                    "description": "Side in pixels (a PNG may come out a little smaller to keep modules whole).",
                    "schema": {"type": "integer", "minimum": 64, "maximum": 2048, "default": 256}}
params["IfNoneMatch"] = {"name": "If-None-Match", "in": "header", "required": False,
                         "description": "An ETag of this image (or `*`): 304 when it matches.",
                         "schema": {"type": "string"}}
params["IdempotencyKey"] = {"name": "Idempotency-Key", "in": "header", "required": False,
                            "description": "1-255 visible ASCII characters: a retried POST with the same "
                                           "key and body answers the first result (24 h); the same key "
                                           "with another body is 409.",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                                       "pattern": "^[!-~]+$"}}

# ---------------------------------------------------------------- operations
paths = {}
OPEN_OR_BEARER = [{}, {"bearerAuth": []}]
BEARER = [{"bearerAuth": []}]


def op(op_id, summary, tags, responses_, *, params_=None, body=None, security=None,
       description=None):
    o = {"operationId": op_id, "summary": summary, "tags": tags}
    if description:
        o["description"] = description
    if params_:
        o["parameters"] = params_
    if body:
        o["requestBody"] = body
    if security is not None:
        o["security"] = security
    o["responses"] = responses_
    return o


def ok(desc, schema, status_headers=None, media="application/json"):
    return {"description": desc, "headers": with_std_headers(status_headers),
            "content": {media: {"schema": schema}}}


def no_content(desc="Done."):
    return {"description": desc, "headers": with_std_headers()}


def json_body(schema, required=True):
    return {"required": required, "content": json_content(schema)}


def upload_body():
    return {"required": True, "content": {"multipart/form-data": {
        "schema": R("Upload"), "encoding": {"file": {"contentType": "text/csv, application/json, application/octet-stream"}}}}}


LIST_HEADERS = {"X-Total-Count": H("X-Total-Count"), "Link": H("Link")}
STD = {"503": RESP("ServiceUnavailable")}
WITH_CALLER = {"401": RESP("Unauthorized"), "403": RESP("Forbidden"), **STD}
JSON_BODY_ERRS = {"400": RESP("BadRequest"), "413": RESP("PayloadTooLarge")}


def list_of(schema):
    return {"type": "array", "items": schema}


# This document
paths["/openapi.json"] = {"get": op(
    "openapi", "This OpenAPI 3.1 document.", ["health"],
    {"200": ok("The document.", {"type": "object", "required": ["openapi", "paths"],
                                 "properties": {"openapi": {"const": "3.1.0"}},
                                 "additionalProperties": True})},
    security=[{}])}

# Health
paths["/health"] = {"get": op("health", "Liveness: the process answers (no dependency checked).",
                              ["health"], {"200": ok("Alive.", R("Health"))}, security=[{}])}
paths["/health/live"] = {"get": op("healthLive", "Liveness (same as /health).", ["health"],
                                   {"200": ok("Alive.", R("Health"))}, security=[{}])}
for path, oid in [("/ready", "ready"), ("/health/ready", "healthReady")]:
    paths[path] = {"get": op(oid, "Readiness: PostgreSQL required, Redis only degrades.", ["health"], {
        "200": ok("Ready (`ready`), or `degraded` with `cache: down` when Redis is down.", R("Readiness")),
        "503": ok("PostgreSQL is down: `not_ready`; ask again after `Retry-After` seconds.", R("Readiness"),
                  {"Retry-After": H("Retry-After")}),
    }, security=[{}])}

# Users
user_links = {
    "GetUser": {"operationId": "getUser", "parameters": {"id": "$response.body#/id"}},
    "UpdateUser": {"operationId": "updateUser", "parameters": {"id": "$response.body#/id"}},
    "DeleteUser": {"operationId": "deleteUser", "parameters": {"id": "$response.body#/id"}},
    "ListUserUrls": {"operationId": "listUserUrls", "parameters": {"id": "$response.body#/id"}},
}
created_user = ok("Created.", R("User"))
created_user["links"] = user_links
paths["/users"] = {
    "post": op("createUser", "Create a user (admins only in `required` mode).", ["users"], {
        "201": created_user, **JSON_BODY_ERRS, "409": RESP("Conflict"), **WITH_CALLER},
        body=json_body(R("NewUser"))),
    "get": op("listUsers", "List users, by id (admins only in `required` mode).", ["users"], {
        "200": ok("The users.", list_of(R("User")), LIST_HEADERS), "400": RESP("BadRequest"),
        **WITH_CALLER}, params_=[P("Page"), P("PerPage"), P("AfterId")]),
}
paths["/users/bulk"] = {"post": op(
    "bulkUsers", "Import users from CSV (all or nothing; admins only in `required` mode).", ["users", "bulk"], {
        "201": ok("Imported.", R("BulkCount")), "400": RESP("BadRequest"),
        "409": RESP("Conflict"), "413": RESP("PayloadTooLarge"), "415": RESP("UnsupportedMediaType"),
        "429": RESP("UploadUnderWay"), **WITH_CALLER},
    body=upload_body(),
    description="CSV header `id,username,email,created_at` (`id`, `created_at` optional). Rows with an "
                "`id` are upserted by id. A bad row: 400 naming `row`, `line`, `column`.")}
paths["/users/{id}"] = {
    "parameters": [P("UserIdPath")],
    "get": op("getUser", "Get a user.", ["users"], {
        "200": ok("The user.", R("User")), "404": RESP("NotFound"), **WITH_CALLER}),
    "put": op("updateUser", "Update a user (partial).", ["users"], {
        "200": ok("The updated user.", R("User")), **JSON_BODY_ERRS, "404": RESP("NotFound"),
        "409": RESP("Conflict"), **WITH_CALLER}, body=json_body(R("UserUpdate"))),
    "delete": op("deleteUser", "Delete a user (soft; their links stay).", ["users"], {
        "204": no_content("Deleted."), "404": RESP("NotFound"), **WITH_CALLER}),
}
paths["/users/{id}/urls"] = {"parameters": [P("UserIdPath")], "get": op(
    "listUserUrls", "List a user's live links.", ["users", "urls"], {
        "200": ok("The links.", list_of(R("Link")), LIST_HEADERS), "400": RESP("BadRequest"),
        "404": RESP("NotFound"), **WITH_CALLER}, params_=[P("Page"), P("PerPage"), P("AfterId"), P("IsActiveFilter"), P("TagFilter")])}

# URLs
url_links = {
    "GetUrl": {"operationId": "getUrl", "parameters": {"id": "$response.body#/id"}},
    "GetLinkAlias": {"operationId": "getLink", "parameters": {"id": "$response.body#/id"}},
    "UpdateUrl": {"operationId": "updateUrl", "parameters": {"id": "$response.body#/id"}},
    "DeleteUrl": {"operationId": "deleteUrl", "parameters": {"id": "$response.body#/id"}},
    "UrlStats": {"operationId": "getUrlStats", "parameters": {"id": "$response.body#/id"}},
    "UrlQr": {"operationId": "getUrlQr", "parameters": {"id": "$response.body#/id"}},
    "Redirect": {"operationId": "redirect", "parameters": {"code": "$response.body#/short_code"}},
    "Preview": {"operationId": "preview", "parameters": {"code": "$response.body#/short_code"}},
    "CodeQr": {"operationId": "getCodeQr", "parameters": {"code": "$response.body#/short_code"}},
    "RedirectHead": {"operationId": "redirectHead", "parameters": {"code": "$response.body#/short_code"}},
}


def create_link_op(op_id, summary):
    created = ok("Created, `is_active: true`.", R("Link"),
                 {"Idempotent-Replayed": H("Idempotent-Replayed")})
    created["links"] = url_links
    return op(op_id, summary, ["urls"], {
        "201": created, **JSON_BODY_ERRS, "404": RESP("NotFound"),
        "409": err("`conflict`: custom `short_code` taken, or `Idempotency-Key` reused with another body.",
                   error_with("conflict")), **WITH_CALLER},
        params_=[P("IdempotencyKey")], body=json_body(R("NewLink")),
        description="Unknown `user_id`: 404. Posting the same `original_url` twice makes two links.")


paths["/urls"] = {
    "post": create_link_op("createUrl", "Create a short link."),
    "get": op("listUrls", "List live links, by id.", ["urls"], {
        "200": ok("The links.", list_of(R("Link")), LIST_HEADERS), "400": RESP("BadRequest"),
        **WITH_CALLER}, params_=[P("Page"), P("PerPage"), P("AfterId"), P("UserIdFilter"),
                                 P("IsActiveFilter"), P("TagFilter")]),
}
paths["/links/create"] = {"post": create_link_op("createLink", "Create a short link (alias of POST /urls).")}
paths["/urls/bulk"] = {"post": op(
    "bulkUrls", "Import links from the seed CSV (all or nothing; admins only in `required` mode).",
    ["urls", "bulk"], {
        "201": ok("Imported.", R("UrlsBulkCount")), "400": RESP("BadRequest"), "404": RESP("NotFound"),
        "409": RESP("Conflict"), "413": RESP("PayloadTooLarge"), "415": RESP("UnsupportedMediaType"),
        "429": RESP("UploadUnderWay"), **WITH_CALLER}, body=upload_body(),
    description="Columns `id,user_id,short_code,original_url,title,is_active,created_at,updated_at` "
                "(`is_active` `True`/`False`), optionally `expires_at`, `redirect_type`, `max_visits`, "
                "`imported_clicks`, `tags` (`;`-separated), `has_password` (`True`: the row comes in "
                "switched off unless it updates a link with a password stored).")}
paths["/urls/import"] = {"post": op(
    "importUrls", "Import another shortener's export (or kurz's own CSV) as a user's links.",
    ["urls", "bulk"], {
        "201": ok("Imported.", R("ImportReport")), "400": RESP("BadRequest"),
        "404": RESP("NotFound"), "409": err("`conflict`: a code is already taken; nothing imported.",
                                            error_with("conflict")),
        "413": RESP("PayloadTooLarge"), "415": RESP("UnsupportedMediaType"),
        "429": RESP("UploadUnderWay"), **WITH_CALLER},
    params_=[{"name": "format", "in": "query", "required": True,
              "schema": {"type": "string", "enum": ["bitly", "yourls", "shlink", "kutt", "csv"]}},
             {"name": "user_id", "in": "query", "required": False, "schema": ID_SCHEMA,
              "description": "The owner (required in `open` mode; in `required` mode the caller by default)."}],
    body=upload_body())}
paths["/urls/export"] = {"get": op(
    "exportUrls", "Export live links as CSV (the columns POST /urls/bulk reads).", ["urls"], {
        "200": {"description": "The CSV.", "headers": with_std_headers({
            "Content-Disposition": {"schema": {"type": "string"}}}),
            "content": {"text/csv": {"schema": {"type": "string"}}}},
        "400": RESP("BadRequest"), **WITH_CALLER},
    params_=[{"name": "format", "in": "query", "required": False,
              "schema": {"type": "string", "enum": ["csv"], "default": "csv"}}, P("UserIdFilter"),
             {"name": "after_id", "in": "query", "required": False,
              "description": "Only links with an id above this one: where the file before ended.",
              "schema": {"type": "integer", "format": "int64", "minimum": 0, "maximum": INT64_MAX}},
             {"name": "limit", "in": "query", "required": False,
              "description": "At most this many links (an import takes 100,000 per file); a file "
                             "that holds this many may have more after its last id.",
              "schema": ID_SCHEMA}])}
paths["/urls/{id}"] = {
    "parameters": [P("UrlIdPath")],
    "get": op("getUrl", "Get a live link.", ["urls"], {
        "200": ok("The link.", R("Link")), "404": RESP("NotFound"), **WITH_CALLER}),
    "put": op("updateUrl", "Update a link (partial).", ["urls"], {
        "200": ok("The link, `updated_at` moved forward when something changed.", R("Link")),
        **JSON_BODY_ERRS, "404": RESP("NotFound"), **WITH_CALLER}, body=json_body(R("LinkUpdate"))),
    "delete": op("deleteUrl", "Delete a link (soft; stops redirecting at once).", ["urls"], {
        "204": no_content("Deleted; a `deleted` event was written."), "404": RESP("NotFound"),
        **WITH_CALLER}),
}
paths["/links/{id}"] = {"parameters": [P("UrlIdPath")], "get": op(
    "getLink", "Get a live link (alias of GET /urls/{id}).", ["urls"], {
        "200": ok("The link.", R("Link")), "404": RESP("NotFound"), **WITH_CALLER})}
paths["/urls/{id}/stats"] = {"parameters": [P("UrlIdPath")], "get": op(
    "getUrlStats", "Click statistics of a link.", ["urls"], {
        "200": ok("The statistics.", R("Stats"), {"X-Kurz-Clicks-Pending": H("Clicks-Pending")}),
        "400": RESP("BadRequest"), "404": RESP("NotFound"), **WITH_CALLER},
    params_=[{"name": "from", "in": "query", "required": False, "schema": DATE,
              "description": "First UTC day, inclusive (not after `to`)."},
             {"name": "to", "in": "query", "required": False, "schema": DATE,
              "description": "Last UTC day, inclusive."},
             {"name": "include_bots", "in": "query", "required": False, "schema": {"type": "boolean"},
              "description": "Count bots and link-preview fetchers in `clicks`."}])}

QR_OK = {"description": "The QR code of the link's short URL.",
         "headers": with_std_headers({"ETag": H("ETag"), "Cache-Control": H("Cache-Control")}),
         "content": {"image/svg+xml": {"schema": {"type": "string"}},
                     "image/png": {"schema": {"type": "string", "contentMediaType": "image/png"}}}}
QR_304 = {"description": "Not modified (If-None-Match matched).",
          "headers": with_std_headers({"ETag": H("ETag"), "Cache-Control": H("Cache-Control")})}
paths["/urls/{id}/qr"] = {"parameters": [P("UrlIdPath")], "get": op(
    "getUrlQr", "QR code of a link, by id (owner or admin).", ["urls", "qr"], {
        "200": QR_OK, "304": QR_304, "400": RESP("BadRequest"), "404": RESP("NotFound"), **WITH_CALLER},
    params_=[P("QrFormat"), P("QrSize"), P("IfNoneMatch")])}
paths["/tags"] = {"get": op("listTags", "Tags with their number of live links, paginated.", ["urls"], {
    "200": ok("Tags, by tag.", list_of(R("TagCount")), LIST_HEADERS), "400": RESP("BadRequest"),
    **WITH_CALLER}, params_=[P("Page"), P("PerPage")])}

# Events
paths["/events"] = {
    "get": op("listEvents", "List events in the order they were stored (by id; timestamps are not sorted).", ["events"], {
        "200": ok("The events.", list_of(R("Event")),
                  {**LIST_HEADERS, "X-Kurz-Clicks-Pending": H("Clicks-Pending")}),
        "400": RESP("BadRequest"), **WITH_CALLER},
        params_=[P("Page"), P("PerPage"), P("AfterId"), P("UrlIdFilter"), P("UserIdFilter"),
                 P("EventTypeFilter")]),
    "post": op("createEvent", "Record an event.", ["events"], {
        "201": ok("Created.", R("Event")), **JSON_BODY_ERRS,
        "404": RESP("NotFound"), **WITH_CALLER}, body=json_body(R("NewEvent")),
        description="Unknown `url_id` or `user_id`: 404."),
}
paths["/events/bulk"] = {"post": op(
    "bulkEvents", "Import events from the seed CSV (all or nothing; admins only in `required` mode).",
    ["events", "bulk"], {
        "201": ok("Imported.", R("BulkCount")), "400": RESP("BadRequest"), "404": RESP("NotFound"),
        "413": RESP("PayloadTooLarge"), "415": RESP("UnsupportedMediaType"),
        "429": RESP("UploadUnderWay"), **WITH_CALLER},
    body=upload_body(),
    description="Columns `id,url_id,user_id,event_type,timestamp,details` (`details` a JSON object as a string).")}

# Auth, under /auth and /api/auth
NO_STORE = {"Cache-Control": H("Cache-Control")}


# Another site's page could make a browser post these without a preflight (docs/security.md).
CROSS_SITE_FORM = err("`unsupported_media_type`: a browser's post from another site that is not "
                      "`application/json`; nothing is counted.", error_with("unsupported_media_type"))


def auth_ops(prefix, idp):
    def oid(name):
        return idp + name
    out = {}
    session_created = ok("Registered; a session for the new user.", R("Session"), NO_STORE)
    out[f"{prefix}/register"] = {"post": op(oid("Register"), "Register an account and start a session.",
        ["auth"], {"201": session_created, **JSON_BODY_ERRS, "409": RESP("Conflict"),
                   "415": CROSS_SITE_FORM, **STD},
        body=json_body(R("Register")), security=[{}])}
    out[f"{prefix}/login"] = {"post": op(oid("Login"), "Log in with email or username and password.",
        ["auth"], {"200": ok("A new session.", R("Session"), NO_STORE), **JSON_BODY_ERRS,
                   "401": err("`unauthorized`: wrong credentials (same answer whether the user exists).",
                              error_with("unauthorized"), {"WWW-Authenticate": H("WWW-Authenticate")}),
                   "415": CROSS_SITE_FORM, "429": RESP("TooManyRequests"), **STD},
        body=json_body(R("Login")), security=[{}])}
    out[f"{prefix}/logout"] = {"post": op(oid("Logout"), "Revoke the session of the token sent.", ["auth"], {
        "204": no_content("Revoked."),
        "400": err("`bad_request`: API keys are revoked with DELETE /auth/keys/{id}.", R("Error")),
        "401": RESP("Unauthorized"), **STD}, security=BEARER)}
    out[f"{prefix}/me"] = {"get": op(oid("Me"), "The caller's user, with `is_admin`.", ["auth"], {
        "200": ok("The caller.", R("Me"), NO_STORE), "401": RESP("Unauthorized"), **STD},
        security=BEARER)}
    out[f"{prefix}/password"] = {"put": op(oid("ChangePassword"),
        "Change the password; ends every other session.", ["auth"], {
            "200": ok("A fresh session.", R("Session"), NO_STORE), **JSON_BODY_ERRS,
            "401": RESP("Unauthorized"),
            "403": err("`forbidden`: current_password is wrong.", error_with("forbidden")),
            "409": err("`conflict`: another change of the password came first.",
                       error_with("conflict")),
            "429": RESP("TooManyRequests"), **STD},
        body=json_body(R("PasswordChange")), security=BEARER)}
    key_created = ok("Created; `key` is shown only here.", R("ApiKeyCreated"), NO_STORE)
    key_created["links"] = {"DeleteKey": {"operationId": oid("DeleteKey"),
                                          "parameters": {"id": "$response.body#/id"}}}
    out[f"{prefix}/keys"] = {
        "post": op(oid("CreateKey"), "Create an API key.", ["auth"], {
            "201": key_created, **JSON_BODY_ERRS, "401": RESP("Unauthorized"),
            "409": err("`conflict`: the user holds 100 live keys already; revoke one first.",
                       error_with("conflict")), **STD},
            body=json_body(R("NewApiKey")), security=BEARER),
        "get": op(oid("ListKeys"), "The caller's live API keys (without secrets).", ["auth"], {
            "200": ok("The keys.", list_of(R("ApiKey")), NO_STORE), "401": RESP("Unauthorized"), **STD},
            security=BEARER),
    }
    out[f"{prefix}/keys/{{id}}"] = {"parameters": [P("KeyIdPath")], "delete": op(
        oid("DeleteKey"), "Revoke an API key.", ["auth"], {
            "204": no_content("Revoked."), "401": RESP("Unauthorized"), "404": RESP("NotFound"), **STD},
        security=BEARER)}
    return out


paths.update(auth_ops("/auth", "auth"))
paths.update(auth_ops("/api/auth", "apiAuth"))

# Redirects
REDIRECT_HEADERS = {"Location": H("Location"), "Cache-Control": H("Cache-Control")}
HTML = {"text/html": {"schema": {"type": "string"}}}


def redirect_responses(head=False):
    out = {}
    for status, what in [("301", "Moved Permanently (redirect_type 301)"),
                         ("302", "Found (the default redirect_type)"),
                         ("307", "Temporary Redirect (redirect_type 307)"),
                         ("308", "Permanent Redirect (redirect_type 308)")]:
        out[status] = {"description": f"{what}: go to the target.", "headers": with_std_headers(REDIRECT_HEADERS)}
    form = {"description": "The link has a password: a small HTML form (no script, no-store, framing refused).",
            "headers": with_std_headers({"Cache-Control": H("Cache-Control")})}
    pw = {"description": "The link has a password and the client asked for JSON: `password_required`.",
          "headers": with_std_headers()}
    if not head:
        form["content"] = HTML
        pw["content"] = json_content(error_with("password_required"))
    out["200"] = form
    out["401"] = pw
    for status, name, desc in [("404", "NotFound", "Unknown, inactive or deleted code: `not_found`."),
                               ("410", "Gone", "Expired, or `max_visits` used up: `gone`."),
                               ("503", "ServiceUnavailable", None)]:
        if head:
            out[status] = {"description": desc or "Unavailable.", "headers": with_std_headers()}
        else:
            out[status] = RESP(name)
    return out


ACCEPT_NOTE = ("A client whose `Accept` header names `application/json` before `text/html` gets JSON "
               "answers where HTML would be sent (the password form becomes 401 `password_required`).")
paths["/{code}"] = {
    "parameters": [P("CodePath")],
    "get": op("redirect", "Follow a short link (one click is recorded).", ["redirect"],
              redirect_responses(), description=ACCEPT_NOTE, security=[{}]),
    "head": op("redirectHead", "Probe a short link: as GET, but no click is recorded.", ["redirect"],
               redirect_responses(head=True), description=ACCEPT_NOTE, security=[{}]),
    "post": op("unlock", "Unlock a password-protected link: 303 to its target, one click.", ["redirect"], {
        "303": {"description": "The password is right: See Other, whatever the link's redirect_type.",
                "headers": with_std_headers(REDIRECT_HEADERS)},
        "400": err("No or an empty password, or a body that is not a JSON object.", R("BadRequestError")),
        "401": {"description": "Wrong password: the form again with a notice (HTML), or `password_required` (JSON).",
                "headers": with_std_headers(),
                "content": {**HTML, **json_content(error_with("password_required"))}},
        "403": {"description": "A form post (`application/x-www-form-urlencoded`) without the `csrf` field "
                               "equal to its `csrf` cookie, as the form kurz serves carries them: the form "
                               "again (HTML), or `forbidden` (JSON). Not checked, not counted. JSON posts "
                               "need no token.",
                "headers": with_std_headers(),
                "content": {**HTML, **json_content(error_with("forbidden"))}},
        "404": RESP("NotFound"),
        "405": err("The link has no password: `method_not_allowed`, `Allow: GET,HEAD`.",
                   error_with("method_not_allowed"), {"Allow": H("Allow")}),
        "410": RESP("Gone"), "413": RESP("PayloadTooLarge"), "415": RESP("UnsupportedMediaType"),
        "429": {"description": "Too many wrong passwords: the form again saying how long to wait "
                               "(HTML), or `rate_limited` (JSON); wait `Retry-After` seconds.",
                "headers": with_std_headers({"Retry-After": H("Retry-After")}),
                "content": {**HTML, **json_content(error_with("rate_limited"))}},
        **STD},
        security=[{}],
        body={"required": True, "content": {
            "application/x-www-form-urlencoded": {"schema": R("LinkPassword")},
            "application/json": {"schema": R("LinkPassword")}}}),
}
paths["/{code}+"] = {
    "parameters": [P("CodePath")],
    "get": op("preview", "Preview where a short link leads (no redirect, no click).", ["redirect"], {
        "200": {"description": "The preview: HTML, or JSON when asked for `application/json` first.",
                "headers": with_std_headers({"Cache-Control": H("Cache-Control")}),
                "content": {**HTML, **json_content(R("Preview"))}},
        "404": RESP("NotFound"), "410": RESP("Gone"), **STD},
        description=ACCEPT_NOTE, security=[{}]),
    "post": op("previewPost", "Not supported: always 404 (the route is shared with POST /{code}, so a 405 on "
               "/{code}+ lists POST in `Allow`).", ["redirect"], {"404": RESP("NotFound")}, security=[{}]),
}
paths["/{code}/qr"] = {"parameters": [P("CodePath")], "get": op(
    "getCodeQr", "QR code of a short link, by code (anyone; only for a link that redirects).",
    ["redirect", "qr"], {
        "200": QR_OK, "304": QR_304, "400": RESP("BadRequest"), "404": RESP("NotFound"),
        "410": RESP("Gone"), **STD},
    params_=[P("QrFormat"), P("QrSize"), P("IfNoneMatch")], security=[{}])}

doc = {
    "openapi": "3.1.0",
    "info": {
        "title": "kurz URL shortener API",
        "version": "1.0.0",
        "summary": "The public HTTP contract of kurz-api (docs/API.md).",
        "description": (
            "JSON in and out. Timestamps are UTC, ISO 8601 to the second, without zone suffix. Lists are "
            "bare arrays ordered by id, with `X-Total-Count` and an RFC 8288 `Link` header. Every error "
            "body is `{\"error\", \"message\", \"details\"}`. Every response carries `X-Request-Id` and "
            "`X-Content-Type-Options: nosniff`; `/auth/*` answers carry `Cache-Control: no-store`.\n\n"
            "Request bodies: a JSON object (the Content-Type is not required); unknown keys are ignored; "
            "no key or string may contain NUL (400 naming the field). A request unanswered after "
            "`limits.request_timeout_ms` gets 503.\n\n"
            "Auth: in `auth.mode: open` (the evaluation contract) no token is needed; in `required` "
            "(the production default) writes need `Authorization: Bearer <session token or API key>` "
            "and act as its user, other users' data answers 403, admin-only operations 403. A bad, "
            "expired or revoked token is 401 in either mode. Any GET route also answers HEAD."),
        "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
    },
    "servers": [{"url": "http://127.0.0.1:8000", "description": "an API upstream (or the edge)"}],
    "security": OPEN_OR_BEARER,
    "tags": [{"name": n} for n in ["health", "users", "urls", "events", "bulk", "qr", "auth", "redirect"]],
    "paths": paths,
    "components": {
        "schemas": schemas, "parameters": params, "headers": headers, "responses": responses,
        "securitySchemes": {"bearerAuth": {
            "type": "http", "scheme": "bearer",
            "description": "A session token (POST /auth/login or /auth/register) or an API key "
                           "(POST /auth/keys)."}},
    },
}
json.dump(doc, sys.stdout, indent=2, ensure_ascii=False)
sys.stdout.write("\n")
