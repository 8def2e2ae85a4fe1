#!/usr/bin/env bash
# Checks a running kurz-api against the OpenAPI document with Schemathesis (v4): every operation,
# no 5xx, every response conforming to the document. `deploy/dev test` runs it against an API of
# its own (see fuzz_api there).
#
#   api/openapi/check.sh BASE_URL SPEC     e.g. check.sh http://127.0.0.1:8000 api/openapi/openapi.json
#
# The API must run with KURZ_AUTH_MODE=open on a database it may fill (the run creates users,
# links, events and one account). Exits non-zero on any failure not listed in the baseline below.
# SCHEMATHESIS names the binary (default: schemathesis on PATH; tested with 4.32.5);
# MAX_EXAMPLES the test cases per operation (default 25); SEED the generator's seed (default
# fixed, so a CI run is reproducible: set another to explore). Needs curl and python3.
set -euo pipefail
BASE=${1:?usage: check.sh BASE_URL SPEC}
SPEC=${2:?usage: check.sh BASE_URL SPEC}
ST=${SCHEMATHESIS:-schemathesis}
SPEC=$(realpath "$SPEC")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# Schemathesis and Hypothesis keep their state in the working directory: not in the checkout.
cd "$WORK"

post() { curl -fsS -X POST "$BASE$1" -H 'Content-Type: application/json' -d "$2"; }
field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
tag="st$(date +%s)$RANDOM"

# A password-protected link, so that POST /{code} (unlock) meets one: random passwords get 401,
# then 429 once the lockout's free failures are used; malformed bodies 400/415.
owner=$(post /users "{\"username\":\"${tag}o\",\"email\":\"${tag}o@example.com\"}" | field id)
post /urls "{\"user_id\":$owner,\"original_url\":\"https://example.com/$tag\",\"short_code\":\"${tag}pw\",\"password\":\"open sesame\"}" >/dev/null

# No automatic sign-up: run 1 is anonymous (the open-mode contract), run 2 brings its own token.
# No inferred links between operations: the explicit OpenAPI links say which responses feed which
# requests (inference pairs /auth/keys with /api/auth/keys, and a key deleted through one alias
# is then rightly 404 through the other).
cat >"$WORK/schemathesis.toml" <<EOF
[auth]
auto-signup = false

[phases.stateful.inference]
algorithms = []

[[operations]]
include-operation-id = "unlock"
parameters = { code = "${tag}pw" }
EOF

# Accepted failures: what JSON Schema cannot say, not API bugs.
#  - bulk uploads / imports: whether a file imports depends on its CSV (or JSON) content, which
#    the document can only describe as a binary `file`, so random files are rightly refused (400);
#  - stats: `from` must not be after `to` (a constraint between two parameters);
#  - events: `details` holds at most 64 values and 8 objects counting nested ones, which JSON
#    Schema cannot count (`maxProperties` sees one level);
#  - lists: `page` is accepted while page x per_page fits in 64 bits, so its upper bound depends
#    on `per_page`; the document states the bound that holds for every `per_page`, and the API
#    accepts a little more; and `page` and `after_id` each pick the page, so both at once is a
#    400 (another constraint between two parameters).
cat >"$WORK/baseline.json" <<'EOF'
{
  "format_version": 1,
  "entries": [
    {"operation": "POST /users/bulk", "check": "positive_data_acceptance", "failure": "RejectedPositiveData", "signature": "400", "reason": "CSV content"},
    {"operation": "POST /urls/bulk", "check": "positive_data_acceptance", "failure": "RejectedPositiveData", "signature": "400", "reason": "CSV content"},
    {"operation": "POST /events/bulk", "check": "positive_data_acceptance", "failure": "RejectedPositiveData", "signature": "400", "reason": "CSV content"},
    {"operation": "POST /urls/import", "check": "positive_data_acceptance", "failure": "RejectedPositiveData", "signature": "400", "reason": "export file content"},
    {"operation": "GET /urls/{id}/stats", "check": "positive_data_acceptance", "failure": "RejectedPositiveData", "signature": "400", "reason": "from after to"},
    {"operation": "GET /users", "check": "negative_data_rejection", "failure": "AcceptedNegativeData", "signature": "200", "reason": "page bound depends on per_page"},
    {"operation": "GET /urls", "check": "negative_data_rejection", "failure": "AcceptedNegativeData", "signature": "200", "reason": "page bound depends on per_page"},
    {"operation": "GET /events", "check": "negative_data_rejection", "failure": "AcceptedNegativeData", "signature": "200", "reason": "page bound depends on per_page"},
    {"operation": "GET /users/{id}/urls", "check": "negative_data_rejection", "failure": "AcceptedNegativeData", "signature": "200", "reason": "page bound depends on per_page"},
    {"operation": "GET /tags", "check": "negative_data_rejection", "failure": "AcceptedNegativeData", "signature": "200", "reason": "page bound depends on per_page"},
    {"operation": "GET /users", "check": "positive_data_acceptance", "failure": "RejectedPositiveData", "signature": "400", "reason": "page with after_id"},
    {"operation": "GET /urls", "check": "positive_data_acceptance", "failure": "RejectedPositiveData", "signature": "400", "reason": "page with after_id"},
    {"operation": "GET /events", "check": "positive_data_acceptance", "failure": "RejectedPositiveData", "signature": "400", "reason": "page with after_id"},
    {"operation": "GET /users/{id}/urls", "check": "positive_data_acceptance", "failure": "RejectedPositiveData", "signature": "400", "reason": "page with after_id"},
    {"operation": "POST /events", "check": "positive_data_acceptance", "failure": "RejectedPositiveData", "signature": "400", "reason": "details bounded in values and objects, nested ones counted"}
  ]
}
EOF

COMMON=(--config-file "$WORK/schemathesis.toml")
RUN=(--url "$BASE" --checks all --max-examples "${MAX_EXAMPLES:-25}" --workers 1 --seed "${SEED:-20261202}"
     --generation-allow-x00 false --no-color --baseline "$WORK/baseline.json")
status=0

# Run 1: every operation, without a token (no generated Authorization headers either).
"$ST" "${COMMON[@]}" run "$SPEC" "${RUN[@]}" --generation-with-security-parameters false || status=$?

# Run 2: the operations that need a token, with a session of an account registered here. Logout
# and password change are left out: they would revoke the session the run itself uses (run 1
# covers their 401 answers).
TOKEN=$(post /auth/register "{\"username\":\"$tag\",\"email\":\"$tag@example.com\",\"password\":\"$tag-secret\"}" | field token)
"$ST" "${COMMON[@]}" run "$SPEC" "${RUN[@]}" -H "Authorization: Bearer $TOKEN" \
  --include-operation-id-regex '^(auth|apiAuth)(Me|CreateKey|ListKeys|DeleteKey)$' || status=$?
exit "$status"
