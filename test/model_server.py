#!/usr/bin/env python3
"""A scripted model server for docextract's tests and demo, speaking three wire
formats: OpenAI chat completions (POST .../chat/completions), Gemini
(POST .../models/{model}:generateContent) and Anthropic (POST .../messages).

Each request is checked the way the real API checks it (auth header, required
fields, structured-output settings, inline document encoding), then answered:
  - by the next scripted action, if any (POST /_script with a JSON list), or
  - by "reading" the document: text mode reads the text docextract sent;
    file/image parts are read crudely (PDF text operators, PNG tEXt chunks).
    Values are returned as written ("1,234.50", "March 14, 2026") so that
    docextract's typing is exercised.

Control:  POST /_script [actions]   GET /_requests   POST /_reset   GET /_stats
(_stats: "connections" counts connections whose first request was not a control one;
"hooks_inflight" the webhook deliveries being answered, held ones included)

Webhook receiver: POST /hooks/... is recorded (GET /_hooks lists method, path,
headers, body) and answered 200, or by the next action of POST /_hook_script
({"status": 500, "delay_ms": 0, "hold": "name"}); a held delivery is recorded
when it is answered.
An action: {"status": 500, "body": "...", "headers": {"Retry-After": "1"},
            "delay_ms": 0, "answer": {...}, "raw_content": "not json", "drop": true,
            "hold": "name"}
"hold" keeps the answer until POST /_release/name (a test decides when it comes); a
model request whose client closes the connection meanwhile counts as abandoned.

Usage: model_server.py --port-file F [--port N] [--api-key K] [--delay-ms N]
"""
import argparse
import asyncio
import base64
import json
import os
import re
import socket
import sys
import time
import zlib

STATE = {"script": [], "requests": [], "inflight": 0, "max_inflight": 0, "count": 0,
         "abandoned": 0, "hooks": [], "hook_script": [], "connections": 0, "holds": {},
         "hooks_inflight": 0}
ARGS = None


def response(status, body, ctype="application/json", headers=None):
    if not isinstance(body, (bytes, bytearray)):
        body = body.encode()
    extra = "".join("%s: %s\r\n" % kv for kv in (headers or {}).items())
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
              429: "Too Many Requests", 500: "Internal Server Error",
              503: "Service Unavailable"}.get(status, "Status")
    head = ("HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
            % (status, reason, ctype, len(body), extra)).encode()
    return head + body


def error(status, message, etype="invalid_request_error"):
    return response(status, json.dumps({"error": {"message": message, "type": etype}}))


# -- reading the document --------------------------------------------------

def pdf_text(data):
    """Text shown by Tj operators in uncompressed content streams."""
    out = []
    for m in re.finditer(rb"\(((?:\\.|[^\\)])*)\) Tj", data):
        s = re.sub(rb"\\(.)", rb"\1", m.group(1))
        out.append(s.decode("latin-1"))
    return "\n".join(out)


def png_text(data):
    out, pos = [], 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if kind == b"tEXt":
            chunk = data[pos + 8:pos + 8 + length]
            out.append(chunk.split(b"\x00", 1)[-1].decode("latin-1"))
        pos += 12 + length
    return "\n".join(out)


def decoded_text(b64):
    raw = base64.b64decode(b64)
    return pdf_text(raw) if raw.startswith(b"%PDF") else png_text(raw)


def document_text(content):
    """The document's text from an OpenAI, Gemini or Anthropic user message."""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if "inline_data" in part:                               # Gemini
            texts.append(decoded_text(part["inline_data"]["data"]))
        if part.get("type") in ("document", "image"):           # Anthropic
            texts.append(decoded_text(part["source"]["data"]))
        if part.get("type") == "text":
            texts.append(part["text"])
        url = None
        if part.get("type") == "file":
            url = part["file"]["file_data"]
        elif part.get("type") == "image_url":
            url = part["image_url"]["url"]
        if url:
            raw = base64.b64decode(url.split(",", 1)[1])
            texts.append(pdf_text(raw) if raw.startswith(b"%PDF") else png_text(raw))
    return "\n".join(texts)


def label_names(key, prop):
    names = {key.replace("_", " ").lower()}
    desc = prop.get("description", "")
    names.add(re.split(r"[:(]", desc, 1)[0].strip().lower())
    return names


def read_fields(text, props, evidence=None):
    """Values found as "Label: value" lines; evidence[key] = (line, page)."""
    found = {}
    for page, page_text in enumerate(text.split("\f"), 1):
        for line in page_text.splitlines():
            if ":" not in line:
                continue
            label, value = line.split(":", 1)
            for key, prop in props.items():
                if label.strip().lower() in label_names(key, prop) and key not in found:
                    found[key] = value.strip()
                    if evidence is not None:
                        evidence[key] = (line.strip(), page)
    return {k: found.get(k) for k in props}


def read_table(text, props):
    lines = text.splitlines()
    rows, columns = [], None
    for line in lines:
        if "|" not in line:
            if columns is not None and rows:
                break
            continue
        cells = [c.strip() for c in line.split("|")]
        if columns is None:
            columns = []
            for c in cells:
                match = [k for k, p in props.items() if c.lower() in label_names(k, p)]
                columns.append(match[0] if match else None)
            continue
        row = {k: None for k in props}
        for key, cell in zip(columns, cells):
            if key:
                row[key] = cell
        rows.append(row)
    return rows


def split_rows(text, props):
    """docextract's split request (table columns page_start, page_end): a
    document begins on each page that shows an invoice number."""
    pages = text.split("\f")
    if len(pages) > 1 and not pages[-1].strip():
        pages.pop()
    starts = [i for i, page in enumerate(pages, 1) if "Invoice Number:" in page] or [1]
    starts[0] = 1
    choice = next((c for c in props["template"].get("enum", []) if c is not None), None)
    ends = [s - 1 for s in starts[1:]] + [len(pages)]
    return [{"page_start": s, "page_end": e, "template": choice} for s, e in zip(starts, ends)]


def classify(labels, text):
    """docextract's classification question ("template": one of the labels
    "<n>. <name>", "confidence"): the candidate whose name is a line of the
    document by itself (a title such as INVOICE), else none."""
    lines = {line.strip().lower() for line in text.splitlines()}
    for label in labels:
        if label and label.split(". ", 1)[-1].lower() in lines:
            return {"template": label, "confidence": 0.9}
    return {"template": None, "confidence": 0.0}


def answer_for(schema, text):
    general = schema["properties"].get("general", {}).get("properties", {})
    if set(general) == {"template", "confidence"} and "enum" in general["template"]:
        return {"general": classify(general["template"]["enum"], text)}
    evidence = {}
    ans = {}
    table_props = schema["properties"].get("table", {}).get("items", {}).get("properties", {})
    if "page_start" in table_props and "page_end" in table_props:
        return {"table": split_rows(text, table_props)}
    if "general" in schema["properties"]:  # absent from the table-only part of a split
        ans["general"] = read_fields(text, schema["properties"]["general"]["properties"], evidence)
    if "table" in schema["properties"]:
        ans["table"] = read_table(text, schema["properties"]["table"]["items"]["properties"])
    if "attributions" in schema["properties"]:
        ans["attributions"] = {
            key: {"confidence": 0.9 if key in evidence else 0.0,
                  "evidence": {"quote": evidence[key][0] if key in evidence else None,
                               "page": evidence[key][1] if key in evidence else None}}
            for key in schema["properties"]["attributions"]["properties"]}
    if "table_attributions" in schema["properties"]:
        pages = text.split("\f")

        def cell(value):
            page = next((i for i, p in enumerate(pages, 1) if value and value in p), None)
            return {"confidence": 0.9 if page else 0.0,
                    "evidence": {"quote": value if page else None, "page": page}}
        ans["table_attributions"] = [{key: cell(value) for key, value in row.items()}
                                     for row in ans.get("table", [])]
    return ans


# -- checking requests as the real API does ---------------------------------

def check_request(headers, body):
    if ARGS.api_key is not None:
        auth = headers.get("authorization", "")
        if auth != "Bearer " + ARGS.api_key:
            given = auth[len("Bearer "):] if auth.startswith("Bearer ") else auth
            return error(401, "Incorrect API key provided: %s. You can find your API key "
                         "at your provider's dashboard." % given, "invalid_api_key")
    try:
        req = json.loads(body)
    except ValueError:
        return error(400, "We could not parse the JSON body of your request.")
    if not isinstance(req.get("model"), str) or not req["model"]:
        return error(400, "you must provide a model parameter")
    msgs = req.get("messages")
    if not isinstance(msgs, list) or not msgs or any("role" not in m or "content" not in m
                                                     for m in msgs):
        return error(400, "'messages' must be a non-empty array of {role, content}")
    rf = req.get("response_format", {})
    js = rf.get("json_schema", {})
    if rf.get("type") != "json_schema" or js.get("strict") is not True or "schema" not in js:
        return error(400, "response_format must be json_schema with strict true")
    problem = check_strict_schema(js["schema"], "schema")
    if problem:
        return error(400, "Invalid schema for response_format 'extraction': " + problem)
    for m in msgs:
        for part in m["content"] if isinstance(m["content"], list) else []:
            url = part.get("image_url", {}).get("url", "") if part.get("type") == "image_url" else ""
            if url and not re.match(r"data:image/(png|jpeg|gif|webp);base64,", url):
                return error(400, "Invalid image_url: the image must be png, jpeg, gif or webp")
    return req


def check_strict_schema(s, path):
    """Strict structured outputs: objects list every property as required and
    forbid additional ones."""
    types = s.get("type")
    types = types if isinstance(types, list) else [types]
    if "object" in types:
        props = s.get("properties", {})
        if s.get("additionalProperties") is not False:
            return "%s: additionalProperties must be false" % path
        if sorted(s.get("required", [])) != sorted(props):
            return "%s: every property must be required" % path
        for k, v in props.items():
            p = check_strict_schema(v, path + "." + k)
            if p:
                return p
    if "array" in types:
        return check_strict_schema(s.get("items", {}), path + "[]")
    return None


def completion(req, content):
    prompt_chars = sum(len(json.dumps(m["content"])) for m in req["messages"])
    return json.dumps({
        "id": "chatcmpl-test%d" % STATE["count"], "object": "chat.completion",
        "created": int(time.time()), "model": req["model"],
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content, "refusal": None}}],
        "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(content) // 4,
                  "total_tokens": prompt_chars // 4 + len(content) // 4}})


async def client_gone_within(reader, seconds):
    """Wait up to seconds; True if the client closed the connection meanwhile."""
    try:
        return await asyncio.wait_for(reader.read(1), seconds) == b""
    except asyncio.TimeoutError:
        return False


async def gone_before_release(reader, name):
    """Wait for hold name's release; True if the client closed the connection first."""
    release = asyncio.ensure_future(STATE["holds"].setdefault(name, asyncio.Event()).wait())
    gone = asyncio.ensure_future(reader.read(1))
    await asyncio.wait({release, gone}, return_when=asyncio.FIRST_COMPLETED)
    if release.done():
        # Wait for the read to end: a pending one would still hold the
        # stream's waiter when the next request's readline() starts.
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        return False
    if gone.result() == b"":
        release.cancel()
        return True
    await release
    return False


async def model_reply(reader, headers, body):
    """Returns bytes to send, or None to drop the connection."""
    req = check_request(headers, body)
    if isinstance(req, (bytes, bytearray)):
        return req
    action = STATE["script"].pop(0) if STATE["script"] else {}
    delay = action.get("delay_ms", ARGS.delay_ms)
    if delay and await client_gone_within(reader, delay / 1000.0):
        STATE["abandoned"] += 1
        return None
    if action.get("hold") and await gone_before_release(reader, action["hold"]):
        STATE["abandoned"] += 1
        return None
    if action.get("drop"):
        return None
    if "status" in action and action["status"] != 200:
        return response(action["status"], action.get("body", ""), headers=action.get("headers"))
    if "body" in action:
        return response(200, action["body"])
    if "raw_content" in action:
        return response(200, completion(req, action["raw_content"]))
    ans = action["answer"] if "answer" in action else answer_for(
        req["response_format"]["json_schema"]["schema"], document_text(req["messages"][-1]["content"]))
    return response(200, completion(req, json.dumps(ans)))


# -- Gemini generateContent ----------------------------------------------------

def gemini_error(status, message, code_status):
    return response(status, json.dumps({"error": {"code": status, "message": message,
                                                  "status": code_status}}))


def check_gemini(headers, body, model):
    if ARGS.api_key is not None and headers.get("x-goog-api-key") != ARGS.api_key:
        return gemini_error(400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT")
    try:
        req = json.loads(body)
    except ValueError:
        return gemini_error(400, "Invalid JSON payload received.", "INVALID_ARGUMENT")
    contents = req.get("contents")
    if not isinstance(contents, list) or not contents or not contents[-1].get("parts"):
        return gemini_error(400, "* GenerateContentRequest.contents: contents is not specified",
                            "INVALID_ARGUMENT")
    for part in contents[-1]["parts"]:
        if "inline_data" in part:
            d = part["inline_data"]
            if d.get("mime_type") not in ("application/pdf", "image/png", "image/jpeg",
                                          "image/heic", "image/heif") or not d.get("data"):
                return gemini_error(400, "Unsupported MIME type or missing inline data",
                                    "INVALID_ARGUMENT")
            base64.b64decode(d["data"], validate=True)
    gc = req.get("generationConfig", {})
    schema = gc.get("responseSchema")
    if gc.get("responseMimeType") != "application/json" or not schema or schema.get("type") != "OBJECT":
        return gemini_error(400, "responseSchema requires responseMimeType application/json",
                            "INVALID_ARGUMENT")
    return req


async def gemini_reply(reader, headers, body, model):
    req = check_gemini(headers, body, model)
    if isinstance(req, (bytes, bytearray)):
        return req
    action = STATE["script"].pop(0) if STATE["script"] else {}
    if action.get("delay_ms") and await client_gone_within(reader, action["delay_ms"] / 1000.0):
        STATE["abandoned"] += 1
        return None
    if "status" in action and action["status"] != 200:
        return response(action["status"], action.get("body", ""), headers=action.get("headers"))
    if "body" in action:
        return response(200, action["body"])
    text = action.get("raw_content")
    if text is None:
        ans = action["answer"] if "answer" in action else answer_for(
            req["generationConfig"]["responseSchema"], document_text(req["contents"][-1]["parts"]))
        text = json.dumps(ans)
    return response(200, json.dumps({
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                        "finishReason": action.get("finish_reason", "STOP"), "index": 0}],
        "usageMetadata": {"promptTokenCount": len(body) // 4, "candidatesTokenCount": len(text) // 4,
                          "totalTokenCount": (len(body) + len(text)) // 4},
        "modelVersion": model}))


# -- Anthropic Messages --------------------------------------------------------

def anthropic_error(status, etype, message):
    return response(status, json.dumps({"type": "error", "error": {"type": etype, "message": message}}))


def check_anthropic(headers, body):
    if ARGS.api_key is not None and headers.get("x-api-key") != ARGS.api_key:
        return anthropic_error(401, "authentication_error", "invalid x-api-key")
    if not headers.get("anthropic-version"):
        return anthropic_error(400, "invalid_request_error", "anthropic-version: header is required")
    try:
        req = json.loads(body)
    except ValueError:
        return anthropic_error(400, "invalid_request_error", "Invalid JSON")
    if not isinstance(req.get("model"), str) or not isinstance(req.get("max_tokens"), int):
        return anthropic_error(400, "invalid_request_error", "model and max_tokens: Field required")
    msgs = req.get("messages")
    if not isinstance(msgs, list) or not msgs or msgs[0].get("role") != "user":
        return anthropic_error(400, "invalid_request_error", "messages: first message must use the user role")
    for block in msgs[-1]["content"] if isinstance(msgs[-1]["content"], list) else []:
        if block.get("type") in ("document", "image"):
            src = block.get("source", {})
            allowed = ("application/pdf",) if block["type"] == "document" else (
                "image/jpeg", "image/png", "image/gif", "image/webp")
            if src.get("type") != "base64" or src.get("media_type") not in allowed:
                return anthropic_error(400, "invalid_request_error",
                                       "messages.0.content: invalid %s source" % block["type"])
            base64.b64decode(src["data"], validate=True)
    tools = req.get("tools") or []
    choice = req.get("tool_choice", {})
    if (len(tools) != 1 or tools[0].get("input_schema", {}).get("type") != "object"
            or choice.get("type") != "tool" or choice.get("name") != tools[0].get("name")):
        return anthropic_error(400, "invalid_request_error", "tool_choice must name the one tool")
    return req


async def anthropic_reply(reader, headers, body):
    req = check_anthropic(headers, body)
    if isinstance(req, (bytes, bytearray)):
        return req
    action = STATE["script"].pop(0) if STATE["script"] else {}
    if action.get("delay_ms") and await client_gone_within(reader, action["delay_ms"] / 1000.0):
        STATE["abandoned"] += 1
        return None
    if "status" in action and action["status"] != 200:
        return response(action["status"], action.get("body", ""), headers=action.get("headers"))
    if "body" in action:
        return response(200, action["body"])
    if "raw_content" in action:
        content = [{"type": "text", "text": action["raw_content"]}]
        stop = "end_turn"
    else:
        tool = req["tools"][0]
        ans = action["answer"] if "answer" in action else answer_for(
            tool["input_schema"], document_text(req["messages"][-1]["content"]))
        content = [{"type": "tool_use", "id": "toolu_test%d" % STATE["count"], "name": tool["name"],
                    "input": ans}]
        stop = "tool_use"
    return response(200, json.dumps({
        "id": "msg_test%d" % STATE["count"], "type": "message", "role": "assistant",
        "model": req["model"], "content": content, "stop_reason": stop,
        "usage": {"input_tokens": len(body) // 4, "output_tokens": len(json.dumps(content)) // 4}}))


# -- HTTP ----------------------------------------------------------------------

async def handle(reader, writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    first = True
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            method, path, _ = line.decode().split(" ", 2)
            if first and not path.startswith("/_"):
                STATE["connections"] += 1   # connections that asked more than control questions
            first = False
            headers = {}
            while True:
                h = await reader.readline()
                if h in (b"\r\n", b"\n", b""):
                    break
                k, v = h.decode().split(":", 1)
                headers[k.strip().lower()] = v.strip()
            if headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            out = await route(reader, method, path, headers, body)
            if out is None:
                break
            writer.write(out)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()


async def hook_reply(path, headers, body):
    action = STATE["hook_script"].pop(0) if STATE["hook_script"] else {}
    if action.get("delay_ms"):
        await asyncio.sleep(action["delay_ms"] / 1000.0)
    if action.get("hold"):
        await STATE["holds"].setdefault(action["hold"], asyncio.Event()).wait()
    status = action.get("status", 200)
    STATE["hooks"].append({"path": path, "headers": headers, "time": time.time(),
                           "status": status, "body": body.decode("utf-8", "replace")})
    return response(status, json.dumps({"received": status < 300}), headers=action.get("headers"))


async def route(reader, method, path, headers, body):
    if path.startswith("/_script") and method == "POST":
        STATE["script"].extend(json.loads(body))
        return response(200, json.dumps({"queued": len(STATE["script"])}))
    if path.startswith("/_release/") and method == "POST":
        STATE["holds"].setdefault(path[len("/_release/"):], asyncio.Event()).set()
        return response(200, "{}")
    if path.startswith("/_requests"):
        return response(200, json.dumps(STATE["requests"]))
    if path.startswith("/_reset"):
        STATE.update(script=[], requests=[], max_inflight=0, count=0, hooks=[], hook_script=[],
                     connections=0)
        return response(200, "{}")
    if path.startswith("/_hook_script") and method == "POST":
        STATE["hook_script"].extend(json.loads(body))
        return response(200, "{}")
    if path.startswith("/_hooks"):
        return response(200, json.dumps(STATE["hooks"]))
    if path.startswith("/hooks/") and method == "POST":
        STATE["hooks_inflight"] += 1
        try:
            return await hook_reply(path, headers, body)
        finally:
            STATE["hooks_inflight"] -= 1
    if path.startswith("/_stats"):
        return response(200, json.dumps({k: STATE[k] for k in ("inflight", "max_inflight",
                                                               "count", "abandoned", "connections",
                                                               "hooks_inflight")}))
    gemini = re.search(r"/models/([^/:]+):generateContent$", path)
    if method == "POST" and (path.endswith("/chat/completions") or path.endswith("/messages")
                             or gemini):
        STATE["count"] += 1
        STATE["inflight"] += 1
        STATE["max_inflight"] = max(STATE["max_inflight"], STATE["inflight"])
        try:
            if ARGS.record:
                STATE["requests"].append({"path": path, "headers": headers, "time": time.time(),
                                          "body": body.decode("utf-8", "replace")})
            if gemini:
                return await gemini_reply(reader, headers, body, gemini.group(1))
            if path.endswith("/messages"):
                return await anthropic_reply(reader, headers, body)
            return await model_reply(reader, headers, body)
        finally:
            STATE["inflight"] -= 1
    return error(404, "no route for %s %s" % (method, path))


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", ARGS.port, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    if ARGS.port_file:
        tmp = ARGS.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.rename(tmp, ARGS.port_file)
    print("model server listening on 127.0.0.1:%d" % port, file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--api-key")
    ap.add_argument("--delay-ms", type=int, default=0)
    ap.add_argument("--no-record", dest="record", action="store_false")
    ARGS = ap.parse_args()
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
