"""results.py: Wilson intervals against hand computation, DomainRates validation and strict JSON."""

import json
import math

import pytest

from ema_lightning.domains import DOMAINS
from ema_lightning.results import DomainRates, Evaluation, wilson_interval

Z2 = 1.959964 ** 2


def test_wilson_interval_matches_hand_computation():
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(Z2 / (20 + Z2))  # 0/n: upper bound z^2 / (n + z^2)
    low, high = wilson_interval(20, 20)
    assert low == pytest.approx(20 / (20 + Z2)) and high == 1.0
    # 10/20: centre 0.5, half-width z * sqrt(p(1-p)/n + z^2/(4n^2)) / (1 + z^2/n)
    half = math.sqrt(Z2) * math.sqrt(0.25 / 20 + Z2 / 1600) / (1 + Z2 / 20)
    assert wilson_interval(10, 20) == pytest.approx((0.5 - half, 0.5 + half))
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_domain_rates_validate_and_write_intervals():
    with pytest.raises(ValueError, match="seven domains"):
        DomainRates({"bias": 1}, {"bias": 2})
    with pytest.raises(ValueError, match="0..total"):
        DomainRates(dict.fromkeys(DOMAINS, 3), dict.fromkeys(DOMAINS, 2))
    rates = DomainRates({**dict.fromkeys(DOMAINS, 1), "privacy": 0}, {**dict.fromkeys(DOMAINS, 4), "privacy": 0})
    data = json.loads(json.dumps(Evaluation("val", 1, 0, rates, rates).to_dict(), allow_nan=False))
    assert data["refusal"]["rate"]["privacy"] is None and data["refusal"]["interval"]["privacy"] is None
    assert data["refusal"]["interval"]["bias"] == pytest.approx(list(wilson_interval(1, 4)))
    assert Evaluation.from_dict(data) == Evaluation("val", 1, 0, rates, rates)


def test_ema_score_interval_brackets_the_score_and_is_seeded():
    from ema_lightning.results import ema_score_interval

    base = DomainRates(dict.fromkeys(DOMAINS, 20), dict.fromkeys(DOMAINS, 20))
    assert ema_score_interval(base, base, "bias") == (0.0, 0.0)  # 20/20 before and after: no spread
    after = DomainRates({**dict.fromkeys(DOMAINS, 10), "bias": 0}, dict.fromkeys(DOMAINS, 20))
    low, high = ema_score_interval(base, after, "bias")
    assert low < 0.5 < high and high - low < 0.3  # six domains of 20 prompts at 50%
    assert ema_score_interval(base, after, "bias") == (low, high)
    unmeasured = DomainRates(dict.fromkeys(DOMAINS, 0), dict.fromkeys(DOMAINS, 0))
    assert all(math.isnan(v) for v in ema_score_interval(unmeasured, after, "bias"))


def test_permutation_p_value_is_exact_for_six_domains():
    from ema_lightning.concepts.analysis import permutation_p_value

    # rho = 1 - 6 * 2 / (6 * 35) after one adjacent swap; |rho| >= that for the identity, the 5 adjacent
    # swaps and their 6 reversals: 12 of the 720 orders
    assert permutation_p_value([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 6, 5]) == pytest.approx(12 / 720)
