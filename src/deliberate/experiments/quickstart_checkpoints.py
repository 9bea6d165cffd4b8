"""The quickstart's shipped checkpoints: built from scratch by the project's own commands, packed into the
package as float16, installed as ordinary float32 checkpoints.

    deliberate quickstart --from-scratch                     # rebuild them (tens of minutes on 2 cores), then run on them
    deliberate quickstart --from-scratch --seed 1 --out runs/qs-seed1

What ships in ``deliberate/assets/quickstart/`` (docs/checkpoints.md: commands, seeds, data, sha256, times):

- ``policy/`` — the tiny policy: today's quickstart SFT model (arith at the quickstart difficulty, 450 steps,
  seed 0), so every doc that builds seed models with ``deliberate quickstart --seed S`` still means it;
- ``backbone/`` — the frozen LM both verifiers read: the policy trained 200 more steps on fresh gold chains,
  so it checks the policy's arithmetic better than the policy does;
- ``lprm.json`` — the likelihood PRM's calibration (the backbone's step log-probs fitted to Monte-Carlo step
  labels of the policy's own solutions); ``lorm.json`` — the likelihood ORM on the same LM and features, fitted
  to the solutions' outcomes (:mod:`deliberate.rewards.likelihood`);
- ``manifest.json`` — how they were built and the sha256 of every file.

Why float16: it halves the size (two 0.8M-parameter models in ~3.3 MB); :func:`install` widens them back to
float32, so everything downstream loads an ordinary checkpoint (the effect on answers is measured in
docs/checkpoints.md). Why the verifier stages run on one thread: their bytes then do not depend on how many
cores the machine has; the policy stage uses ``--threads`` (default all cores), as ``deliberate quickstart
--seed S`` always did, so its model stays byte-identical to that command's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from deliberate.errors import DeliberateError
from deliberate.models.tiny import TinyBackend, TinyConfig
from deliberate.records import write_json_atomic
from deliberate.rewards.likelihood import CALIBRATION, train_lprm
from deliberate.rewards.mc_labels import MCConfig, label_mc
from deliberate.tasks import get_task
from deliberate.train.sft import SFTConfig, train_sft

# The default recipe: chosen so every training seed lands greedy in the 20-85% band with a wide
# pass@16 gap (docs/RESULTS.md records the spread over seeds).
DEFAULT_TASK_OPTIONS = {"min_ops": 1, "max_ops": 3, "max_operand": 15}
DEFAULT_STEPS = 450
DEFAULT_MODEL = TinyConfig(d_model=128, n_layers=4, n_heads=4, n_kv_heads=4)
#: where the shipped checkpoints live inside the package
ASSETS = "quickstart"
MODEL_FILES = ("config.json", "generation_config.json", "char_tokenizer.json")
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class BuildConfig:
    """Sizes and seeds of a from-scratch build; the defaults are what ships (docs/checkpoints.md says how the
    backbone's size was chosen on validation problems). Seeds derive from ``seed`` so another seed rebuilds a
    whole independent set."""

    seed: int = 0
    policy_steps: int = DEFAULT_STEPS
    policy_train: int = 20000  # SFTConfig's default: today's quickstart policy
    backbone_steps: int = 200  # more SFT from the policy on fresh gold chains (chosen on validation problems)
    backbone_train: int = 20000
    label_problems: int = 400
    label_samples: int = 4
    label_rollouts: int = 4

    def __post_init__(self) -> None:
        for name, v in asdict(self).items():
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "seed" else 1):
                raise DeliberateError(f"quickstart build: {name} must be an integer >= {0 if name == 'seed' else 1} "
                                      f"(got {v!r})")

    def policy(self, out: Path) -> SFTConfig:
        """Today's ``deliberate quickstart --seed S`` SFT run, field for field."""
        return SFTConfig(task="arith", task_options=dict(DEFAULT_TASK_OPTIONS), n_train=self.policy_train,
                         steps=self.policy_steps, model=DEFAULT_MODEL, seed=self.seed, out=str(out / "sft"))

    def backbone(self, out: Path) -> SFTConfig:
        """The policy trained further on gold chains of its own problems (data seed 100 + S): the cheapest LM
        that checks the policy's arithmetic better than the policy itself (docs/checkpoints.md)."""
        return SFTConfig(task="arith", task_options=dict(DEFAULT_TASK_OPTIONS), n_train=self.backbone_train,
                         steps=self.backbone_steps, model=DEFAULT_MODEL, init_from=str(out / "sft" / "model"),
                         seed=100 + self.seed, checkpoint_every=50, out=str(out / "backbone"))

    def labels(self, out: Path, policy: Path) -> MCConfig:
        # train-split problems of their own seed: not the policy's training problems (seed S) nor the backbone's
        return MCConfig(task="arith", task_options=dict(DEFAULT_TASK_OPTIONS), split="train",
                        n_problems=self.label_problems, samples=self.label_samples, rollouts=self.label_rollouts,
                        temperature=1.0, seed=1000 + self.seed, model=str(policy), out=str(out / "labels"))

    def commands(self, out: Path) -> list[str]:
        """The CLI commands each stage equals (the build calls the functions behind them)."""
        task = "--task arith " + " ".join(f"--task-arg {k}={v}" for k, v in DEFAULT_TASK_OPTIONS.items())
        b, pol = self.backbone(out), Path(self.policy(out).out) / "model"
        lab = self.labels(out, pol)
        return [
            f"deliberate train sft {task} --n-train {self.policy_train} --steps {self.policy_steps} --seed {self.seed} "
            f"--out {out / 'sft'}",
            f"deliberate train sft {task} --init-from {b.init_from} --n-train {b.n_train} --steps {b.steps} --seed {b.seed} "
            f"--checkpoint-every {b.checkpoint_every} --threads 1 --out {b.out}",
            f"deliberate label mc --model {pol} {task} --n-problems {lab.n_problems} --samples {lab.samples} "
            f"--rollouts {lab.rollouts} --seed {lab.seed} --threads 1 --out {lab.out}",
            f"deliberate train lprm {task} --model {b.out}/model --labels {lab.out} --threads 1 --out {out / 'lprm'}",
            f"deliberate train lprm {task} --model {b.out}/model --labels {lab.out} --target outcome --threads 1 "
            f"--out {out / 'lorm'}",
        ]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def shipped_dir() -> Path:
    """The package's own copy of the checkpoints (``deliberate/assets/quickstart``)."""
    return Path(str(files("deliberate"))) / "assets" / ASSETS


def convert_weights(src: Path, dst: Path, dtype: torch.dtype) -> None:
    """``src``'s safetensors with every floating tensor cast to ``dtype`` (names sorted: a fixed byte layout)."""
    tensors = load_file(str(src))
    save_file({k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sorted(tensors.items())},
              str(dst), metadata={"format": "pt"})


def copy_model(src: Path, dst: Path, dtype: torch.dtype) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copyfile(src / name, dst / name)
    convert_weights(src / WEIGHTS, dst / WEIGHTS, dtype)


def portable_calibration(path: Path, lm: str) -> dict[str, Any]:
    """A calibration as shipped: the LM and labels named by their role, not by the build's paths."""
    cal = json.loads(Path(path).read_text())
    return {**cal, "lm": lm, "labels": "labels"}


def pack(build_dir: Path, dest: Path, cfg: BuildConfig) -> dict[str, Any]:
    """Write the shipped form of a build (``sft/model``, ``backbone/model``, ``lprm``, ``lorm`` under
    ``build_dir``) into ``dest``: float16 models, the two calibrations, and the manifest with every sha256."""
    build_dir, dest = Path(build_dir), Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    copy_model(build_dir / "sft" / "model", dest / "policy", torch.float16)
    copy_model(build_dir / "backbone" / "model", dest / "backbone", torch.float16)
    for kind in ("lprm", "lorm"):
        cal = portable_calibration(build_dir / kind / CALIBRATION, "backbone")
        (dest / f"{kind}.json").write_text(json.dumps(cal, indent=1, sort_keys=True) + "\n")
    files_ = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    manifest = {"build": asdict(cfg), "task": "arith", "task_options": DEFAULT_TASK_OPTIONS,
                "weights_dtype": "float16", "sha256": {f: sha256(dest / f) for f in files_}}
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def verify(assets: Path) -> dict[str, Any]:
    """The manifest of ``assets``, after checking every file it lists against its sha256."""
    assets = Path(assets)
    try:
        manifest = json.loads((assets / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DeliberateError(f"quickstart checkpoints: {assets / MANIFEST} unreadable ({e})") from None
    for name, digest in manifest["sha256"].items():
        f = assets / name
        if not f.is_file() or sha256(f) != digest:
            raise DeliberateError(f"quickstart checkpoints: {f} is missing or not the file its manifest names "
                                  "(reinstall the package, or rebuild with `deliberate quickstart --from-scratch`)")
    return manifest


def install(assets: Path, dest: Path) -> dict[str, Path]:
    """Unpack checked ``assets`` into ``dest`` as float32 checkpoints any command loads: ``policy`` (``--model``),
    ``lprm`` and ``lorm`` (``--verifier lprm:DIR`` / ``lorm:DIR``, each holding its LM in ``lm/``)."""
    assets, dest = Path(assets), Path(dest)
    verify(assets)
    paths = {"policy": dest / "policy", "lprm": dest / "lprm", "lorm": dest / "lorm"}
    copy_model(assets / "policy", paths["policy"], torch.float32)
    for kind in ("lprm", "lorm"):
        copy_model(assets / "backbone", paths[kind] / "lm", torch.float32)
        write_json_atomic(paths[kind] / CALIBRATION, json.loads((assets / f"{kind}.json").read_text()))
    return paths


def build(cfg: BuildConfig, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Rebuild every shipped checkpoint under ``out`` (resumable: finished stages are not redone) and pack them
    into ``OUT/assets``; returns the manifest with each stage's wall time (``times``, seconds)."""
    out = Path(out)
    task = get_task("arith", **DEFAULT_TASK_OPTIONS)
    times: dict[str, float] = {}
    t = time.perf_counter()

    def done(stage: str) -> None:
        nonlocal t
        times[stage] = round(time.perf_counter() - t, 1)
        print(f"      {stage}: {times[stage]:.0f}s", flush=True)
        t = time.perf_counter()

    print(f"[1/4] policy: tiny SFT on arith gold chains ({cfg.policy_steps} steps) -> {out / 'sft'}", flush=True)
    policy = train_sft(cfg.policy(out), progress=progress)
    done("policy")
    with torch_threads(1):
        print(f"[2/4] verifier backbone: SFT, {cfg.backbone_steps} steps, 1 thread -> {out / 'backbone'}", flush=True)
        backbone = train_sft(cfg.backbone(out), progress=progress)
        done("backbone")
        lab = cfg.labels(out, policy)
        print(f"[3/4] Monte-Carlo step labels: {lab.n_problems} problems x {lab.samples} solutions x "
              f"{lab.rollouts} rollouts per step -> {lab.out}", flush=True)
        label_mc(lab, TinyBackend(policy), task=task, progress=progress)
        done("labels")
        print(f"[4/4] likelihood PRM and ORM on the backbone -> {out / 'lprm'}, {out / 'lorm'}", flush=True)
        for kind, target in (("lprm", "step"), ("lorm", "outcome")):
            train_lprm(backbone, lab.out, out / kind, task=task, progress=progress, target=target)
        done("calibrations")
    manifest = pack(out, out / "assets", cfg)
    return {**manifest, "times": times}
