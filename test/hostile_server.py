#!/usr/bin/env python3
"""A hostile model endpoint and webhook receiver for docextract's tests.

Speaks the URLs of the three providers (OpenAI .../chat/completions, Gemini
.../models/{m}:generateContent, Anthropic .../messages) and webhooks
(/hooks/...), and answers each request with the next scripted case:

  POST /_script ["case", {"case": "name"}, {"random": 17, "provider": "gemini"}, ...]
                   (an action with "provider" is for that provider's requests only)
  POST /hooks/<case>  a webhook delivery, answered by that case (else 200)
  GET  /_log       what was served: [{"path", "case", "mutations"}]
  GET  /_paths     every path requested, in order
  POST /_reset

The model a request names can name its case instead: a case's name, so each
of many extractions in flight at once gets its own; or random-<base>: the
provider's next random case (seeds base, base+3, ... for OpenAI, +1 for
Gemini, +2 for Anthropic).
A named case (CASES below) is raw bytes for the provider of the request:
JSON null where an object belongs, wrong types, U+0000, invalid UTF-8,
nesting 100k deep, hundreds of MB, truncation, a garbage status line, a
slowloris, a redirect.  {"random": seed} mutates a valid answer of that
provider with random.Random(seed): values replaced by null or wrong types,
keys deleted, U+0000 and invalid UTF-8 inserted, truncation, deep nesting,
NaN, trailing garbage; in the envelope or in the answer inside it.  With no
script left it answers a valid answer.

Usage: hostile_server.py --port-file F   (python3 stdlib only)
"""
import argparse
import asyncio
import copy
import json
import os
import random
import re
import sys

STATE = {"script": [], "log": [], "paths": [], "random_count": {}}

ANSWER = {
    "general": {"invoice_number": "INV-1", "invoice_date": "2026-03-14", "due_date": "April 13, 2026",
                "currency": "EUR", "paid": "no", "subtotal": "1,234.50", "total_amount": 1469.06},
    "table": [{"description": "Consulting", "quantity": 10, "amount": "1,000.00"},
              {"description": "Travel", "quantity": "1", "amount": 234.5}],
}


def http(status, body, headers=None, reason="X"):
    if isinstance(body, str):
        body = body.encode()
    extra = "".join("%s: %s\r\n" % kv for kv in (headers or {}).items())
    return ("HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            "Connection: close\r\n%s\r\n" % (status, reason, len(body), extra)).encode() + body


def envelope(provider, answer_text=None, answer_obj=None):
    """A valid answer of provider, as a Python object, carrying the answer."""
    if answer_obj is None:
        answer_obj = copy.deepcopy(ANSWER)
    if answer_text is None:
        answer_text = json.dumps(answer_obj)
    if provider == "openai":
        return {"id": "x", "object": "chat.completion", "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": answer_text, "refusal": None}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 20}}
    if provider == "gemini":
        return {"candidates": [{"content": {"role": "model", "parts": [{"text": answer_text}]},
                                "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 20}}
    return {"id": "msg", "type": "message", "role": "assistant", "model": "m",
            "content": [{"type": "tool_use", "id": "t", "name": "record_extraction", "input": answer_obj}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 10, "output_tokens": 20}}


def ok(obj):
    return http(200, json.dumps(obj))


def with_answer(provider, text):
    """The envelope around an answer given as raw JSON text."""
    if provider == "anthropic":
        marker = "\"__ANSWER__\""
        env = envelope(provider, answer_obj="__ANSWER__")
        return http(200, json.dumps(env).replace(marker, text))
    return ok(envelope(provider, answer_text=text))


def set_path(obj, path, value):
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def env_with(provider, path_by_provider, value):
    env = envelope(provider)
    path = path_by_provider.get(provider)
    if path is None:
        return ok(env)
    set_path(env, path, value)
    return ok(env)


CONTAINER = {"openai": ["choices", 0, "message"], "gemini": ["candidates", 0, "content", "parts", 0],
             "anthropic": ["content", 0]}
TEXT = {"openai": ["choices", 0, "message", "content"], "gemini": ["candidates", 0, "content", "parts", 0, "text"],
        "anthropic": ["content", 0, "input"]}
LIST = {"openai": ["choices"], "gemini": ["candidates"], "anthropic": ["content"]}


def deep(n):
    return "[" * n + "]" * n


# Each case: provider -> bytes (or an async writer, see SPECIAL).
CASES = {
    "null_root": lambda p: http(200, "null"),
    "null_list": lambda p: env_with(p, LIST, None),
    "null_container": lambda p: env_with(p, CONTAINER, None),
    "null_text": lambda p: env_with(p, TEXT, None),
    "number_text": lambda p: env_with(p, TEXT, 42),
    "string_list": lambda p: env_with(p, LIST, "choices"),
    "answer_null": lambda p: with_answer(p, "null"),
    "answer_general_null": lambda p: with_answer(p, '{"general": null, "table": null}'),
    "answer_wrong_types": lambda p: with_answer(p, json.dumps({
        "general": {"invoice_number": None, "invoice_date": [], "due_date": {}, "currency": 5,
                    "paid": None, "subtotal": [1], "total_amount": {"a": None}},
        "table": [None, 5, "x", [], {"description": None, "quantity": {}, "amount": []}]})),
    "nulls_everywhere": lambda p: ok(nulls_everywhere(envelope(p))),
    "usage_wrong_types": lambda p: usage_wrong(p),
    "error_message_null": lambda p: http(400, '{"error": {"message": null, "type": null}}'),
    "error_null": lambda p: http(500, '{"error": null}'),
    "nul_escaped": lambda p: with_answer(p, '{"general": {"invoice_number": "INV\\u0000-1"}, "table": []}'),
    "nul_escaped_envelope": lambda p: http(200, '{"note": "a\\u0000b", ' + json.dumps(envelope(p))[1:]),
    "nul_raw": lambda p: http(200, json.dumps(envelope(p)).encode().replace(b'"m"', b'"m\x00"', 1)
                              .replace(b'"assistant"', b'"assis\x00tant"', 1)
                              .replace(b'"STOP"', b'"ST\x00OP"', 1)),
    "invalid_utf8": lambda p: http(200, json.dumps(envelope(p)).encode().replace(b'INV-1', b'INV-\xff\xfe1', 1)
                                   .replace(b'INV-1', b'INV-\xc3\x28', 1)),
    "invalid_utf8_error": lambda p: http(500, b'{"error": {"message": "bad \xff\xfe\xc3\x28 \x01 byte"}}'),
    "invalid_utf8_plain_error": lambda p: http(502, b'<html>\xff\xfe\xed\xa0\x80 gateway \x00 trouble</html>'),
    "lone_surrogate": lambda p: with_answer(p, '{"general": {"invoice_number": "A\\ud800B\\udc00"}, "table": []}'),
    "deep_answer": lambda p: with_answer(p, '{"general": {"invoice_number": %s}, "table": []}' % deep(100000)),
    "deep_envelope": lambda p: http(200, '{"choices": %s, "candidates": %s, "content": %s}'
                                    % (deep(100000), deep(100000), deep(100000))),
    "nan": lambda p: with_answer(p, '{"general": {"total_amount": NaN, "subtotal": Infinity}, "table": []}'),
    "trailing_garbage": lambda p: http(200, json.dumps(envelope(p)) + " {}garbage"),
    "truncated_json": lambda p: http(200, json.dumps(envelope(p))[:57]),
    "empty_body": lambda p: http(200, ""),
    "garbage_status_line": lambda p: b"HTTP/1.1 abc \xff\xfe garbage\r\nContent-Length: 2\r\n\r\n{}",
    "not_http": lambda p: b"SSH-2.0-OpenSSH_9.2\r\n\xff\xfe\x00\x01 hello\r\n",
    "status_999": lambda p: http(999, '{"error": {"message": "strange"}}'),
    "redirect": lambda p: http(302, "", {"Location": "/elsewhere/chat/completions"}),
    "redirect_307": lambda p: http(307, "", {"Location": "http://127.0.0.1:9/x"}),
    "huge_header": lambda p: http(200, json.dumps(envelope(p)), {"X-Big": "a" * 300000}),
}


def nulls_everywhere(obj):
    if isinstance(obj, dict):
        return {k: None for k in obj}
    if isinstance(obj, list):
        return [None for _ in obj]
    return None


def usage_wrong(p):
    env = envelope(p)
    key = {"openai": "usage", "gemini": "usageMetadata", "anthropic": "usage"}[p]
    env[key] = {k: v for k, v in zip(list(env[key]), ["many", -5])}
    return ok(env)


async def serve_truncated(writer, p):
    body = json.dumps(envelope(p)).encode()
    writer.write(("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                  % (len(body) + 1000)).encode() + body)
    await writer.drain()


async def serve_huge(writer, p, megabytes=300, chunked=False):
    """A body of hundreds of MB: streamed until sent or the client hangs up."""
    head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else "Content-Length: %d\r\n\r\n" % (megabytes << 20)
    writer.write(head.encode())
    chunk = b'{"pad": "' + b"x" * ((1 << 20) - 9)
    for _ in range(megabytes):
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        await writer.drain()
        chunk = b"x" * (1 << 20)


async def serve_slowloris(writer, p):
    """Headers, then one byte of the body every 200 ms, for ever."""
    body = json.dumps(envelope(p)).encode()
    writer.write(("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                  % len(body)).encode())
    for b in body:
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(bytes([b]))


SPECIAL = {
    "truncated_transfer": serve_truncated,
    "huge_body": serve_huge,
    "huge_chunked": lambda w, p: serve_huge(w, p, chunked=True),
    "slowloris": serve_slowloris,
}

# -- random mutations --------------------------------------------------------

WRONG = [None, 0, -1, 1.5, True, False, "", "x", [], {}, [None], {"a": None}, 10 ** 30, -10 ** 30, 1e300]


def paths(obj, prefix=()):
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += paths(v, prefix + (i,))
    return out


def get(obj, path):
    for k in path:
        obj = obj[k]
    return obj


def tree_mutation(rng, obj, log):
    """One change to a JSON tree; returns the tree (maybe a new root)."""
    path = rng.choice(paths(obj))
    op = rng.choice(["null", "wrong", "delete", "nul", "deep", "long", "surrogate", "empty"])
    log.append("%s at %s" % (op, "/".join(map(str, path))))
    if op == "null":
        value = None
    elif op == "wrong":
        value = copy.deepcopy(rng.choice(WRONG))
    elif op == "delete":
        if path and isinstance(get(obj, path[:-1]), (dict, list)):
            del get(obj, path[:-1])[path[-1]]
            return obj
        value = None
    elif op == "nul":
        old = get(obj, path)
        value = (old if isinstance(old, str) else "v") + "\u0000" + "z"
    elif op == "deep":
        value = "__DEEP_%d__" % rng.choice([40, 63, 64, 65, 200, 100000])
    elif op == "long":
        value = "y" * rng.choice([1000, 100000, 1000000])
    elif op == "surrogate":
        value = "\ud800" + rng.choice(["", "\udc00", "x"])
    else:
        value = rng.choice([{}, [], ""])
    if not path:
        return value
    set_path(obj, path, value)
    return obj


def dumps(obj):
    text = json.dumps(obj)
    return re.sub(r'"__DEEP_(\d+)__"', lambda m: deep(int(m.group(1))), text)


def byte_mutation(rng, body, log):
    op = rng.choice(["truncate", "invalid_utf8", "nul_byte", "flip", "nan", "trailing", "control"])
    pos = rng.randrange(len(body) + 1)
    log.append("bytes %s at %d" % (op, pos))
    if op == "truncate":
        return body[:pos]
    if op == "invalid_utf8":
        return body[:pos] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"]) + body[pos:]
    if op == "nul_byte":
        return body[:pos] + b"\x00" + body[pos:]
    if op == "flip":
        if not body:
            return body
        pos = min(pos, len(body) - 1)
        return body[:pos] + bytes([body[pos] ^ (1 << rng.randrange(8))]) + body[pos + 1:]
    if op == "nan":
        return body.replace(b"10", rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999"]), 1)
    if op == "trailing":
        return body + rng.choice([b"x", b"{}", b"\x00", b" ]"])
    return body[:pos] + bytes([rng.randrange(32)]) + body[pos:]


def random_case(provider, seed):
    rng = random.Random(seed)
    log = []
    answer = copy.deepcopy(ANSWER)
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        answer = tree_mutation(rng, answer, log)
    if provider == "anthropic":
        env = envelope(provider, answer_obj="__ANSWER__")
    else:
        env = envelope(provider, answer_text="__ANSWER__")
    for _ in range(rng.choice([0, 0, 1, 2])):
        env = tree_mutation(rng, env, log)
    inner = dumps(answer)
    text = dumps(env)
    if provider == "anthropic":
        text = text.replace('"__ANSWER__"', inner)
    else:
        text = text.replace('"__ANSWER__"', json.dumps(inner))
    body = text.encode("utf-8", "surrogatepass")
    for _ in range(rng.choice([0, 0, 0, 1, 2])):
        body = byte_mutation(rng, body, log)
    status = 200 if rng.random() < 0.9 else rng.choice([400, 429, 500, 302, 204, 299, 600])
    log.append("status %d" % status)
    return http(status, body, {"Location": "/redirected"} if status == 302 else None), log


# -- HTTP ----------------------------------------------------------------------

def action_named(path, body):
    """The case the request's model names: a case's name, or random-<seed>."""
    m = re.search(r"/models/([^/:]+):generateContent$", path)
    name = m.group(1) if m else None
    if name is None:
        try:
            name = json.loads(body).get("model")
        except (ValueError, AttributeError):
            return None
    if isinstance(name, str) and re.fullmatch(r"random-\d+", name):
        # seeds base, base+3, base+6... for openai; +1 for gemini, +2 for anthropic
        provider = provider_of(path)
        n = STATE["random_count"].get(provider, 0)
        STATE["random_count"][provider] = n + 1
        return {"random": int(name.split("-")[1]) + 3 * n + ["openai", "gemini", "anthropic"].index(provider)}
    return {"case": name} if name in CASES or name in SPECIAL else None


def next_action(provider):
    """The first scripted action for this provider (or for any)."""
    for i, action in enumerate(STATE["script"]):
        if isinstance(action, str):
            action = {"case": action}
        if action.get("provider", provider) == provider:
            del STATE["script"][i]
            return action
    return None


def provider_of(path):
    if re.search(r"/models/[^/:]+:generateContent$", path):
        return "gemini"
    if path.endswith("/messages"):
        return "anthropic"
    return "openai"


async def answer(writer, path, body):
    if path.startswith("/_script"):
        STATE["script"].extend(json.loads(body))
        writer.write(http(200, "{}"))
        return
    if path.startswith("/_log"):
        writer.write(http(200, json.dumps(STATE["log"])))
        return
    if path.startswith("/_paths"):
        writer.write(http(200, json.dumps(STATE["paths"])))
        return
    if path.startswith("/_reset"):
        STATE.update(script=[], log=[], paths=[], random_count={})
        writer.write(http(200, "{}"))
        return
    STATE["paths"].append(path)
    provider = provider_of(path)
    action = None
    if path.startswith("/hooks/"):
        name = path.split("/")[2]
        action = {"case": name} if name in CASES or name in SPECIAL else None
    else:
        action = action_named(path, body) or next_action(provider)
    if action is None:
        entry = {"path": path, "case": "valid"}
        out = ok(envelope(provider)) if not path.startswith("/hooks/") else http(200, "{}")
    elif "random" in action:
        out, mutations = random_case(provider, action["random"])
        entry = {"path": path, "case": "random %d" % action["random"], "mutations": mutations}
    else:
        entry = {"path": path, "case": action["case"]}
        if action["case"] in SPECIAL:
            STATE["log"].append(entry)
            await SPECIAL[action["case"]](writer, provider)
            return
        out = CASES[action["case"]](provider)
    STATE["log"].append(entry)
    writer.write(out)


async def handle(reader, writer):
    try:
        line = await reader.readline()
        if not line:
            return
        method, path, _ = line.decode("latin-1").split(" ", 2)
        headers = {}
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, v = h.decode("latin-1").split(":", 1)
            headers[k.strip().lower()] = v.strip()
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        await answer(writer, path, body)
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()


async def main(args):
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.rename(tmp, args.port_file)
    print("hostile server listening on 127.0.0.1:%d" % port, file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    args = ap.parse_args()
    try:
        asyncio.run(main(args))
    except KeyboardInterrupt:
        pass
