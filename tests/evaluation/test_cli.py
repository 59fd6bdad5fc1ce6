"""The ``eval`` and ``eval-data`` commands."""

from __future__ import annotations

import argparse
import json

from imageindex import evaluation as ev


def cli(*argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="imageindex")
    ev.add_cli(p.add_subparsers(dest="command", required=True))
    return p.parse_args(list(argv))


def test_cli_eval_data_and_filename_eval(built, tmp_path, capsys):
    dest = tmp_path / "set"
    assert ev.run_cli(cli("eval-data", str(dest))) == 0
    assert json.loads(capsys.readouterr().out)["images"] == built[1]["images"]
    out = tmp_path / "out"
    code = ev.run_cli(cli("eval", "--data", str(dest), "--model", "filename", "--out", str(out)))
    stdout = capsys.readouterr().out
    assert code == 0
    assert "P@1" in stdout and "filename" in stdout and str(out / "summary.json") in stdout
    report = json.loads((out / "summary.json").read_text())
    assert report["ks"] == [1, 5, 10, 50, 100] and report["images"] == built[1]["images"]
    assert set(report["models"]["filename"]["precision"]) == {"1", "5", "10", "50", "100"}
    assert (out / "filename" / "per_tag.log").is_file()
    assert (out / ev.PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_are_one_line(tmp_path, capsys):
    code = ev.run_cli(cli("eval", "--data", str(tmp_path), "--model", "clip", "--out", "o"))
    err = capsys.readouterr().err
    assert code == 2 and "model 'clip' is unknown" in err and len(err.strip().splitlines()) == 1
    code = ev.run_cli(cli("eval", "--data", str(tmp_path / "x"), "--out", str(tmp_path / "o")))
    assert code == 2 and "does not exist" in capsys.readouterr().err
    code = ev.run_cli(cli("eval", "--data", str(tmp_path), "--ks", "5,1", "--out", "o"))
    assert code == 2 and "strictly increasing" in capsys.readouterr().err
    code = ev.run_cli(
        cli(
            "eval",
            "--data",
            str(tmp_path),
            "--model",
            "filename",
            "--model",
            "filename",
            "--out",
            "o",
        )
    )
    assert code == 2 and "each once" in capsys.readouterr().err
