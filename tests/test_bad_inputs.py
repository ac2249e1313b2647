"""Bad inputs through the CLI: exit 2, ONE stderr line ``error: ...`` naming the config key, or the
file with its row and column, no traceback, nothing half-written in ``run.dir``.

Every case is ``python -m cmm_lightning prepare ...`` (the cheapest command that reaches each
check; config errors stop before anything heavy is imported). A process per case would cost ~10 s
each for the cases caught when the data is read (the pipeline's imports: torch and friends, on a
loaded 2-core box), so the cases share ONE process that calls the CLI's ``main(argv)`` once per
case with file descriptors 1 and 2 captured per case and a fresh warning registry per case
(``warnings.catch_warnings``): what a process of its own prints. A few cases also run as processes
of their own, and must print exactly the same (:data:`OWN_PROCESS`). The data files are written
here from numbers (no ../shared); the Hugging Face cache is an empty folder of our own
(``HF_HOME``) with the hub switched off (``HF_HUB_OFFLINE=1``): nothing here reaches the network.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

from cmm_lightning.errors import CMMInputError

from .helpers import ROOT
from .helpers.tables import book_frame

LOB_STEM = "TEST_2020-01-02_34200000_57600000"


# ------------------------------------------------------------------ data written from numbers
def lobster_pair(folder: Path, n: int = 200, depth: int = 2, edit=None) -> Path:
    """A valid LOBSTER pair of ``n`` rows (``depth`` levels, no header) in ``folder``; ``edit(ob, msg)``
    changes the rows (lists of strings) first. Returns the orderbook path."""
    rng = np.random.default_rng(1)
    bid = 2_000_000 + 100 * np.cumsum(rng.integers(-1, 2, n))
    ob, msg = [], []
    for i in range(n):
        row = []
        for k in range(depth):
            row += [bid[i] + 100 * (1 + i % 2) + 100 * k, rng.integers(1, 500), bid[i] - 100 * k, rng.integers(1, 500)]
        ob.append([str(int(x)) for x in row])
        kind = int(rng.choice([1, 3, 4]))
        msg.append([f"{34200 + 0.01 * (i + 1):.9f}", str(kind), str(1000 + i), str(int(rng.integers(1, 100))),
                    str(int(bid[i])), str(int(rng.choice([-1, 1])))])
    if edit is not None:
        edit(ob, msg)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{LOB_STEM}_orderbook_{depth}.csv"
    path.write_text("".join(",".join(r) + "\n" for r in ob))
    (folder / f"{LOB_STEM}_message_{depth}.csv").write_text("".join(",".join(r) + "\n" for r in msg))
    return path


def cell(which: str, row: int, col: int, value: str):
    """An edit of :func:`lobster_pair`: 1-based ``row`` and ``col`` of the orderbook or message file."""
    def edit(ob, msg):
        (ob if which == "orderbook" else msg)[row - 1][col - 1] = value
    return edit


def short_row(ob, msg):
    ob[49] = ob[49][:-1]  # row 50 has 7 of its 8 columns


def execution(size: str):
    def edit(ob, msg):
        msg[29][1], msg[29][3] = "4", size  # row 30: an execution of `size` shares
    return edit


def time_back(ob, msg):
    msg[69][0] = "34200.000000001"  # row 70 before row 69


def constant_csv(path: Path, rows: int = 2000) -> Path:
    """2,000 identical rows: a book that never moves."""
    header = "ts,bid_px_1,bid_sz_1,ask_px_1,ask_sz_1,last_px,volume"
    path.write_text(header + "\n" + "1000,99.99,50,100.01,50,100.00,5\n" * rows)
    return path


def msg_file(folder: str) -> str:
    return f"{folder}/{LOB_STEM}_message_2.csv"


def ob_file(folder: str) -> str:
    return f"{folder}/{LOB_STEM}_orderbook_2.csv"


# ------------------------------------------------------------------ the table of bad inputs
# id: (overrides with {d} = the data folder, regex the one stderr line must match, what it must name)
LOB = ["data.source=lobster", "data.levels=2"]
CASES = {
    # 1. teacher.model: registered, a path, or in the local HF cache; the hub only when asked for
    "teacher_model_typo": (["teacher.model=smollm2-135m"],
                           r"teacher\.model='smollm2-135m' is not a registered choice; did you mean "
                           r"'smollm2-135m-instruct'\?", ["teacher.model"]),
    "teacher_model_not_cached": (["teacher.model=SomeOrg/no-such-model"],
                                 r"teacher\.model='SomeOrg/no-such-model' is not a registered name, a local file "
                                 r"or folder, or a model in the local Hugging Face cache .*"
                                 r"teacher\.allow_download=true",
                                 ["teacher.model", "{d}/hf/hub"]),
    "teacher_model_no_path": (["teacher.model=./models/nope"],
                              r"teacher\.model=\./models/nope: no such file or folder", ["teacher.model"]),
    # 2. run.dir an existing file, or below one
    "run_dir_is_file": (["run.dir={d}/a_file"], r"run\.dir=\S+/a_file is an existing file, not a folder", ["run.dir"]),
    "run_dir_below_file": (["run.dir={d}/a_file/run"], r"run\.dir=\S+/a_file/run lies below \S+/a_file, which is a "
                                                       r"file", ["run.dir"]),
    # 3. a --config file that is not a mapping of keys
    "config_list": (["--config", "{d}/list.yaml"], r"list\.yaml: the top level must be a mapping of config keys.*"
                                                  r"got a list", ["{d}/list.yaml"]),
    "config_scalar": (["--config", "{d}/scalar.yaml"], r"scalar\.yaml: the top level must be a mapping of config "
                                                      r"keys.*got a number \('42'\)", ["{d}/scalar.yaml"]),
    # 4. teacher.max_windows
    "teacher_max_windows_0": (["teacher.max_windows=0"], r"teacher\.max_windows must be >= 1 or null .*got 0",
                              ["teacher.max_windows"]),
    "teacher_max_windows_neg": (["teacher.max_windows=-4"], r"teacher\.max_windows must be >= 1 or null .*got -4",
                                ["teacher.max_windows"]),
    # 5. degenerate data, said at prepare
    "constant_book": (["data.source=csv", "data.path={d}/constant.csv"],
                      r"constant\.csv: the mid price never moves \(2,000 rows", ["{d}/constant.csv"]),
    "constant_target": (["data.source=csv", "data.path={d}/no_volume.csv"],
                        r"no_volume\.csv: target 'volume' is 0 in every one of the \S+ train windows \(nothing "
                        r"traded: the table has no 'volume' column", ["{d}/no_volume.csv"]),
    # 6. tick size
    "tick_size_0": (["data.tick_size=0"], r"data\.tick_size must be a positive number .*got 0", ["data.tick_size"]),
    "tick_size_neg": (["data.tick_size=-0.01"], r"data\.tick_size must be a positive number .*got -0\.01",
                      ["data.tick_size"]),
    # 7. LOBSTER cells: file, row, column
    "lobster_empty_cell": (LOB + ["data.path={d}/lob_empty"], r"orderbook_2\.csv: row 100: column 3 \(bid_price_1\) "
                                                             r"is empty$", [ob_file("{d}/lob_empty")]),
    "lobster_not_a_number": (LOB + ["data.path={d}/lob_text"], r"orderbook_2\.csv: row 120: column 6 \(ask_size_2\) "
                                                              r"'12a' is not an integer$", [ob_file("{d}/lob_text")]),
    "lobster_short_row": (LOB + ["data.path={d}/lob_short"], r"orderbook_2\.csv: row 50: 7 columns, expected 8 like "
                                                            r"row 1$", [ob_file("{d}/lob_short")]),
    "lobster_msg_negative_size": (LOB + ["data.path={d}/lob_neg_size"], r"message_2\.csv: row 30: column 4 \(size\) "
                                                                       r"-5 is a negative size$",
                                  [msg_file("{d}/lob_neg_size")]),
    "lobster_msg_bad_size": (LOB + ["data.path={d}/lob_text_size"], r"message_2\.csv: row 30: column 4 \(size\) "
                                                                   r"'x1' is not an integer$",
                             [msg_file("{d}/lob_text_size")]),
    "lobster_msg_time_back": (LOB + ["data.path={d}/lob_time"], r"message_2\.csv: row 70: time 34200\.000000001 in "
                                                               r"column 1 is before row 69's",
                              [msg_file("{d}/lob_time")]),
    # 8. LOBSTER types 1-7, directions -1 / 1
    "lobster_type_9": (LOB + ["data.path={d}/lob_type"], r"message_2\.csv: row 40: column 2 \(type\) 9 is not a "
                                                        r"LOBSTER message type \(1-7\)$", [msg_file("{d}/lob_type")]),
    "lobster_direction_0": (LOB + ["data.path={d}/lob_dir"], r"message_2\.csv: row 41: column 6 \(direction\) 0 is "
                                                            r"not a LOBSTER direction", [msg_file("{d}/lob_dir")]),
    # 9. data.max_windows, data.split
    "data_max_windows_0": (["data.max_windows=0"], r"data\.max_windows must be >= 1 or null .*got 0",
                           ["data.max_windows"]),
    "data_max_windows_neg": (["data.max_windows=-5"], r"data\.max_windows must be >= 1 or null .*got -5",
                             ["data.max_windows"]),
    "data_split_sum": (["data.split=[0.5,0.2,0.2]"], r"data\.split=\[0\.5,0\.2,0\.2\] sums to 0\.9; the train, val "
                                                     r"and test fractions must sum to 1", ["data.split"]),
    # 10. a table shallower than an explicit data.levels (unset, it is inferred: test below)
    "levels_too_deep": (["data.source=csv", "data.path={d}/one_level.csv", "data.levels=3"],
                        r"one_level\.csv: missing column 'bid_px_2'.*the table has 1 level but data\.levels=3: set "
                        r"data\.levels=1 or leave it unset", ["{d}/one_level.csv", "data.levels"]),
    # 11. a value given to a config group
    "group_logger": (["logger=wandb"], r"command line: 'logger' is a group of settings, not a value \(got 'wandb'\).*"
                                       r"did you mean logger\.kind=wandb\?", ["logger"]),
    "group_data": (["data=csv"], r"'data' is a group of settings.*did you mean data\.source=csv\?", ["data"]),
    "group_market": (["market=x"], r"'market' is a group of settings, not a value \(got 'x'\); set its keys as "
                                   r"market\.KEY=VALUE, KEY one of policies, ", ["market"]),
    "group_in_yaml": (["--config", "{d}/group.yaml"], r"group\.yaml: 'logger' is a group of settings.*did you mean "
                                                     r"logger\.kind=wandb\?", ["{d}/group.yaml"]),
}
# caught when the data is read (prepare); every other case is caught at config load
DATA_LEVEL = {k for k in CASES if k.startswith(("lobster_", "constant_"))} | {"levels_too_deep"}
CONFIG_LEVEL = set(CASES) - DATA_LEVEL


def write_inputs(d: Path) -> None:
    """Every file the cases read."""
    (d / "a_file").write_text("not a folder\n")
    (d / "list.yaml").write_text("- data\n- teacher\n")
    (d / "scalar.yaml").write_text("42\n")
    (d / "group.yaml").write_text("logger: wandb\n")
    constant_csv(d / "constant.csv")
    _, df = book_frame(n=600, levels=1, seed=3)
    df.to_csv(d / "one_level.csv", index=False)
    df.drop(columns=["volume", "last_px"]).to_csv(d / "no_volume.csv", index=False)
    lobster_pair(d / "lob_empty", edit=cell("orderbook", 100, 3, ""))
    lobster_pair(d / "lob_text", edit=cell("orderbook", 120, 6, "12a"))
    lobster_pair(d / "lob_short", edit=short_row)
    lobster_pair(d / "lob_neg_size", edit=execution("-5"))
    lobster_pair(d / "lob_text_size", edit=execution("x1"))
    lobster_pair(d / "lob_time", edit=time_back)
    lobster_pair(d / "lob_type", edit=cell("message", 40, 2, "9"))
    lobster_pair(d / "lob_dir", edit=cell("message", 41, 6, "0"))
    fake_hub_model(d / "hf" / "hub", "SomeOrg/cached-model")


def fake_hub_model(hub: Path, repo_id: str) -> None:
    """``repo_id`` as the Hugging Face cache lays out a downloaded model (config + weights, refs/main)."""
    folder = hub / f"models--{repo_id.replace('/', '--')}"
    snap = folder / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0" * 40)
    (snap / "config.json").write_text("{}")
    (snap / "model.safetensors").write_bytes(b"")


def cli_env(d: Path) -> dict:
    return {**os.environ, "HF_HOME": str(d / "hf"), "HF_HUB_CACHE": str(d / "hf" / "hub"), "HF_HUB_OFFLINE": "1",
            "CMM_CACHE": str(d / "cmm_cache"), "OMP_NUM_THREADS": "1"}


def run_cli(args: list[str], d: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cmm_lightning", *args], capture_output=True, text=True,
                          cwd=ROOT, env=cli_env(d), timeout=300)


# one process, main(argv) per case: exit code, stdout and stderr of each as a process of its own would give
BATCH = r"""
import json, os, sys, tempfile, traceback, warnings
from cmm_lightning.__main__ import main

res, keep_out, keep_err = {}, os.dup(1), os.dup(2)
for name, argv in json.loads(sys.argv[1]).items():
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
        try:
            with warnings.catch_warnings():  # a fresh warning registry: each case warns as a new process would
                try:
                    rc = main(argv)
                except SystemExit as e:
                    rc = e.code if isinstance(e.code, int) else 1
                except BaseException:
                    traceback.print_exc()
                    rc = 1
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os.dup2(keep_out, 1); os.dup2(keep_err, 2)
        out.seek(0); err.seek(0)
        res[name] = [rc, out.read(), err.read()]
print(json.dumps(res))
"""
# also run as processes of their own: a config-file case, a command-line case, a data-level case
OWN_PROCESS = ("config_list", "teacher_model_not_cached", "lobster_type_9")
# inputs that must pass (in the same process as the data-level cases: they need its imports too)
GOOD = {
    "depth_inferred": ["prepare", "data.source=csv", "data.path={d}/one_level.csv", "run.dir={d}/runs/depth_inferred"],
    "hub_cached": ["prepare", "--print-config", "teacher.model=SomeOrg/cached-model"],
    "hub_allowed": ["prepare", "--print-config", "teacher.model=SomeOrg/no-such-model", "teacher.allow_download=true"],
}


def case_args(name: str, d: Path) -> tuple[list[str], Path]:
    args = [a.replace("{d}", str(d)) for a in CASES[name][0]]
    run = d / "runs" / name
    if not any(a.startswith("run.dir=") for a in args):
        args.append(f"run.dir={run}")
    return ["prepare", *args], run


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad_inputs")
    write_inputs(d)
    return d


@pytest.fixture(scope="module")
def results(inputs) -> dict:
    """Every case of :data:`CASES` and :data:`GOOD` through the CLI's ``main`` in one process:
    id -> (returncode, stdout, stderr, run.dir); and ``own:<id>`` for each of :data:`OWN_PROCESS`
    as ``python -m cmm_lightning`` of its own (with its own run.dir), run at the same time."""
    def batch():
        order = sorted(CONFIG_LEVEL) + sorted(DATA_LEVEL)  # config errors first: before the heavy imports
        argv = {name: case_args(name, inputs)[0] for name in order}
        argv.update({f"good:{k}": [a.replace("{d}", str(inputs)) for a in v] for k, v in GOOD.items()})
        proc = subprocess.run([sys.executable, "-c", BATCH, json.dumps(argv)], capture_output=True, text=True,
                              cwd=ROOT, env=cli_env(inputs), timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return {name: (rc, out, err, inputs / "runs" / name.split(":")[-1]) for name, (rc, out, err) in
                json.loads(proc.stdout.splitlines()[-1]).items()}

    def own(name: str):
        args, run = case_args(name, inputs)
        if f"run.dir={run}" in args:  # its own run.dir
            run = run.with_name(f"{name}-own")
            args = [a for a in args if not a.startswith("run.dir=")] + [f"run.dir={run}"]
        proc = run_cli(args, inputs)
        return {f"own:{name}": (proc.returncode, proc.stdout, proc.stderr, run)}

    with ThreadPoolExecutor(1 + len(OWN_PROCESS)) as pool:
        jobs = [pool.submit(batch)] + [pool.submit(own, name) for name in OWN_PROCESS]
        out: dict = {}
        for job in jobs:
            out.update(job.result())
    return out


def check_one_line(name: str, rc: int, out: str, err: str, run: Path, d: Path) -> None:
    _, pattern, named = CASES[name]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (name, rc, err[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, err[-3000:])
    assert re.search(pattern, lines[0]), (name, lines[0])
    for what in named:
        assert what.replace("{d}", str(d)) in lines[0], (name, what, lines[0])
    if name in CONFIG_LEVEL:  # caught at config load: nothing printed, run.dir not even created
        assert out == "" and not run.exists(), (name, out)
    elif run.exists():  # caught at prepare: the config that was run, nothing else (no summary, no temp file)
        assert set(os.listdir(run)) <= {"config.yaml", ".lock"}, (name, sorted(os.listdir(run)))
        if (run / "config.yaml").exists():
            assert yaml.safe_load((run / "config.yaml").read_text())["data"]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line(name, results, inputs):
    check_one_line(name, *results[name], inputs)


@pytest.mark.parametrize("name", OWN_PROCESS)
def test_a_process_of_its_own_prints_the_same(name, results, inputs):
    """The shared-process emulation prints what ``python -m cmm_lightning`` alone prints."""
    rc, out, err, run = results[f"own:{name}"]
    check_one_line(name, rc, out, err, run, inputs)
    assert (rc, out, err.replace(f"{name}-own", name)) == results[name][:3]


def test_run_dir_file_untouched(results, inputs):
    assert (inputs / "a_file").read_text() == "not a folder\n"


# ------------------------------------------------------------------ what is NOT an error
def test_depth_inferred_when_levels_unset(results, inputs):
    """10: a 1-level table under the default: its depth, said in one line, and the windows of data.levels=1."""
    rc, out, err, run = results["good:depth_inferred"]
    assert rc == 0 and err == "", err[-3000:]
    said = [ln for ln in out.splitlines() if "data.levels" in ln]
    assert said == [f"data.levels not set: {inputs}/one_level.csv has 1 book level, using data.levels=1"]
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["levels"] == 1 and summary["n_snapshots"] == 600


@pytest.mark.parametrize("name", ["hub_cached", "hub_allowed"])
def test_hub_ids_cached_or_allowed_pass_config_load(name, results):
    """1: a hub id in the local HF cache (a fake one here) or with teacher.allow_download=true passes
    config load; nothing is downloaded (--print-config stops there, and the hub is off)."""
    rc, out, err, _ = results[f"good:{name}"]
    assert rc == 0 and err == "", err[-3000:]
    assert yaml.safe_load(out)["teacher"]["model"] == GOOD[name][2].split("=", 1)[1]


def test_resolve_model_hub_rules(monkeypatch, tmp_path):
    """models.resolve_model: a cached hub id loads offline (local_only), an uncached one is refused
    unless downloads are allowed; no network either way."""
    from huggingface_hub import constants

    from cmm_lightning.teacher import models

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CMMInputError, match=r"teacher\.model='Org/absent'.*teacher\.allow_download=true"):
        models.resolve_model("Org/absent", allow_download=False)
    assert models.resolve_model("Org/absent", allow_download=True).local_only is False
    fake_hub_model(tmp_path, "Org/present")
    spec = models.resolve_model("Org/present", allow_download=False)
    assert spec.kind == "hub" and spec.local_only and models._hub_kw(spec) == {"local_files_only": True}
