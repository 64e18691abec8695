"""The model runtime: load a classifier, turn articles into padded tensors, predict.

Loading goes through `from_pretrained`, so a `save_pretrained` folder and a Hugging Face model name
work alike. Label names come from the model's own config (id2label), never from our code.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PretrainedConfig

from newsq.settings import Precision
from worker.batch_policy import padded_width
from worker.cuda_graphs import CudaGraphs, Forward
from worker.cuda_graphs import every_row_bucket as all_row_buckets
from worker.train_data import THUCNEWS_LABELS

log = logging.getLogger(__name__)

NULL_MODEL = "null"
CUDA_PAD_MULTIPLE = 8  # batch widths on CUDA: whole tensor-core tiles
_IDS, _TYPE_IDS = attrgetter("ids"), attrgetter("type_ids")


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


def resolve_precision(precision: Precision, device: torch.device) -> Precision:
    """`auto`: bf16 weights on a CUDA device that has bf16, fp32 elsewhere.

    bf16 weights rather than autocast: autocast keeps fp32 weights and casts them again in every
    forward pass, an extra kernel per matrix product, where a GPU batch of short titles is
    already bound by kernel launches. Measured on an H200, bert-base shape, newsq's batch plan:
    bf16 42,710 articles/s, autocast 40,232, fp32 10,831 (benchmarks/gpu.sh). The probabilities
    are computed in fp32 either way.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


class ModelLoadError(Exception):
    """The model named by a folder or a Hub name cannot be loaded; the message is one line."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return device


@dataclass(slots=True)
class Encoded:
    """Token ids of a window of articles, unpadded, end to end in one array: `collate` pads any
    subset of rows with a few vectorized numpy calls instead of a Python step per row."""

    ids: np.ndarray  # int64, every row's ids one after another
    type_ids: np.ndarray | None  # the same layout; None: all zeros (no article had content)
    starts: np.ndarray  # where each row begins in `ids`
    lengths: list[int]  # of each row: they drive the batch plan

    @classmethod
    def from_rows(cls, ids: list[list[int]], type_ids: list[list[int]] | None) -> Encoded:
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        starts = np.zeros(len(ids), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        total = int(lengths.sum())

        def flat(rows: list[list[int]]) -> np.ndarray:
            return np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=total)

        return cls(flat(ids), flat(type_ids) if type_ids else None, starts, lengths.tolist())


@dataclass(slots=True)
class TensorBatch:
    """A batch's three input tensors as planes of one [3, rows, width] int64 tensor: a CUDA
    graph's inputs then take one host-to-device copy a batch instead of three, and each copy is
    a point where the model thread lets go of the interpreter lock and waits to take it back
    from the tokenizer, writer and task threads (worker/cuda_graphs.py)."""

    planes: torch.Tensor  # input_ids, token_type_ids, attention_mask

    @property
    def input_ids(self) -> torch.Tensor:
        return self.planes[0]

    @property
    def token_type_ids(self) -> torch.Tensor:
        return self.planes[1]

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.planes[2]


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
        precision: Precision,
        cuda_graphs: bool,
    ) -> None:
        self.model = model
        self.precision = precision
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
        # A function of the model, not a method of this runtime: graphs holding the runtime
        # would make a reference cycle, and a runtime replaced by a promotion, frozen out of the
        # garbage collector (worker/heap.py), would then keep its weights and graphs for good.
        self._forward: Forward = ForwardPass(model, device.type, precision == "bf16-autocast")
        # Not for the null model: it has no GPU work to capture.
        graphed = cuda_graphs and device.type == "cuda" and not isinstance(model, NullClassifier)
        self._graphs = CudaGraphs(self._forward, device) if graphed else None

    @classmethod
    def load(
        cls,
        name_or_path: str,
        *,
        device: str = "auto",
        max_length: int = 64,
        version: str | None = None,
        tokenizer_dir: str | None = None,
        precision: Precision = "auto",
        cuda_graphs: bool = True,
    ) -> ModelRuntime:
        """`name_or_path` `null` serves the NullClassifier with the tokenizer in
        `tokenizer_dir` and the THUCNews labels. `cuda_graphs`: replay the forward pass as
        CUDA graphs on a CUDA device (worker/cuda_graphs.py)."""
        torch_device = resolve_device(device)
        precision = resolve_precision(precision, torch_device)
        if name_or_path == NULL_MODEL:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
            model: Any = NullClassifier(THUCNEWS_LABELS)
        else:
            folder = Path(name_or_path)
            local = folder.exists()
            if local and not (folder / "config.json").exists():
                raise ModelLoadError(
                    f"the model folder {name_or_path} has no config.json: give a folder that"
                    " save_pretrained wrote (`newsq model init DIR` writes an untrained one)"
                )
            if not local:
                log.warning(
                    "%s is not a local folder: loading it from the Hugging Face Hub", name_or_path
                )
            try:
                tokenizer = AutoTokenizer.from_pretrained(name_or_path)
                model = AutoModelForSequenceClassification.from_pretrained(name_or_path)
            except (OSError, ValueError) as exc:
                where = "" if local else " (not a folder here, so a Hugging Face Hub name)"
                reason = " ".join(str(exc).split())
                raise ModelLoadError(
                    f"the model {name_or_path}{where} cannot be loaded: {reason}"
                ) from exc
        # Serving never trains: no autograd state, whatever mode a pass (or a CUDA graph
        # capture) runs in.
        model.to(torch_device).eval().requires_grad_(False)
        if precision == "bf16":
            model.to(torch.bfloat16)
        resolved = version or model_version_of(name_or_path, model.config)
        log.info(
            "loaded model %s (version %s) on %s, %s",
            name_or_path,
            resolved,
            torch_device,
            precision,
        )
        return cls(
            model,
            tokenizer,
            version=resolved,
            path=name_or_path,
            device=torch_device,
            max_length=max_length,
            precision=precision,
            cuda_graphs=cuda_graphs,
        )

    @property
    def pad_multiple(self) -> int:
        """Batches are padded to a multiple of this on CUDA, else to their longest row."""
        return CUDA_PAD_MULTIPLE if self.device.type == "cuda" else 1

    @property
    def graphs(self) -> int:
        """CUDA graphs captured so far (0 where the forward pass runs eagerly)."""
        return len(self._graphs) if self._graphs is not None else 0

    def warm_up(self, shapes: Sequence[tuple[int, int]], *, every_row_bucket: bool = False) -> None:
        """One forward pass per (rows, width), before the worker consumes.

        At light load on an H200 the p99 was ~330 ms against a p50 of ~33 ms, from a worker that
        had just started: the first pass of each new shape pays for kernel selection and memory
        the allocator does not hold yet, and with CUDA graphs for its capture. This moves that
        cost to the start for the shapes met most (BatchPolicy.warm_shapes); measured there
        since, with the graphs: p50 5.1 ms, p99 7.0 ms. `every_row_bucket`: with CUDA graphs,
        first capture every row bucket up to each width's most rows in `shapes`, so that no
        batch under load runs eagerly or waits for its capture (worker/cuda_graphs.py)."""
        started = time.perf_counter()
        if self._graphs is not None:  # else each pass below would run eagerly
            self._graphs.capture(all_row_buckets(shapes) if every_row_bucket else shapes)
        for rows, width in shapes:
            planes = np.zeros((3, rows, width), dtype=np.int64)  # type ids stay 0
            planes[0], planes[2] = self.pad_id, 1  # all padding, every position attended
            self.predict(TensorBatch(torch.from_numpy(planes)))
        log.info(
            "warmed up %d batch shapes, %d CUDA graphs held, in %.1f s",
            len(shapes),
            self.graphs,
            time.perf_counter() - started,
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
        ids = list(map(_IDS, encodings))
        # Titles alone are one segment: their type ids are all 0, no need to read them.
        with_content = any(content for _, content in pairs)
        return Encoded.from_rows(ids, list(map(_TYPE_IDS, encodings)) if with_content else None)

    def collate(self, encoded: Encoded, rows: Sequence[int]) -> TensorBatch:
        """Pad the chosen rows to their longest member (a multiple of 8 on CUDA)."""
        picked = np.asarray(rows, dtype=np.int64)
        lengths = np.asarray(encoded.lengths, dtype=np.int64)[picked]
        width = padded_width(int(lengths.max()), self.pad_multiple)
        columns = np.arange(width)
        mask = columns < lengths[:, None]
        # Positions past a row's end point at its own start (any valid index); masked out below.
        index = encoded.starts[picked][:, None] + np.where(mask, columns, 0)
        # Each plane written in place: no stacking copy of the three afterwards.
        planes = np.zeros((3, len(picked), width), dtype=np.int64)
        planes[0] = self.pad_id
        np.copyto(planes[0], encoded.ids[index], where=mask)
        if encoded.type_ids is not None:
            np.copyto(planes[1], encoded.type_ids[index], where=mask)
        planes[2] = mask
        # Not pinned: on the H200 machine this method took the tokenize thread ~15 ms a batch
        # (py-spy; pinning was its only heavy step there), far more than the pageable copy of
        # ~1 MB that pinned memory would speed up.
        return TensorBatch(torch.from_numpy(planes))

    def predict(self, batch: TensorBatch) -> np.ndarray:
        """Class probabilities, float32 [rows, labels]."""
        with torch.inference_mode():
            probs = self._graphs.run(batch.planes) if self._graphs is not None else None
            if probs is None:
                planes = batch.planes.to(self.device, non_blocking=True)
                probs = self._forward(*planes).cpu().numpy()
        # NaN or inf (an overflow, say in bf16) would fail the whole batch's write; raised here,
        # the batcher isolates the rows that cause it and rejects only those.
        finite = np.isfinite(probs).all(axis=1)
        if not finite.all():
            raise FloatingPointError(
                f"non-finite output for {int((~finite).sum())} of {len(finite)} rows"
            )
        return probs


@dataclass(frozen=True, slots=True)
class ForwardPass:
    """Probabilities on the model's device, computed in fp32 whatever the precision.

    No autocast cache: a CUDA graph must not keep casts that the cache frees when the autocast
    block ends (PyTorch's CUDA graphs notes); each weight is cast once per pass either way."""

    model: Any
    device_type: str
    autocast: bool  # precision bf16-autocast

    def __call__(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        with torch.autocast(
            device_type=self.device_type,
            dtype=torch.bfloat16,
            enabled=self.autocast,
            cache_enabled=False,
        ):
            logits = self.model(
                input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask
            ).logits
        return torch.softmax(logits.float(), dim=-1)


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
