"""Convert a checkpoint from the old 3-gate layout to the 1-gate layout (ADR 0005).

Old DynamicGates read three signals (creativity, focus, stability), so their first layer weight is (32, 3); the
current model reads one modulation value, (32, 1). Migration keeps one input column (default 2, "stability", the
only signal that varied in the old runs) and leaves every other tensor untouched. It is idempotent.

    python -m plugins.tidal.migrate_checkpoint --input OLD.pth --output NEW.pth [--slice-index 2]
"""
import argparse
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from core.errors import TidalError, describe_exception
from core.io import atomic_torch_save
from plugins.tidal.Utils import cli_main

# Any key ending in a DynamicGate's first Linear weight (also under `_orig_mod.` or `module.` prefixes).
GATE_INPUT_WEIGHT = re.compile(r"(^|\.)(attn_gate|ffn_gate)\.net\.0\.weight$")


def migrate_gate_dim(state_dict: Mapping[str, torch.Tensor], slice_index: int = 2
                     ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """-> (new state dict, keys that were migrated). Gate input weights with more than one column keep only column
    `slice_index`, as (32, 1); weights already (32, 1) and all other tensors are kept as they are. The input is not
    modified."""
    migrated, keys = {}, []
    for key, tensor in state_dict.items():
        if GATE_INPUT_WEIGHT.search(key) and tensor.dim() == 2 and tensor.shape[1] > 1:
            if not 0 <= slice_index < tensor.shape[1]:
                raise TidalError(f"slice index {slice_index} is out of range for {key} with {tensor.shape[1]} "
                                 f"input columns (valid: 0..{tensor.shape[1] - 1})")
            tensor = tensor[:, slice_index:slice_index + 1].clone()  # (32, 3) -> (32, 1)
            keys.append(key)
        migrated[key] = tensor
    return migrated, keys


def _read_state_dict(path: Path) -> tuple[Mapping[str, torch.Tensor], Callable[[dict], object]]:
    """-> (the state dict, a function that puts a migrated state dict back into the file's original wrapping:
    a raw state dict, or a dict whose other keys (optimizer, epoch, ...) are kept)."""
    if not path.is_file():
        raise TidalError(f"input checkpoint not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an arbitrary file can fail to unpickle in many ways; all mean "not a checkpoint"
        raise TidalError(f"cannot read {path} as a torch checkpoint: {describe_exception(exc)}") from None
    if isinstance(loaded, Mapping) and "model_state_dict" in loaded:
        state_dict, rewrap = loaded["model_state_dict"], lambda migrated: {**loaded, "model_state_dict": migrated}
    else:
        state_dict, rewrap = loaded, lambda migrated: migrated
    if not (isinstance(state_dict, Mapping) and state_dict
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items())):
        raise TidalError(f"{path} is not a state dict (a mapping of names to tensors, or a dict with "
                         f"'model_state_dict')")
    return state_dict, rewrap


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, type=Path, help="checkpoint in the old or the new layout")
    parser.add_argument("--output", required=True, type=Path, help="where to write the migrated checkpoint")
    parser.add_argument("--slice-index", type=int, default=2,
                        help="gate input column to keep: 0 creativity, 1 focus, 2 stability (default)")
    args = parser.parse_args(argv)

    state_dict, rewrap = _read_state_dict(args.input)
    if not any(GATE_INPUT_WEIGHT.search(key) for key in state_dict):
        raise TidalError(f"{args.input} has no DynamicGate weights (*_gate.net.0.weight); "
                         f"is it a TransformerLM checkpoint?")
    migrated, keys = migrate_gate_dim(state_dict, args.slice_index)
    atomic_torch_save(rewrap(migrated), args.output)
    if keys:
        print(f"migrated {len(keys)} gate weights to the 1-gate layout (kept input column {args.slice_index}) "
              f"-> {args.output}")
    else:
        print(f"already in the 1-gate layout; wrote an unchanged copy -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
