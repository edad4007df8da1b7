"""The output head at the response positions only: the objectives give what they give on full logits."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny_assets import tiny_qwen2

from ema_lightning.layers import scored_logits
from ema_lightning.objectives import (
    IGNORE_INDEX,
    cross_entropy_loss,
    kl_to_reference,
    response_window,
    sequence_log_probs,
    token_log_probs,
)

VOCAB = 40


def _batch(seed: int = 0):
    """Right-padded prompt + response rows of different lengths, one row with nothing scored."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (4, 12), generator=generator)
    mask = torch.ones_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 3:9] = ids[0, 3:9]       # prompt 3, response 6, padding 3
    labels[1, 8:12] = ids[1, 8:12]     # long prompt, response to the end
    labels[2, 5:6] = ids[2, 5:6]       # one response token
    mask[0, 9:] = 0
    mask[3, 6:] = 0                    # row 3: prompt only
    return ids, mask, labels


def test_window_holds_each_rows_scored_labels_at_the_positions_that_predict_them():
    _, _, labels = _batch()
    index, window = response_window(labels)
    assert index.shape == window.shape == (4, 7)  # longest span (row 0: 6 labels) + 1
    for b in range(4):
        picked = {(int(index[b, j]), int(window[b, j + 1])) for j in range(6) if window[b, j + 1] != IGNORE_INDEX}
        expected = {(t - 1, int(labels[b, t])) for t in range(1, 12) if labels[b, t] != IGNORE_INDEX}
        assert picked == expected
    assert (window[:, 0] == IGNORE_INDEX).all() and (window[3] == IGNORE_INDEX).all()


@pytest.mark.parametrize("tied", [False, True])
def test_objectives_on_scored_logits_equal_those_on_full_logits(tied):
    torch.manual_seed(0)
    model = tiny_qwen2(VOCAB, tie_word_embeddings=tied)
    ids, mask, labels = _batch()
    full = model(input_ids=ids, attention_mask=mask).logits
    logits, window = scored_logits(model, ids, mask, labels)
    assert logits.shape == (4, 7, VOCAB)
    torch.testing.assert_close(sequence_log_probs(logits, window), sequence_log_probs(full, labels))
    torch.testing.assert_close(cross_entropy_loss(logits, window), cross_entropy_loss(full, labels))
    reference = tiny_qwen2(VOCAB, seed=1, tie_word_embeddings=tied)
    reference_logits, _ = scored_logits(reference, ids, mask, labels)
    full_reference = reference(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(kl_to_reference(logits, reference_logits, window),
                               kl_to_reference(full, full_reference, labels))
    assert token_log_probs(logits, window)[1].sum() == (labels[:, 1:] != IGNORE_INDEX).sum()


def test_gradients_through_scored_logits_equal_those_through_full_logits():
    ids, mask, labels = _batch(1)
    grads = []
    for scored in (False, True):
        torch.manual_seed(0)
        model = get_peft_model(tiny_qwen2(VOCAB), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        if scored:
            loss = cross_entropy_loss(*scored_logits(model, ids, mask, labels))
        else:
            loss = cross_entropy_loss(model(input_ids=ids, attention_mask=mask).logits, labels)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_a_model_whose_head_is_not_its_output_embeddings_gives_full_logits():
    model = tiny_qwen2(VOCAB)
    model.get_output_embeddings = lambda: None
    ids, mask, labels = _batch()
    logits, same = scored_logits(model, ids, mask, labels)
    assert logits.shape == (4, 12, VOCAB) and same is labels
