"""Study jobs carry trm's class balance and annealing to the training config (issue 24)."""

from __future__ import annotations

from trmcore.study.grid import Job
from trmcore.study.profiles import get_profile
from trmcore.study.runner import StudyContext, _train_config


def test_variant_fields_change_the_key_and_reach_the_config(tmp_path):
    plain = Job("finetune", "tumour", "site-B/T1/NCR+ED+ET", 1, parent="p", source="site-A/T1/NCR+ED+ET",
                method="trm")
    balanced = Job("finetune", "tumour", "site-B/T1/NCR+ED+ET", 1, parent="p", source="site-A/T1/NCR+ED+ET",
                   method="trm", risk_balance="per-class", risk_anneal=True)
    assert plain.key != balanced.key and "bal-per-class" in balanced.key and "anneal" in balanced.key
    assert "bal-" not in plain.key  # unset fields stay out of the key: earlier caches keep their keys
    ctx = StudyContext(str(tmp_path), {"tumour": str(tmp_path)}, get_profile("tiny"))
    config = _train_config(ctx, balanced)
    assert (config.risk_balance, config.risk_anneal, config.seed) == ("per-class", True, 1)
    assert _train_config(ctx, plain).risk_balance == get_profile("tiny").training.risk_balance
