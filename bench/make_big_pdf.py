#!/usr/bin/python3
"""Writes a valid one-page PDF of about SIZE bytes: a text line poppler reads,
and an image XObject of incompressible bytes drawn on the page (the size of
a scanned document).  Usage: make_big_pdf.py OUT SIZE_BYTES"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures"))
from make_fixtures import serialise  # noqa: E402  (the fixtures' PDF writer)


def big_pdf(size):
    side = max(1, int(((size - 2000) // 3) ** 0.5))       # RGB, 8 bits, side x side
    pixels = os.urandom(side * side * 3)
    text = b"BT /F1 11 Tf 50 790 Td (Invoice Number: INV-BIG-0001) Tj ET\nq 500 0 0 500 50 200 cm /Im1 Do Q"
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 4 0 R >> "
        b"/XObject << /Im1 5 0 R >> >> /Contents 6 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB "
        b"/BitsPerComponent 8 /Length %d >>\nstream\n" % (side, side, len(pixels)) + pixels + b"\nendstream",
        b"<< /Length %d >>\nstream\n" % len(text) + text + b"\nendstream",
    ]
    return serialise(objs, 1)


if __name__ == "__main__":
    with open(sys.argv[1], "wb") as f:
        f.write(big_pdf(int(sys.argv[2])))
