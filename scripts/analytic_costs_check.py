"""Print the analytic cost model's errors against 'hierfedlora profile' on this host (README figures).

Models: the packaged all-MiniLM-L6-v2 (26 classes) and random 2-layer GPT-2 and LLaMA models built
like tests/conftest.py's. Each is profiled (models.profiling) and this host's tier measured
(models.host_tier) right before it, then compared (validation.analytic_check).
Usage: python scripts/analytic_costs_check.py [--batch-size 8] [--seq-len 24]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from hierfedlora.models.catalog import ModelSpec, resolve_model_dir
from hierfedlora.models.host_tier import measure_compute_tier
from hierfedlora.models.profiling import measure_cost_model
from hierfedlora.planner.analytic_costs import analytic_cost_model, model_shape
from hierfedlora.validation.analytic_check import compare_cost_models


def _tiny(kind: str, folder: Path) -> Path:
    from transformers import AutoModel, GPT2Config, LlamaConfig

    common = {"vocab_size": 13, "bos_token_id": 1, "eos_token_id": 1}
    config = (
        GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, **common)
        if kind == "gpt2"
        else LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, **common)
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModel.from_config(config).save_pretrained(folder / kind)
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ("<unk>", "<eos>", "a", "dog", "is", "an", "animal", "cake", "food", "the", "of", "tree", "plant")
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>").save_pretrained(
        folder / kind
    )
    return folder / kind


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        models = {
            "all-MiniLM-L6-v2": (resolve_model_dir("default"), 26),
            "tiny GPT-2": (_tiny("gpt2", Path(temp)), 4),
            "tiny LLaMA": (_tiny("llama", Path(temp)), 4),
        }
        for name, (folder, labels) in models.items():
            spec = ModelSpec(path=str(folder), num_labels=labels, max_seq_len=args.seq_len)
            tier = measure_compute_tier()
            measured = measure_cost_model(spec, batch_size=args.batch_size, seq_len=args.seq_len, repeats=args.repeats)
            config = json.loads((Path(folder) / "config.json").read_text())
            analytic = analytic_cost_model(
                model_shape(config), tier, batch_size=args.batch_size, seq_len=args.seq_len, lora_rank=8,
                num_labels=labels,
            )  # fmt: skip
            c = compare_cost_models(measured, analytic)
            pct = lambda values: " ".join(f"{100 * v:+.0f}%" for v in values)  # noqa: E731
            print(f"{name}: tier {tier.flops_per_s / 1e9:.1f} GFLOP/s, {tier.memory_bandwidth_bytes_per_s / 1e9:.1f} "
                  f"GB/s, {tier.op_overhead_s * 1e6:.1f} us/call")  # fmt: skip
            print(f"  forward per layer   {pct(c.forward_error)}")
            print(f"  backward per layer  {pct(c.backward_error)}")
            print(f"  step at depth 1..L  {pct(c.step_error)}")
            print(f"  bytes: adapters {100 * c.adapter_bytes_error:+.1f}%, head {100 * c.head_bytes_error:+.1f}%, "
                  f"frozen model {100 * c.base_model_bytes_error:+.1f}%, "
                  f"activations {100 * c.activation_bytes_error:+.1f}%")  # fmt: skip


if __name__ == "__main__":
    main()
