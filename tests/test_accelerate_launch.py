"""``accelerate launch`` of the tiny SFT and GRPO recipes: 2 CPU processes, DDP over gloo.

Each launched run is compared with the single-process run of the same config (in this process):

- what is exact: the global token counts in the logs (each rank counts its share, the counts are
  summed over ranks), GRPO's first-step rollouts and everything derived from them (each rank samples
  its share of the step's problems with the same per-prompt seeds), and a killed-and-resumed
  launched run against an uninterrupted launched one (weights bit for bit);
- what is close, not equal: losses and weights. Each rank pads and reduces its own share of the
  batch, and DDP sums the two shares' gradients, so float reduction order differs from one process:
  first-step loss equal to ~1e-6, weights after training within ~1e-5 (the updates themselves are
  ~1e-3 or more), final loss within 1%.
- only the main process writes: one log row per checkpoint step, one final model, no leftovers, the
  final message printed once.

Plain runs (no launcher) never build an ``Accelerator``: the other tests cover them unchanged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate", reason="accelerate is not installed (pip install accelerate)")

from conftest import SMALL_ARITH  # the task options easy_ckpt was trained on
from deliberate.models.tiny import load_tiny
from deliberate.policy.distributed import Single, launched, setup, shard_bounds

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONWARNINGS": "ignore"}
for _k in [k for k in ENV if k.startswith("ACCELERATE_") or k in ("WORLD_SIZE", "RANK", "LOCAL_RANK")]:
    del ENV[_k]
TIMEOUT = 240


def launch_cmd(argv: list[str], config: str = "cpu_ddp_2.yaml") -> list[str]:
    # --main_process_port 0: a free port, so concurrent test runs do not collide on 29500
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
            "--main_process_port", "0", "-m", "deliberate", *argv]


def launch(argv: list[str], log: Path) -> str:
    with open(log, "ab") as err:
        p = subprocess.run(launch_cmd(argv), env=ENV, stdout=subprocess.PIPE, stderr=err, timeout=TIMEOUT,
                           cwd=ROOT, check=False)
    assert p.returncode == 0, log.read_text(errors="replace")[-4000:]
    return p.stdout.decode(errors="replace")


def launch_and_kill(argv: list[str], when, log: Path) -> bool:
    """Start a launched run in its own process group; SIGKILL the whole group (launcher, torchrun,
    both ranks) as soon as ``when()`` holds. True if it was killed before finishing."""
    with open(log, "ab") as err:
        proc = subprocess.Popen(launch_cmd(argv), env=ENV, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT,
                                start_new_session=True)
        deadline = time.monotonic() + TIMEOUT
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if when():
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                    return True
                time.sleep(0.01)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 0, log.read_text(errors="replace")[-4000:]
    return False


def jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    model, _ = load_tiny(path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def no_leftovers(out: Path) -> None:
    temps = [p.name for p in out.rglob(".*") if ".tmp" in p.name or ".old" in p.name]
    assert not temps, f"temporary files left behind: {temps}"


def _ckpt_step(out: Path) -> int:
    try:
        return json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


# --- the plumbing, without a launcher -----------------------------------------------------------


def test_plain_process_is_single_and_shards_cover_the_batch():
    assert not launched()
    d = setup("sft")
    assert isinstance(d, Single) and not d.parallel and d.is_main and d.world_size == 1
    items = list(range(10))
    assert d.shard(items) is items and d.sum(3, 4.5) == (3, 4.5) and d.gather(items) is items
    for n in (0, 1, 5, 16, 17):
        for w in (1, 2, 3, 8):
            parts = [list(range(n))[slice(*shard_bounds(n, r, w))] for r in range(w)]
            assert [i for part in parts for i in part] == list(range(n))  # contiguous, in rank order, nothing lost
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_sharded_launch_types_are_refused(monkeypatch):
    """FSDP / DeepSpeed would shard the model and its optimizer: the tiny recipes refuse them."""
    import accelerate

    from deliberate.errors import DeliberateError
    from deliberate.policy.distributed import Accelerated

    class FakeAccelerator:
        def __init__(self, cpu=False):
            self.distributed_type = accelerate.DistributedType.FSDP

    monkeypatch.setattr(accelerate, "Accelerator", FakeAccelerator)
    with pytest.raises(DeliberateError, match="FSDP is not supported"):
        Accelerated("sft")


def test_shipped_configs_are_valid_accelerate_configs(monkeypatch):
    """Every file in configs/accelerate/ loads with accelerate's own loader and launch validation, with
    the process layout its name promises; the FSDP / DeepSpeed ones also build accelerate's plugin
    from the environment their launch sets (what ``accelerate launch`` would hand each process)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType, patch_environment

    expect = {"cpu_ddp_2.yaml": (DistributedType.MULTI_GPU, 2, 1), "gpu_1.yaml": (DistributedType.NO, 1, 1),
              "gpu_ddp_8.yaml": (DistributedType.MULTI_GPU, 8, 1), "fsdp_8.yaml": (DistributedType.FSDP, 8, 1),
              "deepspeed_zero2_8.yaml": (DistributedType.DEEPSPEED, 8, 1),
              "multinode_2x8.yaml": (DistributedType.MULTI_GPU, 16, 2)}
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(expect)
    for name, (kind, nproc, nmach) in expect.items():
        c = load_config_from_file(str(CONFIGS / name))
        assert (c.distributed_type, c.num_processes, c.num_machines) == (kind, nproc, nmach), name
    try:
        from accelerate.commands.launch import _validate_launch_command, launch_command_parser
        from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
    except ImportError:
        pytest.skip("accelerate's launch internals moved; the configs loaded fine")
    for name in expect:
        args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "-m", "deliberate"])
        args, defaults, mp_from_config = _validate_launch_command(args)
        assert args.num_processes == expect[name][1]
        if name == "fsdp_8.yaml":
            from accelerate.utils import FullyShardedDataParallelPlugin

            env = prepare_multi_gpu_env(args)
            with patch_environment(**{k: v for k, v in env.items() if k.startswith(("FSDP_", "ACCELERATE_"))}):
                p = FullyShardedDataParallelPlugin()
            assert p.fsdp_version == 2 and p.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
        if name == "deepspeed_zero2_8.yaml":
            from accelerate.utils import DeepSpeedPlugin

            args.deepspeed_fields_from_accelerate_config = ",".join(
                list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else []))
            _, env = prepare_deepspeed_cmd_env(args)
            with patch_environment(**{k: v for k, v in env.items() if k.startswith("ACCELERATE_")}):
                p = DeepSpeedPlugin()
            assert p.zero_stage == 2 and env["ACCELERATE_MIXED_PRECISION"] == "bf16"


# --- launched runs ------------------------------------------------------------------------------

SFT_ARGV = ["train", "sft", "--task-arg", "max_ops=2", "--steps", "12", "--n-train", "200", "--batch-size", "16",
            "--d-model", "48", "--n-layers", "2", "--n-heads", "2", "--warmup", "3", "--lr", "5e-3",
            "--checkpoint-every", "1"]


def test_sft_two_processes_match_one_and_resume_exactly(tmp_path):
    from deliberate.cli import main_cli

    one, two, killed, log = tmp_path / "one", tmp_path / "two", tmp_path / "killed", tmp_path / "stderr.log"
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main_cli(SFT_ARGV + ["--out", str(one)]) == 0  # the single-process run, same seed
    finally:
        torch.set_num_threads(threads)
    t_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    stdout = launch(SFT_ARGV + ["--out", str(two)], log)
    t_two = time.perf_counter() - t0
    print(f"\nsft 12 steps: 1 process (in-process) {t_one:.1f}s, 2 processes (accelerate launch) {t_two:.1f}s")
    assert stdout.count("model written to") == 1 and "by 2 processes" in stdout  # printed by the main rank only
    assert (two / "model" / "model.safetensors").exists()
    no_leftovers(two)

    r1, r2 = jsonl(one / "train_log.jsonl"), jsonl(two / "train_log.jsonl")
    assert [r["step"] for r in r2] == list(range(1, 13))  # one row per checkpoint step: one writer
    # global token counts: each rank counts its share, summed over ranks = the single-process count
    assert [r["tokens_trained"] for r in r2] == [r["tokens_trained"] for r in r1]
    assert [r["flops"] for r in r2] == [r["flops"] for r in r1]
    assert r2[0]["loss"] == pytest.approx(r1[0]["loss"], abs=2e-5)  # step 1: same weights, same batch
    assert r2[-1]["loss"] == pytest.approx(r1[-1]["loss"], rel=0.01)
    assert r1[-1]["loss"] < r1[0]["loss"] - 0.1  # it trained
    w1, w2 = weights(one / "model"), weights(two / "model")
    assert max_diff(w1, w2) < 1e-5
    assert json.loads((two / "compute.json").read_text())["tokens_trained"] == r1[-1]["tokens_trained"]

    # kill the launched run (launcher and both ranks) mid-way, rerun the same command: it resumes from
    # the checkpoint and ends bit-for-bit where the uninterrupted launched run ended
    assert launch_and_kill(SFT_ARGV + ["--out", str(killed)], lambda: _ckpt_step(killed) >= 6, log)
    assert 6 <= _ckpt_step(killed) < 12
    launch(SFT_ARGV + ["--out", str(killed)], log)
    wk = weights(killed / "model")
    assert all(torch.equal(wk[k], w2[k]) for k in w2)
    def strip(rows):
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]

    assert strip(jsonl(killed / "train_log.jsonl")) == strip(r2)
    no_leftovers(killed)


# dapo: ranks hold different token counts; micro_batch 4: gradient accumulation under DDP (no_sync until each
# rank's last micro-batch; the ranks' shares, and so their numbers of micro-batches, may differ)
@pytest.mark.parametrize("loss_type,micro_batch", [("grpo", 0), ("dapo", 0), ("dapo", 4)])
def test_grpo_two_processes_match_one(easy_ckpt, tmp_path, loss_type, micro_batch):
    from deliberate.train.grpo import GRPOConfig, run_grpo

    base = {"init": str(easy_ckpt), "task_options": SMALL_ARITH, "n_train": 32, "steps": 2, "problems_per_step": 6,
            "group": 4, "lr": 1e-3, "minibatches": 2, "credit": "steps", "eval_every": 1, "checkpoint_every": 1,
            "eval_problems": 8, "eval_n": 2, "loss_type": loss_type, "micro_batch": micro_batch}  # per-token (step-credit) advantages through DDP
    one, two, log = tmp_path / "one", tmp_path / "two", tmp_path / "stderr.log"
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = run_grpo(GRPOConfig(**base, out=str(one)), progress=False)
    finally:
        torch.set_num_threads(threads)
    t_one = time.perf_counter() - t0
    argv = ["train", "grpo", "--init", str(easy_ckpt), "--n-train", "32", "--steps", "2", "--problems-per-step", "6",
            "--group", "4", "--lr", "1e-3", "--minibatches", "2", "--credit", "steps", "--eval-every", "1", "--checkpoint-every", "1", "--eval-problems", "8",
            "--eval-n", "2", "--loss-type", loss_type, "--micro-batch", str(micro_batch), "--out", str(two)] + [a for k, v in SMALL_ARITH.items() for a in ("--task-arg", f"{k}={v}")]
    t0 = time.perf_counter()
    stdout = launch(argv, log)
    t_two = time.perf_counter() - t0
    print(f"\ngrpo 2 steps: 1 process (in-process) {t_one:.1f}s, 2 processes (accelerate launch) {t_two:.1f}s")
    assert stdout.count("summary:") == 1
    got = json.loads((two / "summary.json").read_text())
    assert got["config"] == {**ref["config"], "out": str(two)}
    r1, r2 = ref["iterations"], got["iterations"]
    assert [r["iteration"] for r in r2] == [0, 1, 2]
    assert r2[0]["eval"] == r1[0]["eval"]  # the seed model, evaluated by the main process
    # step 1 samples from identical weights: the same rollouts, sharded by problem and gathered,
    # hence the same rewards, advantages and (global) token counts
    exact = ("tokens_sampled", "prompt_tokens", "tokens_trained", "tokens_forward", "train_reward", "groups_used",
             "groups", "flops")
    assert {k: r2[1][k] for k in exact} == {k: r1[1][k] for k in exact}
    assert r1[1]["groups_used"] > 0 and r1[1]["tokens_trained"] > 0  # the step trained
    assert r2[2]["groups"] == r1[2]["groups"] == 6
    seed, w1, w2 = weights(easy_ckpt), weights(one / "checkpoint"), weights(two / "checkpoint")
    assert max_diff(seed, w1) > 1e-4  # the updates are real ...
    assert max_diff(w1, w2) < 1e-5  # ... and the same up to float reduction order
    assert json.loads((two / "checkpoint" / "trainer_state.json").read_text())["step"] == 2
    no_leftovers(two)
