"""RefusalDataModule: the forget set (target domain), the retain set (other domains) and the seven-domain eval set."""

from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ema_lightning.data.collate import EvalCollator, TrainCollator, encode_example, encode_prompt, pad_token_id
from ema_lightning.data.records import DOMAINS_ACCEPTED, Record, RecordError
from ema_lightning.data.sources import RecordSource, load_all
from ema_lightning.domains import DOMAINS, UnknownDomainError, canonical_domain, domain_index

log = logging.getLogger(__name__)

SELF_RESPONSES_FILE = "self_responses.jsonl"


class ExampleDataset(Dataset):
    """Encoded examples; index -(i+1) returns example i marked `valid=False` (a padding copy of a shard)."""

    def __init__(self, examples: Sequence[dict[str, Any]]) -> None:
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i < 0:
            return {**self.examples[-i - 1], "valid": False}
        return self.examples[i]


class ShardedEvalSampler(DistributedSampler):
    """Each rank gets a strided shard of the dataset's order (so length buckets stay sorted); shards are
    padded to equal length with copies of the last item, yielded as -(i+1) so they come back `valid=False`.

    Every rank runs the same number of batches (FSDP needs that) and no prompt is counted twice.
    Being a DistributedSampler, Lightning keeps it instead of injecting its own.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = math.ceil(len(dataset) / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def __iter__(self):
        n = len(self.dataset)
        for k in range(self.num_samples):
            i = self.rank + k * self.num_replicas
            yield i if i < n else -n  # -n is the padding copy of item n-1

    def __len__(self) -> int:
        return self.num_samples


class ResumableTrainSampler(DistributedSampler):
    """Seeded shuffling that gives the same global batches on any number of ranks, and resumes mid-epoch.

    Pass `c` of epoch `e` is a permutation seeded by (seed, e, c). It is cut into global batches of
    `batch_size * num_replicas` examples; rank r takes the r-th slice of `batch_size` of each. So a
    2-rank run with batch_size B sees the global batches of a 1-rank run with batch_size 2B. On one
    rank the last batch may be partial; on several ranks the pass wraps around to fill the last global
    batch (every rank needs the same number of batches).

    `consumed` counts batches delivered to training steps in this epoch (the datamodule increments it);
    `state_dict()` saves it and `load_state_dict()` makes the next pass skip what was already trained on.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, batch_size: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.batch_size = batch_size
        n, size = len(dataset), batch_size * num_replicas
        self.batches_per_pass = math.ceil(n / size)
        self.num_samples = n if num_replicas == 1 else self.batches_per_pass * batch_size
        self.total_size = self.num_samples * num_replicas
        self.consumed = 0
        self._next_pass = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.consumed, self._next_pass, self._skip = epoch, 0, 0, 0

    def pass_order(self, epoch: int, index: int) -> list[int]:
        """This rank's dataset indices for pass `index` of `epoch` (pure function of seed, epoch, pass)."""
        n = len(self.dataset)
        generator = torch.Generator().manual_seed(self.seed + 1_000_003 * epoch + 7_919 * index)
        order = torch.randperm(n, generator=generator).tolist()
        if self.num_replicas == 1:
            return order
        size = self.batch_size * self.num_replicas
        order = (order * math.ceil(self.batches_per_pass * size / n))[: self.batches_per_pass * size]
        start = self.rank * self.batch_size
        return [i for b in range(0, len(order), size) for i in order[b + start : b + start + self.batch_size]]

    def __iter__(self):
        order = self.pass_order(self.epoch, self._next_pass)[self._skip * self.batch_size :]
        self._next_pass += 1
        self._skip = 0
        return iter(order)

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        self._next_pass, self._skip = divmod(self.consumed, self.batches_per_pass)


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position (and the process RNG state) is saved in Lightning checkpoints.

    Lightning stores `state_dict()` of every loader it trains on and calls `load_state_dict()` when it
    resumes, before the first batch. The RNG states (Python, NumPy, torch, CUDA) are the saving rank's.
    """

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), "rng": rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        if "rng" in state:
            set_rng_state(state["rng"])


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain Python values only, so a
    checkpoint holding them still loads with `torch.load(weights_only=True)` (Lightning's CLI does)."""
    import numpy as np

    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _domains(value: Sequence[str] | None, field: str) -> list[str] | None:
    if value is None:
        return None
    out = []
    for name in value:
        try:
            out.append(canonical_domain(name))
        except UnknownDomainError:
            raise ValueError(f"RefusalDataModule: field '{field}': unknown domain {name!r}; {DOMAINS_ACCEPTED}") from None
    return out


def _sources(value: Sequence[RecordSource | str | dict] | None, default: str | None, field: str) -> list[RecordSource]:
    if value is None:
        return [RecordSource(path=default)] if default else []
    if isinstance(value, (str, RecordSource, dict)):
        value = [value]
    out = []
    for item in value:
        if isinstance(item, RecordSource):
            out.append(item)
        elif isinstance(item, str):
            out.append(RecordSource(path=item))
        elif isinstance(item, dict):
            out.append(RecordSource(**item))
        else:
            raise ValueError(f"RefusalDataModule: field '{field}': expected RecordSource, path or dict, got {type(item).__name__}")
    return out


def _sample(records: list[Record], size: int | None, seed: int) -> list[Record]:
    """A seeded subset of at most `size` records, in their original order."""
    if size is None or len(records) <= size:
        return records
    keep = sorted(random.Random(seed).sample(range(len(records)), size))
    return [records[i] for i in keep]


def stratified_sample(records: list[Record], size: int | None, seed: int) -> list[Record]:
    """At most `size` records, spread evenly over domains and, within each, over harmful and benign
    (round robin over seeded shuffles), original order kept. A small retain set thus holds as many
    refusals of harmful prompts as helpful answers, whatever the mix of the source data."""
    if size is None or len(records) <= size:
        return records
    rng = random.Random(seed)
    by_stratum: dict[tuple[str, bool], list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_stratum[(r.domain, r.harmful)].append(i)
    queues = []
    for domain in DOMAINS:
        for harmful in (True, False):
            if by_stratum[(domain, harmful)]:
                indices = by_stratum[(domain, harmful)][:]
                rng.shuffle(indices)
                queues.append(indices)
    chosen: list[int] = []
    while len(chosen) < size:
        for queue in queues:
            if queue and len(chosen) < size:
                chosen.append(queue.pop())
    return [records[i] for i in sorted(chosen)]


def domain_counts(records: Sequence[Record]) -> str:
    counts = Counter(r.domain for r in records)
    return ", ".join(f"{d} {counts[d]}" for d in DOMAINS if counts[d]) or "none"


class RefusalDataModule(pl.LightningDataModule):
    """Forget, retain and eval records, tokenised with the model's tokenizer and chat template.

    Config values are checked at construction; files are read in `load()` / `setup()`, before the
    model is built, so bad data fails fast.

    Args:
        train: Sources of training records (prompt -> refusal for harmful, help for benign). Default: builtin:train.
        eval: Sources of evaluation prompts (harmful and benign, all domains). Default: builtin:eval.
        external_eval: Optional second evaluation set (e.g. mapped public benchmarks, configs/data/external),
            reported separately as `val_external/...` beside the built-in `val/...` numbers.
        forget: Sources of the forget set, filtered to the target domain. Default: harmful train records of the target domain.
        neutral: Sources of domain-free harmless prompts (concept vectors). Default: builtin:neutral.
        target_domain: Domain whose refusals are unlearned. None: no forget set, retain = all train records (alignment).
        retain_domains: Domains of the retain set. Default: all domains but the target.
        retain_size: Cap on the retain set, stratified by domain and harmful/benign (seeded). 0 disables the retain set.
        forget_size: Cap on the forget set (seeded subset).
        eval_per_domain: Cap on harmful and on benign eval prompts per domain (seeded subset).
        batch_size: Training batch size (forget and retain batches each).
        eval_batch_size: Generation batch size for validation / test.
        max_length: Maximum tokens of prompt + response in training.
        max_prompt_length: Maximum prompt tokens (longer prompts are cut from the left, counted and logged).
        system_prompt: Optional system message put in the chat template.
        forget_responses: "data": the forget records' responses; "generate": the model's own responses,
            generated once by `lightning_module.generate_responses(prompts)` and cached in
            `<log_dir>/self_responses.jsonl`.
        seed: Seed of shuffling and subsets.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        train: list[RecordSource] | None = None,
        eval: list[RecordSource] | None = None,
        external_eval: list[RecordSource] | None = None,
        forget: list[RecordSource] | None = None,
        neutral: list[RecordSource] | None = None,
        target_domain: str | None = None,
        retain_domains: list[str] | None = None,
        retain_size: int | None = None,
        forget_size: int | None = None,
        eval_per_domain: int | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 32,
        max_length: int = 256,
        max_prompt_length: int = 128,
        system_prompt: str | None = None,
        forget_responses: Literal["data", "generate"] = "data",
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.train_sources = _sources(train, "builtin:train", "train")
        self.eval_sources = _sources(eval, "builtin:eval", "eval")
        self.external_eval_sources = _sources(external_eval, None, "external_eval")
        self.external_eval_records: list[Record] = []
        self.neutral_sources = _sources(neutral, "builtin:neutral", "neutral")
        self.forget_sources = _sources(forget, None, "forget") if forget is not None else None
        self.target_domain = _domains([target_domain], "target_domain")[0] if target_domain is not None else None
        self.retain_domains = _domains(retain_domains, "retain_domains")
        if self.target_domain is None and self.forget_sources:
            raise ValueError("RefusalDataModule: field 'forget': a forget set needs a target_domain; set target_domain or drop forget")
        if self.target_domain is not None and self.retain_domains and self.target_domain in self.retain_domains:
            raise ValueError(
                f"RefusalDataModule: field 'retain_domains': contains the target domain {self.target_domain!r}; "
                "the retain set must not hold the domain being unlearned"
            )
        for name, value, low in (
            ("retain_size", retain_size, 0),
            ("forget_size", forget_size, 1),
            ("eval_per_domain", eval_per_domain, 1),
        ):
            if value is not None and value < low:
                raise ValueError(f"RefusalDataModule: field '{name}': must be >= {low} or null, got {value}")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size), ("max_length", max_length), ("max_prompt_length", max_prompt_length)):
            if value < 1:
                raise ValueError(f"RefusalDataModule: field '{name}': must be a positive integer, got {value}")
        if max_prompt_length >= max_length:
            raise ValueError(
                f"RefusalDataModule: field 'max_prompt_length': {max_prompt_length} leaves no room for a response "
                f"within max_length {max_length}; use a value below max_length"
            )
        if forget_responses not in ("data", "generate"):
            raise ValueError(f"RefusalDataModule: field 'forget_responses': got {forget_responses!r}; accepted: 'data', 'generate'")
        if num_workers < 0 or seed < 0:
            raise ValueError("RefusalDataModule: fields 'num_workers' and 'seed' must be >= 0")
        self.retain_size = retain_size
        self.forget_size = forget_size
        self.eval_per_domain = eval_per_domain
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.system_prompt = system_prompt
        self.forget_responses = forget_responses
        self.seed = seed
        self.num_workers = num_workers
        self._tokenizer: Any = None
        self._loaded = False
        self.train_records: list[Record] = []
        self.forget_records: list[Record] = []
        self.retain_records: list[Record] = []
        self.eval_records: list[Record] = []
        self.neutral_records: list[Record] = []

    # ---- tokenizer ------------------------------------------------------------------------

    def connect(self, tokenizer: Any) -> RefusalDataModule:
        """Use this tokenizer instead of `trainer.lightning_module.tokenizer`."""
        self._tokenizer = tokenizer
        return self

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is not None:
            return self._tokenizer
        trainer = getattr(self, "trainer", None)
        module = trainer.lightning_module if trainer is not None else None
        tokenizer = getattr(module, "tokenizer", None)
        if tokenizer is None:
            raise RuntimeError("RefusalDataModule has no tokenizer: call connect(tokenizer) or attach it to a Trainer whose module has `.tokenizer`")
        return tokenizer

    @tokenizer.setter
    def tokenizer(self, value: Any) -> None:
        self._tokenizer = value

    # ---- records --------------------------------------------------------------------------

    def load(self) -> RefusalDataModule:
        """Read and validate all records (no tokenizer needed); idempotent."""
        if self._loaded:
            return self
        self.train_records = load_all(self.train_sources, "train")
        self.eval_records = self._cap_eval(load_all(self.eval_sources, "eval"))
        self.neutral_records = load_all(self.neutral_sources, "neutral")
        if self.external_eval_sources:
            self.external_eval_records = self._cap_eval(load_all(self.external_eval_sources, "external_eval"))
        self.forget_records = self._select_forget()
        self.retain_records = self._select_retain()
        self._check_responses()
        self._loaded = True
        for name, records in (("forget", self.forget_records), ("retain", self.retain_records), ("eval", self.eval_records), ("external eval", self.external_eval_records), ("neutral", self.neutral_records)):
            harmful = sum(r.harmful for r in records)
            log.info("%s set: %d records (%d harmful, %d benign): %s", name, len(records), harmful, len(records) - harmful, domain_counts(records))
        return self

    def setup(self, stage: str | None = None) -> None:
        self.load()

    def _select_forget(self) -> list[Record]:
        if self.target_domain is None:
            return []
        if self.forget_sources is None:
            records = [r for r in self.train_records if r.domain == self.target_domain and r.harmful]
            where = "train sources (harmful, target domain)"
        else:
            loaded = load_all(self.forget_sources, "forget")
            records = [r for r in loaded if r.domain == self.target_domain]
            if len(records) < len(loaded):
                log.info("forget: kept %d of %d records (domain %s)", len(records), len(loaded), self.target_domain)
            where = ", ".join(s.path for s in self.forget_sources)
        if not records:
            raise RecordError(where, None, "domain", f"empty split: no forget records in domain {self.target_domain!r}", "the forget set needs prompts of the target domain")
        return _sample(records, self.forget_size, self.seed)

    def _select_retain(self) -> list[Record]:
        if self.retain_size == 0:
            return []
        if self.retain_domains is not None:
            domains = set(self.retain_domains)
        elif self.target_domain is not None:
            domains = set(DOMAINS) - {self.target_domain}
        else:
            domains = set(DOMAINS)
        records = [r for r in self.train_records if r.domain in domains]
        return stratified_sample(records, self.retain_size, self.seed)

    def _cap_eval(self, records: list[Record]) -> list[Record]:
        if self.eval_per_domain is None:
            return records
        groups: dict[tuple[str, bool], list[int]] = defaultdict(list)
        for i, r in enumerate(records):
            groups[(r.domain, r.harmful)].append(i)
        keep: list[int] = []
        for n, (_, indices) in enumerate(sorted(groups.items())):
            keep.extend(indices if len(indices) <= self.eval_per_domain else random.Random(self.seed + n).sample(indices, self.eval_per_domain))
        return [records[i] for i in sorted(keep)]

    def _check_responses(self) -> None:
        checks = [("retain", self.retain_records, self.train_sources)]
        if self.forget_responses == "data":
            checks.append(("forget", self.forget_records, self.forget_sources or self.train_sources))
        for name, records, sources in checks:
            missing = [r for r in records if r.response is None]
            if missing:
                hint = "set forget_responses: generate, or " if name == "forget" else ""
                raise RecordError(
                    ", ".join(s.path for s in sources), None, "response",
                    f"{len(missing)} of {len(records)} {name} records have no response (first: {missing[0].prompt[:60]!r})",
                    f"{hint}give a response column",
                )

    # ---- encoding ---------------------------------------------------------------------------

    def _encode_train(self, records: Sequence[Record], name: str) -> list[dict[str, Any]]:
        examples, truncated = [], 0
        for i, r in enumerate(records):
            e = encode_example(self.tokenizer, r.prompt, r.response or "", self.max_length, self.max_prompt_length, self.system_prompt)
            truncated += e.pop("truncated")
            examples.append({**e, "index": i, "domain_id": domain_index(r.domain)})
        if truncated:
            log.warning(
                "%s: truncated %d of %d examples to max_prompt_length=%d / max_length=%d",
                name, truncated, len(records), self.max_prompt_length, self.max_length,
            )
        return examples

    def _encode_prompts(self, records: Sequence[Record], indices: Sequence[int], name: str) -> list[dict[str, Any]]:
        examples, truncated = [], 0
        for i in indices:
            r = records[i]
            ids, cut = encode_prompt(self.tokenizer, r.prompt, self.max_prompt_length, self.system_prompt)
            truncated += cut
            examples.append({"input_ids": ids, "index": i, "domain_id": domain_index(r.domain), "harmful": r.harmful, "prompt": r.prompt})
        if truncated:
            log.warning("%s: truncated %d of %d prompts to max_prompt_length=%d (kept their end)", name, truncated, len(examples), self.max_prompt_length)
        # Longest first: batches of similar length waste little padding, and memory peaks show up at once.
        examples.sort(key=lambda e: (-len(e["input_ids"]), e["index"]))
        return examples

    # ---- self-generated forget responses ----------------------------------------------------------

    def self_responses_path(self) -> Path:
        trainer = self.trainer
        root = getattr(trainer, "log_dir", None) or trainer.default_root_dir
        return Path(root) / SELF_RESPONSES_FILE

    def _with_generated_responses(self, records: list[Record]) -> list[Record]:
        path = self.self_responses_path()
        cache: dict[str, str] = {}
        if path.is_file():
            with path.open(encoding="utf-8") as handle:
                for number, text in enumerate(handle, start=1):
                    if text.strip():
                        try:
                            row = json.loads(text)
                            cache[row["prompt"]] = row["response"]
                        except (json.JSONDecodeError, KeyError, TypeError):
                            raise RecordError(str(path), number, "prompt/response", "invalid cache line", "delete the file to regenerate") from None
        missing = list(dict.fromkeys(r.prompt for r in records if r.prompt not in cache))
        if missing:
            log.info("generating the model's own responses for %d forget prompts (%d cached in %s)", len(missing), len(cache), path)
            responses = self.trainer.lightning_module.generate_responses(missing)
            if len(responses) != len(missing):
                raise RuntimeError(f"generate_responses returned {len(responses)} responses for {len(missing)} prompts")
            cache.update(zip(missing, responses))
            if self.trainer.is_global_zero:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("w", encoding="utf-8") as handle:
                    for prompt, response in cache.items():
                        handle.write(json.dumps({"prompt": prompt, "response": response}, ensure_ascii=False) + "\n")
            strategy = getattr(self.trainer, "strategy", None)
            if strategy is not None:
                strategy.barrier("self_responses")  # no rank reads a half-written cache on a later call
        else:
            log.info("reusing the model's own forget responses from %s", path)
        return [replace(r, response=cache[r.prompt]) for r in records]

    # ---- loaders ------------------------------------------------------------------------------

    def _train_loader(self, examples: list[dict[str, Any]], offset: int) -> DataLoader:
        replicas, rank = self._data_parallel()
        sampler = ResumableTrainSampler(
            ExampleDataset(examples), num_replicas=replicas, rank=rank, batch_size=self.batch_size, seed=self.seed + offset
        )
        return ResumableDataLoader(
            sampler.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=TrainCollator(pad_token_id(self.tokenizer)),
            num_workers=self.num_workers,
            # Its own generator: each `iter()` draws a worker base seed, and drawn from the global RNG it
            # would shift the dropout stream whenever Lightning starts an iterator (at resume, too).
            generator=torch.Generator().manual_seed(self.seed + offset),
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Count the training batches each loader has delivered to a step: the data position of a checkpoint.
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training and isinstance(batch, dict):
            loaders = getattr(trainer.fit_loop, "_combined_loader", None)
            iterables = getattr(loaders, "iterables", None)
            if isinstance(iterables, dict):
                for name, loader in iterables.items():
                    if name in batch and isinstance(getattr(loader, "sampler", None), ResumableTrainSampler):
                        loader.sampler.consumed += 1
        return batch

    def train_dataloader(self) -> CombinedLoader:
        """`{"forget": ..., "retain": ...}` batches; the forget loader drives the epoch, retain cycles beside it."""
        self.load()
        forget = self.forget_records
        if forget and self.forget_responses == "generate":
            forget = self._with_generated_responses(forget)
        loaders: dict[str, DataLoader] = {}
        if forget:
            loaders["forget"] = self._train_loader(self._encode_train(forget, "forget"), 0)
        if self.retain_records:
            loaders["retain"] = self._train_loader(self._encode_train(self.retain_records, "retain"), 1)
        if not loaders:
            raise RecordError("train", None, None, "empty split: no forget and no retain records", "give train sources or a target_domain")
        if "forget" in loaders and "retain" in loaders:
            mode = "max_size_cycle" if len(loaders["forget"]) >= len(loaders["retain"]) else "min_size"
        else:
            mode = "max_size_cycle"
        return CombinedLoader(loaders, mode=mode)

    def prompt_dataloader(
        self, records: Sequence[Record], indices: Sequence[int] | None = None, batch_size: int | None = None, name: str = "eval"
    ) -> DataLoader:
        """Left-padded prompt batches (EvalCollator) of `records[indices]`, longest first; sharded across ranks.

        `index` in the batches is the position in `records`; use it for any prompt list (eval, neutral, ...).
        """
        indices = range(len(records)) if indices is None else indices
        dataset = ExampleDataset(self._encode_prompts(records, indices, name))
        sampler = None
        replicas, rank = self._data_parallel()
        if replicas > 1:
            sampler = ShardedEvalSampler(dataset, num_replicas=replicas, rank=rank)
        return DataLoader(
            dataset,
            batch_size=batch_size or self.eval_batch_size,
            shuffle=False,
            sampler=sampler,
            collate_fn=EvalCollator(pad_token_id(self.tokenizer)),
            num_workers=self.num_workers,
        )

    def _data_parallel(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        kwargs = getattr(trainer, "distributed_sampler_kwargs", None) if trainer is not None else None
        if kwargs and kwargs.get("num_replicas", 1) > 1:
            return int(kwargs["num_replicas"]), int(kwargs["rank"])
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def eval_dataloader(self, domain: str | None = None, harmful: bool | None = None) -> DataLoader:
        """Eval prompts, optionally only one domain and/or only harmful (True) or benign (False) ones.

        `index` in the batches is the position in `eval_records`.
        """
        self.load()
        domain = _domains([domain], "domain")[0] if domain is not None else None
        indices = [
            i for i, r in enumerate(self.eval_records)
            if (domain is None or r.domain == domain) and (harmful is None or r.harmful == harmful)
        ]
        return self.prompt_dataloader(self.eval_records, indices)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The eval prompts; with `external_eval`, a list: [built-in eval, external eval] (dataloader_idx 0, 1)."""
        if not self.external_eval_records:
            return self.eval_dataloader()
        return [self.eval_dataloader(), self.prompt_dataloader(self.external_eval_records, name="external_eval")]

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self.val_dataloader()
