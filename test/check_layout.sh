#!/usr/bin/env bash
# Checks the source layout doc/layout.md describes; run by test/run-tests.sh
# (no PostgreSQL needed).  Fails if:
#  - json-c's include-order workaround, or json-c itself, is included
#    anywhere but src/prelude.h;
#  - a file that includes prelude.h, or a header that does, includes another
#    header before it (other than postgres.h);
#  - a file that defines SQL entry points (PG_FUNCTION_INFO_V1) defines one
#    of the worker's pipeline functions, or a pipeline file defines SQL entry
#    points.
set -uo pipefail
cd "$(dirname "$0")/../src"
status=0
fail() { echo "check_layout: $*" >&2; status=1; }

# The workaround and json-c: in prelude.h alone.
for f in $(grep -lE '#[[:space:]]*define[[:space:]]+json_object\b|#[[:space:]]*include[[:space:]]*<json-c/' -- *.c *.h); do
    [ "$f" = prelude.h ] || fail "$f: json-c's include-order workaround belongs in prelude.h only"
done

# Headers that bring json-c in: prelude.h and whatever includes them.
json_headers=" prelude.h "
while :; do
    grown=$json_headers
    for h in *.h; do
        case "$grown" in *" $h "*) continue ;; esac
        for inc in $(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$h"); do
            case "$grown" in *" $inc "*) grown="$grown$h "; break ;; esac
        done
    done
    [ "$grown" = "$json_headers" ] && break
    json_headers=$grown
done

# Where json-c comes in, prelude.h comes first.
for f in *.c; do
    incs=$(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$f" | grep -v '^postgres\.h$')
    needs=no
    for inc in $incs; do
        case "$json_headers" in *" $inc "*) needs=yes ;; esac
    done
    first=$(echo "$incs" | head -n 1)
    [ "$needs" = no ] || [ "$first" = prelude.h ] ||
        fail "$f: includes json-c (through prelude.h) but \"$first\" comes first"
done

# SQL entry points and the worker's pipeline stay in separate files.
pipeline_files="webhook_delivery.c template_parse.c provider.c provider_openai.c
    provider_gemini.c provider_anthropic.c queue.c submit.c reserve.c"
pipeline_functions="webhook_claim_and_start webhook_done webhook_release
    webhook_reset_leases webhook_signature template_parse format_type_name
    provider_lookup provider_error_message append_secret_header request_body
    document_intro answer_object base64_encode redact_secret
    queue_claim queue_requeue_orphans queue_retry queue_fail queue_progress
    submit_extraction reserve_at_submit"
for f in $pipeline_files; do
    [ -f "$f" ] || { fail "$f: missing (doc/layout.md lists it in the pipeline)"; continue; }
    grep -q 'PG_FUNCTION_INFO_V1' "$f" && fail "$f: pipeline code only, no SQL entry points (PG_FUNCTION_INFO_V1)"
done
for f in $(grep -l 'PG_FUNCTION_INFO_V1' -- *.c); do
    for fn in $pipeline_functions; do
        grep -q "^$fn(" "$f" && fail "$f: defines SQL entry points and the pipeline's $fn(); see doc/layout.md"
    done
done

# postgres.h before anything else, as PostgreSQL requires of an extension's sources.
for f in *.c; do
    first=$(grep -m1 '^#include' "$f")
    [ "$first" = '#include "postgres.h"' ] || fail "$f: its first include must be \"postgres.h\", not $first"
done

# C code submits through the pipeline (document_add, submit_extraction), never
# by calling an SQL entry point.
for f in $(grep -lE 'DirectFunctionCall[0-9]+\(docextract_|docextract_(add_document|extract_document)\(fcinfo' -- *.c); do
    fail "$f: calls an SQL entry point of docextract's; call the pipeline function instead"
done

# No header includes every other: each file includes what it uses.
[ -f docextract.h ] && fail "docextract.h: the umbrella header is gone; include the subsystem headers"

[ "$status" -eq 0 ] && echo "check_layout: ok"
exit "$status"
