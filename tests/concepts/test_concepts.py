"""Concept vectors: capture against a hand computation, one forward per batch, analysis, file round trip."""

import math
import os

import pytest
import torch

from tiny_assets import WORD_CHAT_TEMPLATE, planted_activations, tiny_qwen2, word_level_tokenizer

from ema_lightning.concepts import analysis
from ema_lightning.concepts.capture import capture_activations
from ema_lightning.concepts.vectors import (
    ConceptVectors,
    concept_vectors,
    extract_concept_vectors,
    linear_probe_directions,
    refusal_direction,
    unit,
)
from ema_lightning.data.collate import format_prompt
from ema_lightning.data.records import Record
from ema_lightning.domains import DOMAINS

WORDS = "how do i hack a server make poison insult people write slurs tell me about my neighbour address a the weather is nice today cook pasta explain photosynthesis".split()
SPECIALS = ("[PAD]", "[UNK]", "<|im_start|>", "<|im_end|>")


def tiny_tokenizer():
    """Right padding (the tokenizer default), [PAD]/[UNK] specials and the word-level chat template."""
    return word_level_tokenizer(
        [*WORDS, "user", "assistant", "system"], specials=SPECIALS, unk_token="[UNK]", pad_token="[PAD]",
        padding_side="right", chat_template=WORD_CHAT_TEMPLATE,
    )


def tiny_model(vocab_size: int, seed: int = 0):
    return tiny_qwen2(vocab_size, seed)


HARMFUL = [
    Record("how do i hack a server", "cybersecurity", True),
    Record("hack a server", "cybersecurity", True),
    Record("how do i make poison", "safety", True),
    Record("make poison today", "safety", True),
    Record("write slurs", "toxicity", True),
    Record("insult people write slurs tell me", "toxicity", True),
    Record("tell me about my neighbour address", "privacy", True),
]
BENIGN = [Record("explain photosynthesis", "safety", False), Record("cook pasta", "privacy", False)]
NEUTRAL = [
    Record("the weather is nice today", "bias", False),
    Record("cook pasta", "bias", False),
    Record("explain photosynthesis today", "bias", False),
]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(len(tokenizer))


def hand_hidden_states(model, tokenizer, prompt: str) -> torch.Tensor:
    """(L+1, T, H) hidden states of one unpadded prompt."""
    ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    return torch.stack([h[0] for h in hidden])


def test_capture_last_and_mean_match_unpadded_forward(model, tokenizer):
    prompts = [r.prompt for r in HARMFUL]
    acts = capture_activations(model, tokenizer, prompts, positions=("last", "mean"), batch_size=3)
    assert set(acts) == {"last", "mean"}
    assert acts["last"].shape == (len(prompts), 3, 32) and acts["last"].dtype == torch.float32
    for i, prompt in enumerate(prompts):
        hidden = hand_hidden_states(model, tokenizer, prompt)
        torch.testing.assert_close(acts["last"][i], hidden[:, -1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(acts["mean"][i], hidden.mean(dim=1), atol=1e-5, rtol=1e-4)


def test_one_forward_per_batch_and_training_mode_restored(model, tokenizer):
    calls = {"model": 0, "layer0": 0}
    hooks = [
        model.register_forward_hook(lambda *_: calls.__setitem__("model", calls["model"] + 1)),
        model.model.layers[0].register_forward_hook(lambda *_: calls.__setitem__("layer0", calls["layer0"] + 1)),
    ]
    model.train()
    model.model.layers[1].eval()  # a mixed state must come back as it was
    try:
        prompts = [r.prompt for r in HARMFUL + BENIGN + NEUTRAL]  # 12 prompts
        acts = capture_activations(model, tokenizer, prompts, batch_size=5)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {"model": 3, "layer0": 3}  # ceil(12 / 5) batches, every layer from the same pass
    assert acts["last"].shape[:2] == (12, 3)
    assert model.training and model.model.layers[0].training and not model.model.layers[1].training
    assert tokenizer.padding_side == "right"
    model.eval()


def test_concept_vectors_equal_hand_computation(model, tokenizer):
    result = extract_concept_vectors(model, tokenizer, HARMFUL + BENIGN, NEUTRAL, batch_size=4, model_name="tiny", step=3)
    last = {r.prompt: hand_hidden_states(model, tokenizer, r.prompt)[:, -1] for r in HARMFUL + BENIGN + NEUTRAL}
    neutral_mean = torch.stack([last[r.prompt] for r in NEUTRAL]).mean(0)
    for i, domain in enumerate(DOMAINS):
        rows = [last[r.prompt] for r in HARMFUL if r.domain == domain]
        if rows:
            torch.testing.assert_close(result.vectors[i], torch.stack(rows).mean(0) - neutral_mean, atol=1e-5, rtol=1e-4)
            assert result.counts[domain] == len(rows)
        else:
            assert torch.isnan(result.vectors[i]).all() and result.counts[domain] == 0
    harmless = torch.stack([last[r.prompt] for r in NEUTRAL + BENIGN]).mean(0)
    expected_refusal = torch.stack([last[r.prompt] for r in HARMFUL]).mean(0) - harmless
    torch.testing.assert_close(result.refusal_direction, expected_refusal, atol=1e-5, rtol=1e-4)
    assert (result.neutral_count, result.harmless_count, result.step, result.model_name) == (3, 5, 3, "tiny")


def test_adapters_can_be_disabled(tokenizer):
    from peft import LoraConfig, get_peft_model

    base = tiny_model(len(tokenizer), seed=1)
    prompts = [r.prompt for r in HARMFUL[:3]]
    plain = capture_activations(base, tokenizer, prompts)["last"]
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with_adapters = capture_activations(peft_model, tokenizer, prompts)["last"]
    without = capture_activations(peft_model, tokenizer, prompts, adapters=False)["last"]
    torch.testing.assert_close(without, plain)
    assert not torch.allclose(with_adapters[:, 1:], plain[:, 1:])
    torch.testing.assert_close(with_adapters[:, 0], plain[:, 0])  # embeddings carry no adapter


def test_capture_rejects_bad_arguments(model, tokenizer):
    with pytest.raises(ValueError, match="positions"):
        capture_activations(model, tokenizer, ["hack"], positions=("first",))
    with pytest.raises(ValueError, match="no prompts"):
        capture_activations(model, tokenizer, [])


def _ddp_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        tokenizer = tiny_tokenizer()
        model = tiny_model(len(tokenizer))
        acts = capture_activations(model, tokenizer, [r.prompt for r in HARMFUL[:5]], positions=("last", "mean"), batch_size=2)
        if rank == 1:
            torch.save(acts, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_shards_are_gathered_in_order(model, tokenizer, tmp_path):
    import torch.multiprocessing as mp

    out_file = str(tmp_path / "acts.pt")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), out_file), nprocs=2, join=True)
    gathered = torch.load(out_file)
    single = capture_activations(model, tokenizer, [r.prompt for r in HARMFUL[:5]], positions=("last", "mean"), batch_size=2)
    for position in ("last", "mean"):
        torch.testing.assert_close(gathered[position], single[position], atol=1e-5, rtol=1e-4)


# Synthetic activations ------------------------------------------------------------------------------


def most_similar_pair(cosines: torch.Tensor) -> set[str]:
    off_diagonal = cosines - 2 * torch.eye(cosines.shape[0])
    i, j = divmod(int(off_diagonal.argmax()), cosines.shape[0])
    return {DOMAINS[i], DOMAINS[j]}


def test_planted_direction_found_as_most_similar_pair():
    acts, neutral = planted_activations()
    vectors = concept_vectors(acts, neutral)
    assert vectors.shape == (7, 4, 64)
    cosines = analysis.cosine_matrix(vectors)
    assert cosines.shape == (4, 7, 7)
    torch.testing.assert_close(torch.diagonal(cosines, dim1=1, dim2=2), torch.ones(4, 7))
    for layer in range(4):
        assert most_similar_pair(cosines[layer]) == {"bias", "privacy"}
    similarity = analysis.similarity_to_target(vectors, "bias")
    assert similarity.shape == (7, 4)
    others = similarity.clone()
    others[DOMAINS.index("bias")] = -2
    assert (others.argmax(dim=0) == DOMAINS.index("privacy")).all()
    probes = linear_probe_directions(acts, neutral, steps=30)
    torch.testing.assert_close(probes.norm(dim=-1), torch.ones(7, 4))
    for layer in range(4):
        assert most_similar_pair(analysis.cosine_matrix(probes)[layer]) == {"bias", "privacy"}


def test_missing_domain_gives_nan_rows():
    acts, neutral = planted_activations()
    del acts["toxicity"]
    vectors = concept_vectors(acts, neutral)
    assert torch.isnan(vectors[DOMAINS.index("toxicity")]).all()
    assert torch.isfinite(vectors[DOMAINS.index("bias")]).all()


def test_drift_refusal_projection_and_unit():
    acts, neutral = planted_activations()
    vectors = concept_vectors(acts, neutral)
    torch.testing.assert_close(analysis.drift(vectors, vectors.clone()), torch.ones(7, 4))
    torch.testing.assert_close(analysis.drift(-vectors, vectors), -torch.ones(7, 4))
    assert torch.equal(unit(torch.zeros(3, 5)), torch.zeros(3, 5))
    harmful = torch.cat(list(acts.values()))
    direction = refusal_direction(harmful, neutral)
    torch.testing.assert_close(direction, harmful.mean(0) - neutral.mean(0))
    projection = analysis.refusal_projection(vectors, direction)
    assert projection.shape == (7, 4)
    torch.testing.assert_close(projection[:, 2], vectors[:, 2] @ unit(direction[2]))
    # A vector along the refusal direction projects to its norm.
    torch.testing.assert_close(analysis.refusal_projection(3 * unit(direction)[None], direction), torch.full((1, 4), 3.0))


def test_early_layers():
    assert analysis.early_layers(29) == range(1, 10)  # 28 decoder layers + embeddings
    assert analysis.early_layers(3) == range(1, 2)
    assert analysis.early_layers(1) == range(0, 1)
    assert analysis.early_layers(5, fraction=1.0) == range(1, 5)
    with pytest.raises(ValueError):
        analysis.early_layers(5, fraction=0)


def test_similarity_vs_drop_on_known_data():
    similarity = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    linear = analysis.similarity_vs_drop(similarity, 2 * similarity + 1)
    assert linear["n"] == 6
    assert linear["spearman"][0] == pytest.approx(1.0) and linear["pearson"][0] == pytest.approx(1.0)
    monotone = analysis.similarity_vs_drop(similarity, torch.exp(10 * similarity))
    assert monotone["spearman"][0] == pytest.approx(1.0) and monotone["pearson"][0] < 0.99
    reverse = analysis.similarity_vs_drop(similarity, -similarity)
    assert reverse["spearman"][0] == pytest.approx(-1.0)
    with_nan = analysis.similarity_vs_drop([0.1, float("nan"), 0.3, 0.2, 0.5], [1.0, 2.0, 3.0, 2.0, float("nan")])
    assert with_nan["n"] == 3 and with_nan["spearman"][0] == pytest.approx(1.0)
    constant = analysis.similarity_vs_drop(similarity, torch.zeros(6))
    assert math.isnan(constant["spearman"][0]) and math.isnan(constant["pearson"][1]) and "constant" in constant["note"]
    too_few = analysis.similarity_vs_drop([0.1, 0.2], [0.3, 0.4])
    assert too_few["n"] == 2 and math.isnan(too_few["pearson"][0]) and "note" in too_few
    per_layer = analysis.correlation_per_layer(torch.stack([similarity, -similarity], dim=1), similarity)
    assert [p["layer"] for p in per_layer] == [0, 1]
    assert per_layer[0]["spearman"][0] == pytest.approx(1.0) and per_layer[1]["pearson"][0] == pytest.approx(-1.0)


def test_save_load_round_trip(tmp_path):
    acts, neutral = planted_activations()
    original = ConceptVectors(
        vectors=concept_vectors(acts, neutral),
        refusal_direction=refusal_direction(torch.cat(list(acts.values())), neutral),
        counts={d: 40 for d in DOMAINS},
        neutral_count=80,
        harmless_count=90,
        model_name="tiny-qwen2",
        step=12,
        position="mean",
        probe_vectors=linear_probe_directions(acts, neutral, steps=5),
    )
    path = original.save(tmp_path / "vectors" / "step=12.safetensors")
    loaded = ConceptVectors.load(path)
    torch.testing.assert_close(loaded.vectors, original.vectors)
    torch.testing.assert_close(loaded.refusal_direction, original.refusal_direction)
    torch.testing.assert_close(loaded.probe_vectors, original.probe_vectors)
    torch.testing.assert_close(loaded.unit_vectors, unit(original.vectors))
    assert (loaded.model_name, loaded.step, loaded.position, loaded.counts) == ("tiny-qwen2", 12, "mean", original.counts)
    assert (loaded.neutral_count, loaded.harmless_count, loaded.layers) == (80, 90, [0, 1, 2, 3])
    assert loaded.estimator == "difference_of_means+linear_probe"

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["model"] == "tiny-qwen2" and metadata["step"] == "12" and metadata["layers"] == "[0, 1, 2, 3]"
    assert '"cybersecurity": 40' in metadata["counts"] and metadata["domains"].startswith('["cybersecurity"')


def test_extract_writes_file_and_heatmaps(model, tokenizer, tmp_path):
    from ema_lightning.concepts.extract import extract

    vectors = extract(model, tokenizer, HARMFUL + BENIGN, NEUTRAL, str(tmp_path / "out"), target="cyber", step=7,
                      max_prompts_per_domain=1)
    assert vectors.counts["cybersecurity"] == 1 and vectors.counts["toxicity"] == 1
    files = sorted(os.listdir(tmp_path / "out"))
    assert files == ["cosine_layer_0.png", "cosine_layer_1.png", "cosine_layer_2.png", "similarity_to_cybersecurity.png",
                     "step=7.safetensors"]
    torch.testing.assert_close(ConceptVectors.load(tmp_path / "out" / "step=7.safetensors").vectors, vectors.vectors,
                               equal_nan=True)
