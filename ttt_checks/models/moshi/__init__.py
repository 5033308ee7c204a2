"""Moshi 7B (and tiny Moshi) models fine-tuned by moshi-finetune with TTT-MLP layers.

- ``checkpoint``: where a checkpoint's files are, its configs, TTT key names in every layout.
- ``inject``: TTT between attention and feed-forward of moshi transformer blocks.
- ``model``: base weights + LoRA + TTT + checkpoint tensors -> a runnable model.
- ``adapter.MoshiAdapter``: the health checks' interface (teacher-forced, generation, gates).
- ``checks``: Moshi-specific verdicts (gate 0 == vanilla Moshi, unused parameters, state
  carried, causality leak).
"""

from ttt_checks.models.moshi.checkpoint import MoshiCheckpointError, is_moshi_checkpoint

__all__ = ["MoshiCheckpointError", "is_moshi_checkpoint", "MoshiAdapter"]


def __getattr__(name: str):
    # Lazy: importing moshi takes seconds; registry detection must not pay for it.
    if name == "MoshiAdapter":
        from ttt_checks.models.moshi.adapter import MoshiAdapter

        return MoshiAdapter
    raise AttributeError(name)
