#!/usr/bin/env python3
"""PDFs built to hurt a parser, for test/t/018_parser_sandbox.pl.

  attack_pdfs.py pages PATH N   N pages, all drawing one shared content stream
  attack_pdfs.py bomb PATH MB   one page whose FlateDecode content stream is a
                                few kB per inflated MB: a string of MB megabytes
"""
import sys
import zlib

MOD_ADLER = 65521
CONTENT = b"BT /F1 12 Tf 10 20 Td (Hello from a shared content stream) Tj ET"


def pdf(objects):
    """A PDF of the given object bodies (numbered from 1), with a correct xref."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<</Size %d/Root 1 0 R>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def stream(data, extra=b""):
    return b"<</Length %d%s>>stream\n" % (len(data), extra) + data + b"\nendstream"


FONT = b"<</Type/Font/Subtype/Type1/BaseFont/Helvetica>>"
RESOURCES = b"/MediaBox[0 0 300 100]/Resources<</Font<</F1 4 0 R>>>>"


def many_pages(n):
    """Catalog, one Pages node with n kids, the shared content, the font, n pages."""
    kids = b" ".join(b"%d 0 R" % (5 + i) for i in range(n))
    objects = [b"<</Type/Catalog/Pages 2 0 R>>",
               b"<</Type/Pages/Count %d%s/Kids[%s]>>" % (n, RESOURCES, kids),
               stream(CONTENT), FONT]
    objects += [b"<</Type/Page/Parent 2 0 R/Contents 3 0 R>>"] * n
    return pdf(objects)


def adler_append_run(adler, byte, n):
    """adler32 of what adler covered followed by n copies of byte."""
    a, b = adler & 0xFFFF, adler >> 16
    b = (b + n * a + byte * (n * (n + 1) // 2)) % MOD_ADLER
    a = (a + n * byte) % MOD_ADLER
    return (b << 16) | a


def deflate_bomb(mb):
    """A content stream inflating to mb MB: one compressed 1 MB block, repeated.

    After a full flush deflate starts afresh, so every 1 MB block of 'A'
    compresses to the same bytes; the adler32 trailer is computed for the
    whole inflated stream."""
    head, tail, chunk = b"BT /F1 12 Tf 10 20 Td (", b") Tj ET", b"A" * (1 << 20)
    c = zlib.compressobj(9)
    out = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    end = c.compress(tail) + c.flush()
    adler = adler_append_run(zlib.adler32(head), ord("A"), mb << 20)
    adler = zlib.adler32(tail, adler)
    data = out + block * mb + end[:-4] + adler.to_bytes(4, "big")
    objects = [b"<</Type/Catalog/Pages 2 0 R>>",
               b"<</Type/Pages/Count 1/Kids[5 0 R]>>",
               stream(data, b"/Filter/FlateDecode"), FONT,
               b"<</Type/Page/Parent 2 0 R%s/Contents 3 0 R>>" % RESOURCES]
    return pdf(objects)


def main():
    kind, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = many_pages(n) if kind == "pages" else deflate_bomb(n)
    with open(path, "wb") as f:
        f.write(data)


if __name__ == "__main__":
    main()
