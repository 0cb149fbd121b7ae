"""Manifests are parsed within limits (size, nesting, alias expansion) before anything is built from them, and
whatever the bytes, the only error is a StyleFolderError naming the problem: with libyaml and with pure Python."""

from __future__ import annotations

import random
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from serve_app.styles import bounded_yaml
from serve_app.styles.bounded_yaml import MAX_YAML_DEPTH, MAX_YAML_NODES, load_mapping
from serve_app.styles.catalog import StyleCatalog
from serve_app.styles.manifest import MAX_MANIFEST_BYTES, StyleFolderError, parse_manifest

SHIPPED = Path(__file__).resolve().parents[1] / "styles"
FILM_NOIR = (SHIPPED / "film-noir" / "style.yaml").read_bytes()
VALID = b"id: snow-globe\ntitle: Snow globe\nprompt_template: '{subject} in a snow globe'\n"


@pytest.fixture(params=["libyaml", "pure python"], autouse=True)
def loader(request, monkeypatch):
    if request.param == "libyaml" and not hasattr(yaml, "CSafeLoader"):
        pytest.skip("PyYAML was built without libyaml")
    monkeypatch.setattr(bounded_yaml, "SAFE_LOADER", yaml.CSafeLoader if request.param == "libyaml" else yaml.SafeLoader)


def laughs(levels: int = 9, width: int = 9) -> bytes:
    """The "billion laughs": each level an anchored list of ``width`` aliases of the level before."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return VALID + "\n".join(lines).encode()


def nested_block(depth: int) -> bytes:
    return VALID + b"".join(b"  " * level + b"a:\n" for level in range(depth)) + b"  " * depth + b"x: 1\n"


REFUSED = {
    "billion laughs": (laughs(), "expands to more than"),
    "billion laughs in a mapping": (
        VALID + b"a: &a {k0: lol, k1: lol, k2: lol, k3: lol, k4: lol, k5: lol, k6: lol, k7: lol}\n"
        + b"".join(f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n".encode() for p, c in zip("abcdef", "bcdefg")),
        "expands to more than",
    ),
    "recursive alias in a list": (b"&a [*a]", "recursive alias"),
    "recursive alias in a mapping": (VALID + b"tags: &t {x: *t}", "recursive alias"),
    "deep flow nesting": (b"tags: " + b"[" * 60000, "nest"),
    "deep flow mappings": (b"tags: " + b"{a: " * 15000, "nest"),
    "deep block nesting": (nested_block(MAX_YAML_DEPTH), "nested deeper than"),
    "deep through aliases": (
        VALID + b"a: &a " + b"[" * 12 + b"x" + b"]" * 12 + b"\ntags: " + b"[" * 12 + b"*a" + b"]" * 12,
        "once aliases are expanded",
    ),
    "too many nodes": (VALID + b"tags: [" + b",".join([b"x"] * MAX_YAML_NODES) + b"]", f"more than {MAX_YAML_NODES}"),
    "oversize": (VALID + b"#" * MAX_MANIFEST_BYTES, "over the limit"),
    "latin-1": (VALID + "title: caf\xe9".encode("latin-1"), "not UTF-8"),
    "utf-16": (VALID.decode().encode("utf-16"), "not UTF-8"),
    "a list": (b"- id: film-noir\n- title: x\n", "not a YAML mapping"),
    "a scalar": (b"film-noir", "not a YAML mapping"),
    "empty": (b"", "not a YAML mapping"),
    "null": (b"~", "not a YAML mapping"),
    "integer keys": (VALID + b"1: one\n", "not a YAML mapping"),
    "null key": (VALID + b"~: x\n", "not a YAML mapping"),
    "unhashable key": (VALID + b"? [a]\n: x\n", "unhashable"),
    "python object tag": (b"!!python/object/apply:os.system ['true']", "tags"),
    "local tag": (VALID + b"tags: !x [a]", "tags"),
    "malformed bool tag": (VALID + b"description: !!bool maybe", "tags"),
    "malformed timestamp tag": (VALID + b"available_from: !!timestamp soon", "tags"),
    "malformed int tag": (VALID + b"version: !!int ''", "tags"),
    "binary tag": (VALID + b"description: !!binary aGVsbG8=", "tags"),
    "huge decimal int": (VALID + b"version: " + b"9" * 5000, "digits"),
    "huge hex int": (VALID + b"version: 0x" + b"f" * 20000, "less than or equal"),
    "version past the pattern": (VALID + b"version: 1000000000", "less than or equal"),
    "impossible date": (VALID + b"available_from: 2026-13-45", "month"),
    "two documents": (VALID + b"---\n" + VALID, "single document"),
    "NUL character": (VALID + b"description: a\x00b", "unacceptable character"),
    "merge of a scalar": (VALID + b"lora: {<<: 1}", "for merging"),
    "id leaving the library": (VALID.replace(b"snow-globe", b"../x"), "id"),
    "LoRA file leaving the folder": (VALID + b"lora: {file: ../x.safetensors}", "plain '.safetensors' file name"),
    "preview leaving the folder": (VALID + b"preview: ../../etc/passwd", "preview"),
    "prompt field reaching an attribute": (VALID.replace(b"'{subject}", b"'{subject} {subject.__class__}"), "placeholder"),
    "duplicate key": (VALID + b"prompt_template: '{subject}'\n", r"duplicate key 'prompt_template' \(line 4\)"),
    "duplicate key quoted": (VALID + b"'title': Again\n", "duplicate key 'title'"),
    "duplicate nested key": (VALID + b"lora: {scale: 1.0, scale: 2.0}", r"duplicate key 'scale' \(line 4\)"),
    "duplicate key in a list": (VALID + b"tags:\n  - {a: 1,\n     a: 2}", r"duplicate key 'a' \(line 6\)"),
    "duplicate key beside a merge": (VALID + b"defaults: {<<: {steps: 20}, size: 64, size: 72}", "key 'size'"),
    "window a number": (VALID + b"available_from: 0", "available_from\n  Input should be an RFC 3339 date-time"),
    "window a float": (VALID + b"available_until: 1700000000.5", "available_until\n  Input should be an RFC 3339"),
    "window a string of digits": (VALID + b"available_from: '1700000000'", "available_from\n  Input should be an RFC"),
    "window a date": (VALID + b"available_until: 2026-12-24", "available_until\n  Input should be an RFC 3339"),
    "window without seconds": (VALID + b"available_from: '2026-12-24T00:00Z'", "available_from\n  Input should be"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_fast_with_a_clear_message(case):
    data, expected = REFUSED[case]
    started = time.perf_counter()
    with pytest.raises(StyleFolderError, match=expected) as error:
        parse_manifest(data, "upload")
    assert time.perf_counter() - started < 5  # pure-Python YAML at the node limit, on a loaded machine
    assert str(error.value).startswith("upload: ")


def test_limits_leave_real_manifests_alone():
    for folder in sorted(SHIPPED.iterdir()):
        assert parse_manifest((folder / "style.yaml").read_bytes(), "shipped").id == folder.name
    reused = VALID + b"tags: &t [winter, snow]\ndescription: &d cold\nnegative_prompt: *d\n"
    assert parse_manifest(b"\xef\xbb\xbf" + reused, "bom").negative_prompt == "cold"
    deepest = VALID + b"lora: " + b"{file: lora.safetensors, scale: 0.5}"
    assert parse_manifest(deepest, "lora").lora.scale == 0.5


def test_a_key_overriding_a_merged_one_is_no_duplicate():
    merged = parse_manifest(VALID + b"defaults: {<<: {steps: 20, size: 256}, steps: 30}", "merge")
    assert (merged.defaults.steps, merged.defaults.size) == (30, 256)
    aliased = load_mapping(b"base: &b {a: 1, b: 2}\nother:\n  <<: *b\n  a: 3\n", MAX_MANIFEST_BYTES)
    assert aliased["other"] == {"a": 3, "b": 2}


TIMESTAMPS = ["2026-12-24T01:00:00+01:00", "2026-12-24 01:00:00 +1", "'2026-12-24T01:00:00+01:00'",
              "'2026-12-24t00:00:00z'", "'2026-12-24T00:00:00.000Z'"]


@pytest.mark.parametrize("written", TIMESTAMPS)
def test_windows_are_yaml_timestamps_or_rfc3339_strings(written):
    manifest = parse_manifest(VALID + f"available_from: {written}\n".encode(), "window")
    assert manifest.available_from == datetime(2026, 12, 24, tzinfo=UTC)


def test_a_stored_manifest_with_a_duplicate_key_fails_the_catalogue_read(tmp_path):
    shutil.copytree(SHIPPED / "film-noir", tmp_path / "film-noir")
    (tmp_path / "film-noir" / "style.yaml").write_bytes(FILM_NOIR + b"tags: [duplicate]\n")
    line = FILM_NOIR.count(b"\n") + 1  # the appended key's
    with pytest.raises(StyleFolderError, match=rf"film-noir/style.yaml: duplicate key 'tags' \(line {line}\)"):
        StyleCatalog(tmp_path)


def mutations(seed: int, count: int) -> list[bytes]:
    """The shipped manifest with random YAML punctuation and bytes inserted, deleted or repeated."""
    rng = random.Random(seed)
    pieces = [b"[", b"]", b"{", b"}", b":", b": ", b"&a ", b"*a", b"!!", b"!x ", b"|", b">", b"- ", b"? ", b",",
              b"#", b"'", b'"', b"%", b"@", b"\n", b"\t", b"  ", b"\\", b"---\n", b"<<: *a", b"\x00", b"\xff", b"\xc3"]
    out = []
    for _ in range(count):
        data = bytearray(FILM_NOIR)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.6:
                data[at:at] = rng.choice(pieces)
            elif choice < 0.8:
                del data[at : at + rng.randint(1, 20)]
            else:
                data[at:at] = data[at : at + rng.randint(1, 40)] * rng.randint(2, 10)
        out.append(bytes(data))
    return out


def test_mangled_manifests_raise_nothing_but_style_folder_errors():
    for data in mutations(seed=10, count=300):
        try:
            parse_manifest(data, "fuzz")
        except StyleFolderError:
            pass
