#!/usr/bin/env python3
"""Reads an .xlsx the way a spreadsheet would (the zip's sheet XML, shared
strings, cell types) and prints its first sheet as JSON rows: numbers as
numbers, booleans as booleans, dates as serials with the cell's style.
Usage: read_xlsx.py FILE"""
import json
import re
import sys
import zipfile
from xml.etree import ElementTree as ET

NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
z = zipfile.ZipFile(sys.argv[1])
shared = []
if "xl/sharedStrings.xml" in z.namelist():
    for si in ET.fromstring(z.read("xl/sharedStrings.xml")).findall("m:si", NS):
        shared.append("".join(t.text or "" for t in si.iter("{%s}t" % NS["m"])))
sheet = ET.fromstring(z.read("xl/worksheets/sheet1.xml"))
rows = []
for row in sheet.findall("m:sheetData/m:row", NS):
    out = {}
    for c in row.findall("m:c", NS):
        col = re.match(r"[A-Z]+", c.get("r")).group(0)
        v = c.find("m:v", NS)
        t = c.get("t")
        if v is None:
            continue
        if t == "s":
            out[col] = shared[int(v.text)]
        elif t == "b":
            out[col] = v.text == "1"
        elif c.get("s"):
            out[col] = {"serial": float(v.text), "style": int(c.get("s"))}
        else:
            out[col] = float(v.text)
    rows.append(out)
print(json.dumps(rows))
