"""RefusalDataModule: set selection, config checks, train/eval loaders, distributed eval shards, self-generated responses."""

import json
import logging
import types
from collections import Counter

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities import CombinedLoader
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ema_lightning.data.collate import IGNORE_INDEX
from ema_lightning.data.datamodule import RefusalDataModule
from ema_lightning.data.records import Record, RecordError
from ema_lightning.data.samplers import ShardedEvalSampler
from ema_lightning.data.selection import stratified_sample
from ema_lightning.data.sources import RecordSource
from ema_lightning.domains import DOMAINS, domain_index

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE tokenizer trained on a few sentences, with a Qwen-style chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|pad|>", "<|im_start|>", "<|im_end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["How do I do a harmful thing in this domain?", "I can't help with that.", "Sure, here is how."], trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>")
    wrapped.chat_template = TEMPLATE
    return wrapped


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r.to_dict() if isinstance(r, Record) else r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture
def data(tmp_path):
    """train: per domain 4 harmful (refusal) + 2 benign (help); eval: per domain 3 harmful + 2 benign; neutral: 3."""
    train, evaluation = [], []
    for d in DOMAINS:
        train += [Record(f"harmful {d} request number {i}" + " really" * i, d, True, "I can't help with that.") for i in range(4)]
        train += [Record(f"benign {d} question {i}", d, False, "Sure, here is how.") for i in range(2)]
        evaluation += [Record(f"eval harmful {d} {i}" + " x" * i, d, True) for i in range(3)]
        evaluation += [Record(f"eval benign {d} {i}", d, False) for i in range(2)]
    neutral = [Record(f"neutral {i}", "bias", False) for i in range(3)]
    return types.SimpleNamespace(
        train=write_jsonl(tmp_path / "train.jsonl", train),
        eval=write_jsonl(tmp_path / "eval.jsonl", evaluation),
        neutral=write_jsonl(tmp_path / "neutral.jsonl", neutral),
        dir=tmp_path,
    )


def make(data, tokenizer=None, **kwargs):
    dm = RefusalDataModule(train=[RecordSource(data.train)], eval=[RecordSource(data.eval)], neutral=[RecordSource(data.neutral)], **kwargs)
    if tokenizer is not None:
        dm.connect(tokenizer)
    return dm


# ---- configuration ---------------------------------------------------------------------------


def test_config_checked_without_reading_files():
    dm = RefusalDataModule(train=[RecordSource("missing.jsonl")], target_domain="Cyber", retain_domains=["toxic", "Bias"])
    assert dm.target_domain == "cybersecurity" and dm.retain_domains == ["toxicity", "bias"]
    with pytest.raises(RecordError, match="missing.jsonl: file not found"):
        dm.load()


@pytest.mark.parametrize("kwargs, match", [
    ({"target_domain": "astrology"}, "field 'target_domain': unknown domain 'astrology'; accepted: one of " + ", ".join(DOMAINS)),
    ({"target_domain": "safety", "retain_domains": ["safety", "bias"]}, "contains the target domain"),
    ({"max_length": 64, "max_prompt_length": 64}, "leaves no room"),
    ({"forget": [RecordSource("f.jsonl")]}, "needs a target_domain"),
    ({"forget_responses": "sample"}, "accepted: 'data', 'generate'"),
    ({"retain_size": -1}, "retain_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"utility_size": -1}, "field 'utility_size': must be >= 0"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RefusalDataModule(**kwargs)


def test_defaults_are_builtin_sources():
    dm = RefusalDataModule()
    assert [s.path for s in dm.train_sources] == ["builtin:train"]
    assert [s.path for s in dm.eval_sources] == ["builtin:eval"]
    assert [s.path for s in dm.neutral_sources] == ["builtin:neutral"]
    assert [s.path for s in dm.utility_sources] == ["builtin:neutral"] and dm.utility_size == 30
    assert dm.forget_sources is None and dm.target_domain is None


# ---- set selection ---------------------------------------------------------------------------


def test_unlearning_sets(data, caplog):
    with caplog.at_level(logging.INFO, logger="ema_lightning.data.datamodule"):
        dm = make(data, target_domain="safety")
        dm.setup("fit")
    assert len(dm.forget_records) == 4 and all(r.domain == "safety" and r.harmful for r in dm.forget_records)
    assert len(dm.retain_records) == 6 * 6 and "safety" not in {r.domain for r in dm.retain_records}
    assert len(dm.eval_records) == 35 and len(dm.neutral_records) == 3
    assert "forget set: 4 records (4 harmful, 0 benign): safety 4" in caplog.text
    assert "retain set: 36 records" in caplog.text


def test_alignment_sets_retain_everything(data):
    dm = make(data).load()
    assert dm.forget_records == [] and len(dm.retain_records) == 42


def test_caps_are_seeded_and_stratified(data):
    dm = make(data, target_domain="cyber", retain_size=12, forget_size=3, eval_per_domain=1, seed=1).load()
    assert Counter(r.domain for r in dm.retain_records) == Counter({d: 2 for d in DOMAINS if d != "cybersecurity"})
    assert len(dm.forget_records) == 3
    assert Counter((r.domain, r.harmful) for r in dm.eval_records) == Counter({(d, h): 1 for d in DOMAINS for h in (True, False)})
    again = make(data, target_domain="cyber", retain_size=12, forget_size=3, eval_per_domain=1, seed=1).load()
    assert again.retain_records == dm.retain_records and again.forget_records == dm.forget_records
    assert make(data, target_domain="cyber", retain_size=0).load().retain_records == []
    records = [Record(f"p{i}", "bias" if i < 10 else "privacy", True) for i in range(12)]
    assert Counter(r.domain for r in stratified_sample(records, 4, 0)) == Counter(bias=2, privacy=2)


def test_forget_sources_filtered_to_target_domain(data, tmp_path):
    forget = write_jsonl(tmp_path / "forget.jsonl", [Record("f1", "privacy", True, "No."), Record("f2", "bias", True, "No.")])
    dm = make(data, target_domain="privacy", forget=[RecordSource(forget)]).load()
    assert [r.prompt for r in dm.forget_records] == ["f1"]
    with pytest.raises(RecordError, match="empty split: no forget records in domain 'safety'"):
        make(data, target_domain="safety", forget=[RecordSource(forget)]).load()


def test_missing_responses_are_an_error(data, tmp_path):
    no_response = write_jsonl(tmp_path / "nr.jsonl", [Record("a", "bias", True), Record("b", "privacy", True, "No.")])
    dm = RefusalDataModule(train=[RecordSource(no_response)], eval=[RecordSource(data.eval)], neutral=[], target_domain="bias")
    with pytest.raises(RecordError, match="field 'response': 1 of 1 forget records have no response.*forget_responses: generate"):
        dm.load()
    dm = RefusalDataModule(train=[RecordSource(no_response)], eval=[RecordSource(data.eval)], neutral=[], target_domain="bias", forget_responses="generate")
    assert len(dm.load().forget_records) == 1 and dm.neutral_records == []


# ---- loaders ---------------------------------------------------------------------------------


def test_train_loader_structure_and_masking(data, tokenizer):
    dm = make(data, tokenizer, target_domain="safety", batch_size=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, CombinedLoader) and set(loader.iterables) == {"forget", "retain"}
    assert loader._mode == "min_size"  # forget: 2 batches < retain: 18 -> forget drives the epoch
    batches = list(loader)
    assert len(batches) == 2
    batch = batches[0][0]
    forget = batch["forget"]
    assert forget["input_ids"].shape == forget["labels"].shape == forget["attention_mask"].shape
    assert (forget["domain_ids"] == domain_index("safety")).all()
    assert (forget["labels"][forget["attention_mask"] == 0] == IGNORE_INDEX).all()
    first = forget["labels"][0]
    assert first[0] == IGNORE_INDEX and (first == tokenizer.eos_token_id).any()
    assert sorted(i for b in batches for i in b[0]["forget"]["index"].tolist()) == [0, 1, 2, 3]
    assert (batch["retain"]["domain_ids"] != domain_index("safety")).all()


def test_train_loader_forget_longer_than_retain_cycles_retain(data, tokenizer):
    dm = make(data, tokenizer, target_domain="safety", retain_size=2, batch_size=1).load()
    loader = dm.train_dataloader()
    assert loader._mode == "max_size_cycle" and len(list(loader)) == 4


def test_train_loader_alignment_and_forget_only(data, tokenizer):
    assert set(make(data, tokenizer).load().train_dataloader().iterables) == {"retain"}
    assert set(make(data, tokenizer, target_domain="bias", retain_size=0).load().train_dataloader().iterables) == {"forget"}


def test_train_shuffle_is_seeded(data, tokenizer):
    def order(seed):
        dm = make(data, tokenizer, seed=seed, batch_size=4).load()
        return [i for b in dm.train_dataloader() for i in b[0]["retain"]["index"].tolist()]

    assert order(3) == order(3) and sorted(order(3)) == list(range(42))


def test_each_run_seed_has_its_own_training_order_on_the_same_sets(data, tokenizer, monkeypatch):
    """`seed_everything` (Lightning's PL_GLOBAL_SEED) moves the training order, never the sets; `shuffle_seed` pins it."""
    def run(global_seed, **kwargs):
        monkeypatch.setenv("PL_GLOBAL_SEED", str(global_seed))
        dm = make(data, tokenizer, retain_size=30, eval_per_domain=1, batch_size=4, **kwargs).load()
        sets = [[r.prompt for r in records] for records in (dm.retain_records, dm.eval_records)]
        return sets, [i for b in dm.train_dataloader() for i in b[0]["retain"]["index"].tolist()]

    (sets0, order0), (sets1, order1) = run(0), run(1)
    assert sets0 == sets1 and order0 != order1 and sorted(order0) == sorted(order1)
    assert run(1, shuffle_seed=0)[1] == order0 and run(5, shuffle_seed=0)[1] == order0
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert make(data, shuffle_seed=None).training_order_seed() == 0
    with pytest.raises(ValueError, match="shuffle_seed"):
        make(data, shuffle_seed=-1)


def test_truncation_counted(data, tokenizer, caplog):
    dm = make(data, tokenizer, target_domain="safety", max_length=24, max_prompt_length=20)
    with caplog.at_level(logging.WARNING):
        dm.load().train_dataloader()
        dm.val_dataloader()
    assert "forget: truncated 4 of 4 examples to max_prompt_length=20 / max_length=24" in caplog.text
    assert "eval: truncated 35 of 35 prompts to max_prompt_length=20" in caplog.text


def test_eval_loader_sorted_left_padded_and_subsets(data, tokenizer):
    dm = make(data, tokenizer, eval_batch_size=4, utility_size=0).load()  # no utility set: one val loader
    batches = list(dm.val_dataloader())
    lengths = [int(n) for b in batches for n in b["attention_mask"].sum(1)]
    assert lengths == sorted(lengths, reverse=True)
    assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(35))
    first = batches[0]
    assert (first["attention_mask"][:, -1] == 1).all() and first["valid"].all()
    for b in batches:
        for i, prompt, harmful, domain in zip(b["index"].tolist(), b["prompts"], b["harmful"].tolist(), b["domain_ids"].tolist()):
            record = dm.eval_records[i]
            assert (record.prompt, record.harmful, domain_index(record.domain)) == (prompt, harmful, domain)
    subset = [b for b in dm.eval_dataloader(domain="Privacy", harmful=False)]
    assert [p for b in subset for p in b["prompts"]] == ["eval benign privacy 0", "eval benign privacy 1"]
    assert len(dm.test_dataloader().dataset) == 35


@pytest.mark.parametrize(("loader", "replicas", "batch_size", "utility_size", "count"),
                         [("val_dataloader", 3, 4, 0, 35), ("utility_dataloader", 4, 2, 7, 7)])
def test_eval_and_utility_loaders_shard_across_ranks(data, tokenizer, loader, replicas, batch_size, utility_size, count):
    seen, batch_counts = [], []
    for rank in range(replicas):
        dm = make(data, tokenizer, eval_batch_size=batch_size, utility_size=utility_size).load()
        dm.trainer = types.SimpleNamespace(distributed_sampler_kwargs={"num_replicas": replicas, "rank": rank}, lightning_module=None)
        shard = getattr(dm, loader)()
        assert isinstance(shard.sampler, ShardedEvalSampler)
        batches = list(shard)
        batch_counts.append(len(batches))
        seen += [i for b in batches for i, ok in zip(b["index"].tolist(), b["valid"].tolist()) if ok]
    assert len(set(batch_counts)) == 1 and sorted(seen) == list(range(count))


def test_tokenizer_and_generation_only_through_connect(data, tokenizer):
    dm = make(data)
    with pytest.raises(RuntimeError, match=r"no tokenizer: call connect\(tokenizer\)"):
        dm.tokenizer
    # A tokenizer on the trainer's module is not looked up: connect() is the one way in.
    dm.trainer = types.SimpleNamespace(lightning_module=types.SimpleNamespace(tokenizer=tokenizer), distributed_sampler_kwargs=None)
    with pytest.raises(RuntimeError, match="no tokenizer"):
        dm.load().train_dataloader()
    assert dm.connect(tokenizer) is dm and dm.tokenizer is tokenizer
    generating = make(data, tokenizer, target_domain="toxicity", forget_responses="generate").load()
    generating.trainer = types.SimpleNamespace(log_dir=None, default_root_dir=str(data.dir), is_global_zero=True, distributed_sampler_kwargs=None)
    with pytest.raises(RuntimeError, match=r"forget_responses is 'generate' but no generate_responses was connected: call connect\(tokenizer, generate_responses\)"):
        generating.train_dataloader()


def test_generated_forget_responses_are_cached(data, tokenizer, tmp_path):
    calls, barriers = [], []

    def generate_responses(prompts):
        calls.append(list(prompts))
        return [f"generated for {p}" for p in prompts]

    def attach(dm):
        dm.connect(tokenizer, generate_responses)
        strategy = types.SimpleNamespace(barrier=barriers.append)
        dm.trainer = types.SimpleNamespace(log_dir=str(tmp_path / "logs"), default_root_dir=str(tmp_path), is_global_zero=True, distributed_sampler_kwargs=None, strategy=strategy)
        return dm

    dm = attach(make(data, target_domain="toxicity", forget_responses="generate", batch_size=4).load())
    loader = dm.train_dataloader()
    assert len(calls) == 1 and len(calls[0]) == 4 and barriers == ["self_responses"]
    cache = tmp_path / "logs" / "self_responses.jsonl"
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert {r["prompt"] for r in rows} == {r.prompt for r in dm.forget_records}
    labels = next(iter(loader))[0]["forget"]["labels"][0]
    text = tokenizer.decode(labels[labels != IGNORE_INDEX])
    assert text.startswith("generated for harmful toxicity")
    attach(make(data, target_domain="toxicity", forget_responses="generate").load()).train_dataloader()
    assert len(calls) == 1 and barriers == ["self_responses"]  # second run reused the cache


def test_bad_self_response_cache_line_names_file_and_line(data, tokenizer, tmp_path):
    cache = tmp_path / "self_responses.jsonl"
    cache.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": "a"}\n', encoding="utf-8")
    dm = make(data, tokenizer, target_domain="toxicity", forget_responses="generate").load()
    dm.connect(tokenizer, lambda prompts: ["x"] * len(prompts))
    dm.trainer = types.SimpleNamespace(log_dir=None, default_root_dir=str(tmp_path), is_global_zero=True, distributed_sampler_kwargs=None)
    with pytest.raises(RecordError, match=r"self_responses.jsonl:3: field 'prompt/response': invalid cache line; delete the file to regenerate"):
        dm.train_dataloader()


class _TinyModule(pl.LightningModule):
    """Consumes the datamodule's batches in a real Trainer loop (sizes only)."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.embedding = torch.nn.Embedding(len(tokenizer), 4)
        self.seen = Counter()

    def training_step(self, batch, batch_idx):
        self.seen.update(list(batch))
        return sum(self.embedding(b["input_ids"]).mean() for b in batch.values())

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.seen["utility" if "labels" in batch else "val"] += int(batch["valid"].sum())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trainer_runs_the_loaders(data, tokenizer, tmp_path):
    module = _TinyModule(tokenizer)
    dm = make(data, tokenizer, target_domain="bias", batch_size=2, eval_batch_size=8)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert module.seen["forget"] == 2 and module.seen["retain"] == 2 and module.seen["val"] == 35
    assert module.seen["utility"] == 30  # the second val loader: the utility set
    # The data position a checkpoint saves: batches trained on, counted on the samplers the loaders use.
    assert {name: loader.sampler.consumed for name, loader in trainer.train_dataloader.items()} == {"forget": 2, "retain": 2}


# ---- utility set -----------------------------------------------------------------------------


def test_utility_set_is_held_out_of_the_neutral_prompts_spread_over_templates_and_fixed():
    from ema_lightning.data.builtin import builtin_template_ids

    dm = RefusalDataModule(utility_size=30).load()
    neutral = builtin_records_by_prompt()
    assert len(dm.utility_records) == 30 and len(dm.neutral_records) == 70
    assert {r.prompt for r in dm.utility_records}.isdisjoint(r.prompt for r in dm.neutral_records)
    assert {r.prompt for r in dm.utility_records} | {r.prompt for r in dm.neutral_records} == set(neutral)
    templates = dict(zip(neutral, builtin_template_ids("neutral")))
    assert Counter(templates[r.prompt] for r in dm.utility_records) == {f"neutral/{t}": 3 for t in range(10)}
    assert all(r.response for r in dm.utility_records)
    other_seed = RefusalDataModule(utility_size=30, seed=5, target_domain="bias").load()
    assert other_seed.utility_records == dm.utility_records  # the same set for every seed and target


def builtin_records_by_prompt():
    from ema_lightning.data.builtin import builtin_records

    return [r.prompt for r in builtin_records("neutral")]


def test_utility_loader_is_teacher_forced_on_the_answer_and_last_among_val_loaders(data, tokenizer):
    dm = make(data, tokenizer, eval_batch_size=8, utility_size=12).load()
    loaders = dm.val_dataloader()
    assert len(loaders) == 2 and len(loaders[1].dataset) == 12
    batches = list(loaders[1])
    assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(12))
    for b in batches:
        assert b["valid"].all() and (b["attention_mask"][:, 0] == 1).all()  # right-padded
        for row, i in enumerate(b["index"].tolist()):
            record = dm.utility_records[i]
            answer = [t for t, label in zip(b["input_ids"][row].tolist(), b["labels"][row].tolist()) if label != IGNORE_INDEX]
            assert tokenizer.decode(answer) == record.response + tokenizer.eos_token
    external = make(data, tokenizer, external_eval=[RecordSource(data.eval)], utility_size=12).load().val_dataloader()
    assert len(external) == 3 and "labels" in next(iter(external[2])) and "labels" not in next(iter(external[1]))


def test_utility_drops_training_prompts_and_leaves_neutral_its_other_prompts(data, tokenizer, caplog):
    train_prompt = "benign bias question 0"
    utility = write_jsonl(data.dir / "utility.jsonl", [Record(train_prompt, "bias", False, "Sure, here is how."),
                                                       Record("neutral 1", "bias", False, "An answer."),
                                                       Record("a harmful ask", "bias", True, "I can't help with that."),
                                                       Record("what is two plus two", "bias", False, "Four.")])
    with caplog.at_level(logging.WARNING):
        dm = make(data, tokenizer, utility=[RecordSource(utility)]).load()
    assert [r.prompt for r in dm.utility_records] == ["neutral 1", "what is two plus two"]  # no refusal either
    assert "utility: dropped 1 of 3 records whose prompt is a training prompt" in caplog.text
    assert [r.prompt for r in dm.neutral_records] == ["neutral 0", "neutral 2"]  # the held-out one left out


def test_utility_set_errors(data, tokenizer):
    no_answer = write_jsonl(data.dir / "no_answer.jsonl", [Record("a neutral question", "bias", False)])
    with pytest.raises(RecordError, match="1 of 1 utility records have no response"):
        make(data, utility=[RecordSource(no_answer)]).load()
    answered = write_jsonl(data.dir / "answered.jsonl", [Record(f"neutral {i}", "bias", False, "An answer.") for i in range(3)])
    with pytest.raises(ValueError, match="the utility set holds every neutral prompt"):
        make(data, utility=[RecordSource(answered)]).load()  # the same prompts as the neutral set
    none = make(data, tokenizer, utility_size=0).load()
    assert none.utility_records == [] and len(none.neutral_records) == 3
    assert not isinstance(none.val_dataloader(), list)


def test_utility_loader_leaves_the_global_random_stream_alone(data, tokenizer):
    loader = make(data, tokenizer, utility_size=5).load().utility_dataloader()
    torch.manual_seed(0)
    list(loader)
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), after)  # iterating drew nothing from the global RNG
