"""The embedded reference model: a small byte-level dialogue decoder with gated TTT-MLP layers.

It is what ``ttt-checks`` runs on when no checkpoint is given, and the zoo of healthy and
broken checkpoints the health checks are tested against (``fixtures/zoo``). Public face:

- ``load_adapter(path)`` -> :class:`ReferenceAdapter` (the Adapter interface of the checks);
- ``build_zoo(out_dir)`` re-creates every zoo checkpoint (seeded, CPU, about 10 minutes);
- ``zoo_entries()`` / ``zoo_path(name)`` name the checkpoints and what each must fail.

Files: ``tokenizer`` (bytes + dialogue markers), ``corpus`` (chatterbot-corpus pairs),
``model`` (decoder, streaming), ``generate`` (greedy, one gate per batch row), ``train``
(pretraining and TTT fine-tuning recipes), ``checkpoint`` (safetensors + JSON), ``measure``
(Figure 5, losses, replies), ``zoo`` (rebuilt by ``ttt-checks zoo``), ``adapter``.
Importing this package loads no model and reads no file.
"""

from ttt_checks.models.reference.adapter import ReferenceAdapter, load_adapter
from ttt_checks.models.reference.zoo import DEFAULT_CHECKPOINT, ZooEntry, build_zoo, list_zoo, zoo_entries, zoo_path

__all__ = ["ReferenceAdapter", "load_adapter", "build_zoo", "list_zoo", "zoo_entries", "zoo_path", "ZooEntry", "DEFAULT_CHECKPOINT"]
