"""The model runtime: load a classifier, turn articles into padded tensors, predict.

Loading goes through `from_pretrained`, so a `save_pretrained` folder and a Hugging Face model name
work alike. Label names come from the model's own config (id2label), never from our code.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig

from worker.model_shapes import THUCNEWS_LABELS

log = logging.getLogger(__name__)

NULL_MODEL = "null"


class NullClassifier(torch.nn.Module):
    """Uniform output without a forward pass, selected by the model path `null`.

    Benchmarks serve it to measure the pipeline's own ceiling (Redis, tokenizer, SQL): whatever
    rate newsq reaches with it is the most any real model can get from this machine.
    """

    def __init__(self, labels: Sequence[str]) -> None:
        super().__init__()
        self.config = PretrainedConfig(id2label=dict(enumerate(labels)))
        self.config.newsq_model_version = NULL_MODEL
        self.num_labels = len(labels)

    def forward(self, input_ids: torch.Tensor, **_: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.zeros(input_ids.shape[0], self.num_labels))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return device


@dataclass(slots=True)
class Encoded:
    """Token ids of a window of articles, unpadded; lengths drive the batch plan."""

    ids: list[list[int]]
    type_ids: list[list[int]]

    @property
    def lengths(self) -> list[int]:
        return [len(row) for row in self.ids]


@dataclass(slots=True)
class TensorBatch:
    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    attention_mask: torch.Tensor


class ModelRuntime:
    """A loaded classifier and its tokenizer on one device."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        version: str,
        path: str,
        device: torch.device,
        max_length: int,
    ) -> None:
        self.model = model
        self.version = version
        self.path = path
        self.device = device
        self.max_length = max_length
        id2label = model.config.id2label
        self.labels = [str(id2label[i]) for i in range(model.config.num_labels)]
        self.pad_id = int(tokenizer.pad_token_id or 0)
        # The Rust tokenizer behind the HF wrapper: one call for a whole window, no Python loop.
        self._backend = tokenizer.backend_tokenizer
        self._backend.enable_truncation(max_length=max_length, strategy="longest_first")
        self._backend.no_padding()

    @classmethod
    def load(
        cls,
        name_or_path: str,
        *,
        device: str = "auto",
        max_length: int = 64,
        version: str | None = None,
        tokenizer_dir: str | None = None,
    ) -> ModelRuntime:
        """`name_or_path` `null` serves the NullClassifier with the tokenizer in
        `tokenizer_dir` and the THUCNews labels."""
        torch_device = resolve_device(device)
        if name_or_path == NULL_MODEL:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
            model: Any = NullClassifier(THUCNEWS_LABELS)
        else:
            if not Path(name_or_path).exists():
                log.warning(
                    "%s is not a local folder: loading it from the Hugging Face Hub", name_or_path
                )
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
            model = AutoModelForSequenceClassification.from_pretrained(name_or_path)
        model.to(torch_device).eval()
        resolved = version or model_version_of(name_or_path, model.config)
        log.info("loaded model %s (version %s) on %s", name_or_path, resolved, torch_device)
        return cls(
            model,
            tokenizer,
            version=resolved,
            path=name_or_path,
            device=torch_device,
            max_length=max_length,
        )

    def encode(self, pairs: Sequence[tuple[str, str | None]]) -> Encoded:
        """Tokenize (title, content) pairs; content, when present, is the second segment.

        Text is cut to 4 characters per token of `max_length` first: the model reads no more,
        and the tokenizer's pair truncation grows much faster than the text (100,000
        characters took 12 s, enough to stall every task sharing the batch).
        """
        cap = self.max_length * 4
        inputs = [
            (title[:cap], content[:cap]) if content else title[:cap] for title, content in pairs
        ]
        encodings = self._backend.encode_batch_fast(inputs)
        return Encoded([e.ids for e in encodings], [e.type_ids for e in encodings])

    def collate(self, encoded: Encoded, rows: Sequence[int]) -> TensorBatch:
        """Pad the chosen rows to their longest member (a multiple of 8 on CUDA)."""
        width = max(len(encoded.ids[i]) for i in rows)
        if self.device.type == "cuda":
            width = -(-width // 8) * 8
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for out, i in enumerate(rows):
            n = len(encoded.ids[i])
            ids[out, :n] = encoded.ids[i]
            types[out, :n] = encoded.type_ids[i]
            mask[out, :n] = 1
        pin = self.device.type == "cuda"
        tensors = [torch.from_numpy(a) for a in (ids, types, mask)]
        if pin:
            tensors = [t.pin_memory() for t in tensors]
        return TensorBatch(*tensors)

    def predict(self, batch: TensorBatch) -> np.ndarray:
        """Class probabilities, float32 [rows, labels]."""
        with (
            torch.inference_mode(),
            torch.autocast(
                device_type=self.device.type,
                dtype=torch.bfloat16,
                enabled=self.device.type == "cuda",
            ),
        ):
            logits = self.model(
                input_ids=batch.input_ids.to(self.device, non_blocking=True),
                token_type_ids=batch.token_type_ids.to(self.device, non_blocking=True),
                attention_mask=batch.attention_mask.to(self.device, non_blocking=True),
            ).logits
            probs = torch.softmax(logits.float(), dim=-1)
        return probs.cpu().numpy()


def model_version_of(name_or_path: str, config: Any) -> str:
    """A stable version label: the one written into the config, else name + weights digest."""
    explicit = getattr(config, "newsq_model_version", None)
    if explicit:
        return str(explicit)
    path = Path(name_or_path)
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    if weights:
        digest = hashlib.sha256()
        for file in weights:
            with file.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        return f"{path.name}-{digest.hexdigest()[:12]}"
    commit = getattr(config, "_commit_hash", None)
    return f"{name_or_path}@{commit[:12]}" if commit else name_or_path
