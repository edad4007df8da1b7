"""RefusalDataModule: the forget set (target domain), the retain set (other domains), the seven-domain eval set
and the utility set (held-out neutral prompts with helpful answers).

Which records are chosen is `selection.py`; how they are cut into batches is `Encoding` here and
`collate.py`; the samplers are `samplers.py`; the model's own forget responses are `self_responses.py`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from ema_lightning.data.collate import EvalCollator, TrainCollator, encode_example, encode_prompt, pad_token_id
from ema_lightning.data.records import Record, RecordError
from ema_lightning.data.samplers import ExampleDataset, ResumableDataLoader, ResumableTrainSampler, ShardedEvalSampler
from ema_lightning.data.selection import SetSelection, cap_eval, domain_counts, parse_domains, select_forget, select_retain
from ema_lightning.data.self_responses import SELF_RESPONSES_FILE, with_self_responses
from ema_lightning.data.sources import RecordSource, load_all
from ema_lightning.domains import domain_index

log = logging.getLogger(__name__)

FORGET_RESPONSES = ("data", "generate")


@dataclass(frozen=True)
class Encoding:
    """How the selected records become token batches."""

    batch_size: int = 8
    """Training batch size (forget and retain batches each)."""
    eval_batch_size: int = 32
    """Generation batch size for validation / test."""
    max_length: int = 256
    """Maximum tokens of prompt + response in training."""
    max_prompt_length: int = 128
    """Maximum prompt tokens (longer prompts are cut from the left, counted and logged); below `max_length`."""
    system_prompt: str | None = None
    """Optional system message put in the chat template."""
    forget_responses: Literal["data", "generate"] = "data"
    """"data": the forget records' responses; "generate": the model's own responses (`self_responses.py`)."""
    num_workers: int = 0
    """DataLoader workers."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_batch_size", "max_length", "max_prompt_length"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"RefusalDataModule: field '{name}': must be a positive integer, got {value}")
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"RefusalDataModule: field 'max_prompt_length': {self.max_prompt_length} leaves no room for a response "
                f"within max_length {self.max_length}; use a value below max_length"
            )
        if self.forget_responses not in FORGET_RESPONSES:
            raise ValueError(f"RefusalDataModule: field 'forget_responses': got {self.forget_responses!r}; accepted: 'data', 'generate'")
        if self.num_workers < 0:
            raise ValueError(f"RefusalDataModule: field 'num_workers': must be >= 0, got {self.num_workers}")


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


class UtilityCollator(TrainCollator):
    """`TrainCollator` batches with `valid` (bool; False for the padding copies of a distributed shard)."""

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(examples)
        batch["valid"] = torch.tensor([bool(e.get("valid", True)) for e in examples], dtype=torch.bool)
        return batch


def spread(n: int, k: int) -> list[int]:
    """`min(k, n)` indices into `range(n)` spread evenly (the middle of each of k equal parts), in order."""
    k = min(k, n)
    return [int((i + 0.5) * n / k) for i in range(k)]


def _setting(group: str, name: str) -> property:
    return property(lambda self: getattr(getattr(self, group), name), doc=f"`{group}.{name}` (read only).")


class RefusalDataModule(pl.LightningDataModule):
    """Forget, retain and eval records, tokenised with the model's tokenizer and chat template.

    Config values are checked at construction (into `selection` and `encoding`); files are read in
    `load()` / `setup()`, before the model is built, so bad data fails fast. Loaders need a tokenizer:
    call `connect(tokenizer, generate_responses)` first.

    Args:
        train: Sources of training records (prompt -> refusal for harmful, help for benign). Default: builtin:train.
        eval: Sources of evaluation prompts (harmful and benign, all domains). Default: builtin:eval.
        external_eval: Optional second evaluation set (e.g. mapped public benchmarks, configs/data/external),
            reported separately as `val_external/...` beside the built-in `val/...` numbers.
        forget: Sources of the forget set, filtered to the target domain. Default: harmful train records of the target domain.
        neutral: Sources of domain-free harmless prompts (concept vectors). Default: builtin:neutral.
        utility: Sources of neutral (prompt, helpful answer) pairs whose mean token NLL under the model is
            its utility (`val/utility/nll`). Default: builtin:neutral. Harmful records and any whose prompt
            is a training prompt are dropped; the `utility_size` records chosen are left out of the neutral
            prompts (so concept vectors never see them).
        utility_size: Records of the utility set, spread evenly over the utility sources' order (fixed:
            the same set for every seed). 0 disables the utility measure.
        target_domain: Domain whose refusals are unlearned. None: no forget set, retain = all train records (alignment).
        retain_domains: Domains of the retain set. Default: all domains but the target.
        retain_size: Cap on the retain set, stratified by domain and harmful/benign (seeded). 0 disables the retain set.
        forget_size: Cap on the forget set (seeded subset).
        eval_per_domain: Cap on harmful and on benign eval prompts per domain (seeded subset).
        external_eval_per_domain: The same cap for `external_eval` (default: every external prompt).
        batch_size: Training batch size (forget and retain batches each).
        eval_batch_size: Generation batch size for validation / test.
        max_length: Maximum tokens of prompt + response in training.
        max_prompt_length: Maximum prompt tokens (longer prompts are cut from the left, counted and logged).
        system_prompt: Optional system message put in the chat template.
        forget_responses: "data": the forget records' responses; "generate": the model's own responses,
            generated once by the `generate_responses` given to `connect()` and cached in
            `<log_dir>/self_responses.jsonl`.
        seed: Seed of the subsets (forget, retain, eval): the same sets whatever the run's `seed_everything`.
        shuffle_seed: Seed of the training order. None: `seed` plus the run's `seed_everything` (Lightning's
            `PL_GLOBAL_SEED`), so the seeds of a study differ in training order as well as in the adapters'
            initialisation while every seed trains and is evaluated on the same sets.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        train: list[RecordSource] | None = None,
        eval: list[RecordSource] | None = None,
        external_eval: list[RecordSource] | None = None,
        forget: list[RecordSource] | None = None,
        neutral: list[RecordSource] | None = None,
        utility: list[RecordSource] | None = None,
        utility_size: int = 30,
        target_domain: str | None = None,
        retain_domains: list[str] | None = None,
        retain_size: int | None = None,
        forget_size: int | None = None,
        eval_per_domain: int | None = None,
        external_eval_per_domain: int | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 32,
        max_length: int = 256,
        max_prompt_length: int = 128,
        system_prompt: str | None = None,
        forget_responses: Literal["data", "generate"] = "data",
        seed: int = 0,
        shuffle_seed: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.train_sources = _sources(train, "builtin:train", "train")
        self.eval_sources = _sources(eval, "builtin:eval", "eval")
        self.external_eval_sources = _sources(external_eval, None, "external_eval")
        self.neutral_sources = _sources(neutral, "builtin:neutral", "neutral")
        self.utility_sources = _sources(utility, "builtin:neutral", "utility")
        if utility_size < 0:
            raise ValueError(f"RefusalDataModule: field 'utility_size': must be >= 0 (0: no utility measure), got {utility_size}")
        self.utility_size = utility_size
        self.forget_sources = _sources(forget, None, "forget") if forget is not None else None
        self.selection = SetSelection(
            target_domain=target_domain, retain_domains=retain_domains, retain_size=retain_size,
            forget_size=forget_size, eval_per_domain=eval_per_domain, seed=seed,
        )
        if self.selection.target_domain is None and self.forget_sources:
            raise ValueError("RefusalDataModule: field 'forget': a forget set needs a target_domain; set target_domain or drop forget")
        if shuffle_seed is not None and shuffle_seed < 0:
            raise ValueError(f"RefusalDataModule: field 'shuffle_seed': must be >= 0, got {shuffle_seed}")
        self.shuffle_seed = shuffle_seed
        self.external_selection = SetSelection(eval_per_domain=external_eval_per_domain, seed=seed)
        self.encoding = Encoding(
            batch_size=batch_size, eval_batch_size=eval_batch_size, max_length=max_length, max_prompt_length=max_prompt_length,
            system_prompt=system_prompt, forget_responses=forget_responses, num_workers=num_workers,
        )
        self._tokenizer: Any = None
        self._generate_responses: Callable[[list[str]], list[str]] | None = None
        self._train_samplers: dict[str, ResumableTrainSampler] = {}
        self._loaded = False
        self.train_records: list[Record] = []
        self.forget_records: list[Record] = []
        self.retain_records: list[Record] = []
        self.eval_records: list[Record] = []
        self.external_eval_records: list[Record] = []
        self.neutral_records: list[Record] = []
        self.utility_records: list[Record] = []

    target_domain = _setting("selection", "target_domain")
    retain_size = _setting("selection", "retain_size")
    forget_size = _setting("selection", "forget_size")
    eval_per_domain = _setting("selection", "eval_per_domain")
    external_eval_per_domain = _setting("external_selection", "eval_per_domain")
    seed = _setting("selection", "seed")
    batch_size = _setting("encoding", "batch_size")
    eval_batch_size = _setting("encoding", "eval_batch_size")
    max_length = _setting("encoding", "max_length")
    max_prompt_length = _setting("encoding", "max_prompt_length")
    system_prompt = _setting("encoding", "system_prompt")
    forget_responses = _setting("encoding", "forget_responses")
    num_workers = _setting("encoding", "num_workers")

    @property
    def retain_domains(self) -> list[str] | None:
        """`selection.retain_domains` as a list (read only)."""
        domains = self.selection.retain_domains
        return list(domains) if domains is not None else None

    # ---- what the model provides ------------------------------------------------------------

    def connect(
        self, tokenizer: Any, generate_responses: Callable[[list[str]], list[str]] | None = None
    ) -> RefusalDataModule:
        """Give the model's tokenizer (needed by every loader) and, for `forget_responses: generate`,
        the function that turns raw prompts into the model's own responses."""
        self._tokenizer = tokenizer
        self._generate_responses = generate_responses
        return self

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise RuntimeError(
                "RefusalDataModule has no tokenizer: call connect(tokenizer) (the CLI passes the model's) before asking for loaders"
            )
        return self._tokenizer

    # ---- records --------------------------------------------------------------------------

    def load(self) -> RefusalDataModule:
        """Read and validate all records (no tokenizer needed); idempotent."""
        if self._loaded:
            return self
        self.train_records = load_all(self.train_sources, "train")
        self.eval_records = cap_eval(load_all(self.eval_sources, "eval"), self.selection)
        self.neutral_records = load_all(self.neutral_sources, "neutral")
        if self.external_eval_sources:
            self.external_eval_records = cap_eval(load_all(self.external_eval_sources, "external_eval"), self.external_selection)
        self.forget_records = self._select_forget()
        self.retain_records = select_retain(self.train_records, self.selection)
        self._select_utility()
        self._check_responses()
        self._loaded = True
        for name, records in (("forget", self.forget_records), ("retain", self.retain_records), ("eval", self.eval_records), ("external eval", self.external_eval_records), ("neutral", self.neutral_records), ("utility", self.utility_records)):
            harmful = sum(r.harmful for r in records)
            log.info("%s set: %d records (%d harmful, %d benign): %s", name, len(records), harmful, len(records) - harmful, domain_counts(records))
        return self

    def setup(self, stage: str | None = None) -> None:
        self.load()

    def _select_forget(self) -> list[Record]:
        target = self.selection.target_domain
        if target is None:
            return []
        if self.forget_sources is None:
            return select_forget([r for r in self.train_records if r.harmful], self.selection, "train sources (harmful, target domain)")
        loaded = load_all(self.forget_sources, "forget")
        in_domain = sum(r.domain == target for r in loaded)
        if in_domain < len(loaded):
            log.info("forget: kept %d of %d records (domain %s)", in_domain, len(loaded), target)
        return select_forget(loaded, self.selection, ", ".join(s.path for s in self.forget_sources))

    def _select_utility(self) -> None:
        """The utility set: `utility_size` benign records spread evenly over the utility sources, none of
        them a training prompt; they are then removed from the neutral prompts of the concept vectors."""
        if not self.utility_size:
            return
        loaded = [r for r in load_all(self.utility_sources, "utility") if not r.harmful]  # helpful answers only
        trained = {r.prompt for r in (*self.train_records, *self.forget_records)}
        candidates = [r for r in loaded if r.prompt not in trained]
        if len(candidates) < len(loaded):
            log.warning("utility: dropped %d of %d records whose prompt is a training prompt", len(loaded) - len(candidates), len(loaded))
        chosen = [candidates[i] for i in spread(len(candidates), self.utility_size)]
        missing = [r for r in chosen if not r.response]
        if missing:
            raise RecordError(", ".join(s.path for s in self.utility_sources), None, "response",
                              f"{len(missing)} of {len(chosen)} utility records have no response (first: {missing[0].prompt[:60]!r})",
                              "give helpful answers in a response column, or set utility_size: 0")
        held_out = {r.prompt for r in chosen}
        neutral = [r for r in self.neutral_records if r.prompt not in held_out]
        if self.neutral_records and not neutral:
            raise ValueError("RefusalDataModule: field 'utility': the utility set holds every neutral prompt, so none is "
                             "left for the concept vectors; give other utility sources or a smaller utility_size")
        self.utility_records, self.neutral_records = chosen, neutral

    def _check_responses(self) -> None:
        checks = [("retain", self.retain_records, self.train_sources)]
        if self.encoding.forget_responses == "data":
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
        encoding = self.encoding
        examples, truncated = [], 0
        for i, r in enumerate(records):
            e = encode_example(self.tokenizer, r.prompt, r.response or "", encoding.max_length, encoding.max_prompt_length, encoding.system_prompt)
            truncated += e.pop("truncated")
            examples.append({**e, "index": i, "domain_id": domain_index(r.domain)})
        if truncated:
            log.warning(
                "%s: truncated %d of %d examples to max_prompt_length=%d / max_length=%d",
                name, truncated, len(records), encoding.max_prompt_length, encoding.max_length,
            )
        return examples

    def _encode_prompts(self, records: Sequence[Record], indices: Sequence[int], name: str) -> list[dict[str, Any]]:
        encoding = self.encoding
        examples, truncated = [], 0
        for i in indices:
            r = records[i]
            ids, cut = encode_prompt(self.tokenizer, r.prompt, encoding.max_prompt_length, encoding.system_prompt)
            truncated += cut
            examples.append({"input_ids": ids, "index": i, "domain_id": domain_index(r.domain), "harmful": r.harmful, "prompt": r.prompt})
        if truncated:
            log.warning("%s: truncated %d of %d prompts to max_prompt_length=%d (kept their end)", name, truncated, len(examples), encoding.max_prompt_length)
        # Longest first: batches of similar length waste little padding, and memory peaks show up at once.
        examples.sort(key=lambda e: (-len(e["input_ids"]), e["index"]))
        return examples

    # ---- self-generated forget responses ----------------------------------------------------------

    def self_responses_path(self) -> Path:
        """`<log_dir>/self_responses.jsonl` of the attached trainer (its default_root_dir without a logger)."""
        trainer = self.trainer
        return Path(trainer.log_dir or trainer.default_root_dir) / SELF_RESPONSES_FILE

    def _with_generated_responses(self, records: list[Record]) -> list[Record]:
        if self._generate_responses is None:
            raise RuntimeError(
                "RefusalDataModule: forget_responses is 'generate' but no generate_responses was connected: "
                "call connect(tokenizer, generate_responses) (e.g. the model's generate_responses), or set forget_responses: data"
            )
        trainer = self.trainer
        return with_self_responses(
            records, self.self_responses_path(), self._generate_responses,
            is_global_zero=trainer.is_global_zero, barrier=lambda: trainer.strategy.barrier("self_responses"),
        )

    # ---- loaders ------------------------------------------------------------------------------

    def training_order_seed(self) -> int:
        """`shuffle_seed`, or `seed` + the run's global seed (`seed_everything`; 0 when none was set)."""
        if self.shuffle_seed is not None:
            return self.shuffle_seed
        return self.selection.seed + int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _train_loader(self, name: str, examples: list[dict[str, Any]], offset: int) -> DataLoader:
        replicas, rank = self._data_parallel()
        batch_size, seed = self.encoding.batch_size, self.training_order_seed() + offset
        sampler = ResumableTrainSampler(ExampleDataset(examples), num_replicas=replicas, rank=rank, batch_size=batch_size, seed=seed)
        self._train_samplers[name] = sampler
        return ResumableDataLoader(
            sampler.dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=TrainCollator(pad_token_id(self.tokenizer)),
            num_workers=self.encoding.num_workers,
            # Its own generator: each `iter()` draws a worker base seed, and drawn from the global RNG it
            # would shift the dropout stream whenever Lightning starts an iterator (at resume, too).
            generator=torch.Generator().manual_seed(seed),
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Count the training batches each of our samplers has delivered to a step: the data position of
        # a checkpoint. Lightning keeps a DistributedSampler subclass as it is, so these are the ones in use.
        trainer = self.trainer
        if trainer is not None and trainer.training and isinstance(batch, dict):
            for name, sampler in self._train_samplers.items():
                if name in batch:
                    sampler.consumed += 1
        return batch

    def train_dataloader(self) -> CombinedLoader:
        """`{"forget": ..., "retain": ...}` batches; the forget loader drives the epoch, retain cycles beside it."""
        self.load()
        forget = self.forget_records
        if forget and self.encoding.forget_responses == "generate":
            forget = self._with_generated_responses(forget)
        self._train_samplers = {}
        loaders: dict[str, DataLoader] = {}
        if forget:
            loaders["forget"] = self._train_loader("forget", self._encode_train(forget, "forget"), 0)
        if self.retain_records:
            loaders["retain"] = self._train_loader("retain", self._encode_train(self.retain_records, "retain"), 1)
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
        examples = self._encode_prompts(records, indices, name)
        return self._eval_loader(examples, EvalCollator(pad_token_id(self.tokenizer)), batch_size)

    def utility_dataloader(self) -> DataLoader:
        """Teacher-forced batches of the utility set: prompt + helpful answer, right-padded, `labels` on the
        answer only, `valid` False on a shard's padding copies; longest first, sharded across ranks. What
        `val/utility/nll` is measured on (`Evaluator.update_utility`)."""
        self.load()
        examples = [{**e, "harmful": False} for e in self._encode_train(self.utility_records, "utility")]
        examples.sort(key=lambda e: (-len(e["input_ids"]), e["index"]))
        # Its own generator: each `iter()` draws a base seed, which from the global RNG would shift the
        # training's random stream (dropout) by one draw per evaluation compared with a run without it.
        return self._eval_loader(examples, UtilityCollator(pad_token_id(self.tokenizer)), generator=torch.Generator())

    def _eval_loader(self, examples: list[dict[str, Any]], collate: Callable, batch_size: int | None = None,
                     generator: torch.Generator | None = None) -> DataLoader:
        """An evaluation DataLoader in the examples' order: every rank a strided shard (`ShardedEvalSampler`)."""
        dataset = ExampleDataset(examples)
        sampler = None
        replicas, rank = self._data_parallel()
        if replicas > 1:
            sampler = ShardedEvalSampler(dataset, num_replicas=replicas, rank=rank)
        return DataLoader(
            dataset,
            batch_size=batch_size or self.encoding.eval_batch_size,
            shuffle=False,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.encoding.num_workers,
            generator=generator,
        )

    def _data_parallel(self) -> tuple[int, int]:
        trainer = self.trainer
        kwargs = trainer.distributed_sampler_kwargs if trainer is not None else None
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
        domain = parse_domains([domain], "domain")[0] if domain is not None else None
        indices = [
            i for i, r in enumerate(self.eval_records)
            if (domain is None or r.domain == domain) and (harmful is None or r.harmful == harmful)
        ]
        return self.prompt_dataloader(self.eval_records, indices)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The eval prompts (dataloader_idx 0), then the external eval prompts (1, with `external_eval`), then
        the utility batches (last, with a utility set); a single loader when it is the only one."""
        loaders = [self.eval_dataloader()]
        if self.external_eval_records:
            loaders.append(self.prompt_dataloader(self.external_eval_records, name="external_eval"))
        if self.utility_records:
            loaders.append(self.utility_dataloader())
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self.val_dataloader()
