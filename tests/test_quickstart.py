"""The quickstart's checkpoints: a from-scratch build at a reduced size is byte-identical when rerun, each stage
equals the CLI command it names, packing to float16 and installing round-trips, and the shipped set checks out."""

from __future__ import annotations

import json
import shlex
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deliberate.cli import main_cli
from deliberate.errors import DeliberateError
from deliberate.experiments.quickstart import QuickstartConfig, paired_difference, run_quickstart
from deliberate.experiments.quickstart_checkpoints import (
    MANIFEST,
    BuildConfig,
    build,
    install,
    shipped_dir,
    verify,
)

SMALL = BuildConfig(policy_steps=2, policy_train=64, backbone_steps=2, backbone_train=64, label_problems=2,
                    label_samples=2, label_rollouts=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qs") / "a"
    build(SMALL, out, progress=False)
    return out


def test_rebuild_is_byte_identical(built: Path, tmp_path: Path) -> None:
    again = build(SMALL, tmp_path / "b", progress=False)
    first = json.loads((built / "assets" / MANIFEST).read_text())
    assert first["sha256"] == again["sha256"]
    assert set(first["sha256"]) == {"lprm.json", "lorm.json", *(f"{m}/{f}" for m in ("policy", "backbone") for f in (
        "config.json", "generation_config.json", "char_tokenizer.json", "model.safetensors"))}
    # trained weights, not constants: a 2-step policy is not the shipped one
    shipped = json.loads((shipped_dir() / MANIFEST).read_text())["sha256"]
    assert first["sha256"]["policy/model.safetensors"] != shipped["policy/model.safetensors"]


def test_each_stage_equals_the_command_it_names(built: Path, tmp_path: Path) -> None:
    """The printed commands (docs/checkpoints.md) rebuild the same bytes through the CLI."""
    cmds = [shlex.split(c)[1:] for c in SMALL.commands(tmp_path)]
    for argv in cmds:
        assert main_cli(argv) == 0
    for rel in ("sft/model/model.safetensors", "backbone/model/model.safetensors"):
        assert (tmp_path / rel).read_bytes() == (built / rel).read_bytes(), rel
    for kind in ("lprm", "lorm"):
        a, b = (json.loads((d / kind / "calibration.json").read_text()) for d in (tmp_path, built))
        assert (a["w"], a["b"], a["target"]) == (b["w"], b["b"], b["target"])


def test_pack_and_install_round_trip(built: Path, tmp_path: Path) -> None:
    paths = install(built / "assets", tmp_path / "ck")
    full = load_file(str(built / "sft" / "model" / "model.safetensors"))
    got = load_file(str(paths["policy"] / "model.safetensors"))
    assert full.keys() == got.keys()
    for k, v in full.items():
        assert got[k].dtype == torch.float32 and torch.equal(got[k], v.half().float()), k
    assert (paths["lprm"] / "lm" / "model.safetensors").is_file()
    assert json.loads((paths["lorm"] / "calibration.json").read_text())["target"] == "outcome"
    # a changed file is refused before anything loads it
    bad = tmp_path / "bad"
    shutil.copytree(built / "assets", bad)
    (bad / "lprm.json").write_text((bad / "lprm.json").read_text().replace('"b"', '"b" ', 1))
    with pytest.raises(DeliberateError, match="lprm.json"):
        verify(bad)


def test_shipped_checkpoints_are_the_default_build_and_small() -> None:
    assets = shipped_dir()
    manifest = verify(assets)
    assert manifest["build"] == asdict(BuildConfig())
    assert manifest["weights_dtype"] == "float16"
    size = sum(f.stat().st_size for f in assets.rglob("*") if f.is_file())
    assert size < 5_000_000, size


def test_paired_difference_is_clustered_by_problem() -> None:
    d = paired_difference({"a": 1.0, "b": 0.5, "c": 1.0}, {"a": 0.0, "b": 0.5, "c": 0.0, "z": 1.0})
    assert d["problems"] == 3 and d["diff"] == pytest.approx(2 / 3)
    assert d["ci"][0] <= d["diff"] <= d["ci"][1]


def test_seed_and_steps_need_from_scratch() -> None:
    with pytest.raises(DeliberateError, match="--from-scratch"):
        run_quickstart(QuickstartConfig(seed=1, out="/nonexistent/never-written"))
