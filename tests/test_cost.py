"""The cost model, the pass counter and the stage log (advrep.cost)."""

import io

import torch
import torch.nn as nn

from advrep import cost
from advrep.config import EvalConfig, ThreatConfig

THREAT = ThreatConfig("Linf", 0.3, 0.01, 40)


def test_pass_counter_counts_forward_and_backward_image_passes():
    model = nn.Linear(4, 3)
    x = torch.rand(5, 4, requires_grad=True)
    with cost.PassCounter(model) as c:
        with torch.no_grad():
            model(torch.rand(7, 4))                      # 7 forward, no graph
        out = model(x)                                   # 5 forward
        torch.autograd.grad(out.sum(), x)                # 5 backward through the model
    model(x)                                             # after the counter: not counted
    assert (c.forward, c.backward) == (12, 5)
    assert c.facts(5, 1.234) == {"forward": 12, "backward": 5, "forward_per_image": 2.4, "backward_per_image": 1.0,
                                 "wall_s": 1.23}


def test_cost_model_by_hand():
    ev = EvalConfig(attacks=["fgsm", "pgd", "mt", "autoattack"], pgd_steps=20, pgd_restarts=3, checks=False)
    assert cost.attack_passes("fgsm", ev, THREAT, 10) == (2, 1)
    assert cost.attack_passes("pgd", ev, THREAT, 10) == (20 * 3 + 3 + 1, 60)
    assert cost.attack_passes("mt", ev, THREAT, 10) == (9 * 21 + 1, 9 * 20)
    # AutoAttack standard, Linf: APGD-CE 1×100, APGD-T 9×100, FAB-T 9×100, Square 5000 queries
    assert cost.attack_passes("autoattack", ev, THREAT, 10) == (1900 + 4 + 5000 + 1, 1900)
    l1 = ThreatConfig("L1", 12.0, 3.0, 10)
    assert cost.attack_passes("autoattack", ev, l1, 10)[1] == (5 + 5 + 9) * 100
    plan = cost.expected(ev, [(THREAT, "")], 10, n=100, corruption_cells=75, surrogate=False)
    assert [s["stage"] for s in plan["stages"]][-1] == "corruptions" and plan["stages"][-1]["forward"] == 7500
    assert plan["forward"] == sum(s["forward"] for s in plan["stages"])
    assert plan["units"] == plan["forward"] + 2 * plan["backward"]
    assert cost.summary_line(plan, 100).startswith("expected cost: at most ")


def test_stage_log_numbers_planned_stages_and_estimates_what_is_left():
    plan = {"stages": [{"stage": "a", "forward": 100, "backward": 0}, {"stage": "b", "forward": 300, "backward": 0}],
            "units": 400}
    out = io.StringIO()
    log = cost.StageLog(plan, stream=out)
    log.t0 -= 10  # stage a took 10 s of work worth 100 units: b's 300 units should take about 30 s
    log.end("a", log.t0)
    t = log.start("surrogate")
    log.end("surrogate", t)
    log.end("b", log.t0)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("advrep: [1/2] a done in 10 s") and "about 30 s left" in lines[0]
    assert lines[1] == "advrep: surrogate ..." and lines[2].startswith("advrep: surrogate done in")
    assert lines[3].startswith("advrep: [2/2] b done in") and lines[3].endswith(", done)")
    quiet = io.StringIO()
    cost.StageLog(plan, enabled=False, stream=quiet).say("x")
    assert quiet.getvalue() == ""
