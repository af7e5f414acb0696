"""GPU probes for advrep's hot path (writes $GC_OUT/probe.json after every section, so a timeout keeps what ran):
A. host-sync audit of the real Trainer.train_epoch (torch.cuda.set_sync_debug_mode('warn')), syncs per step by line;
B. dtypes and memory formats inside the attack and the train step (bf16 autocast, channels_last);
C. A/B of the PGD-10 attack at batch 512 and 128: as written (eager: parameters left requiring grad),
   cudnn.benchmark off vs on, parameters frozen (what the attack does on a compiled model), and host
   enqueue time against GPU time (host-bound?);
D. cost of a per-step torch.tensor(step, device=...) in the NaN flag (the trainer's old way) vs the trainer's
   step_ids[step] (indexing a tensor made once per epoch);
E. Probe (validation) on a reduce-overhead (CUDA graphs) compiled model: does it keep overwritten outputs?
"""
import collections, json, os, sys, tempfile, time, traceback, warnings
import torch

DEV = torch.device(os.environ.get("GC_DEVICE", "cuda"))
SMOKE = os.environ.get("GC_SMOKE") == "1"
DATA, OUT = os.environ.get("GC_DATA", ".gpu-data/cifar10"), os.environ.get("GC_OUT", "/tmp")
CUDA = DEV.type == "cuda"
R = {"device": str(DEV), "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if CUDA else "cpu"}
T0 = time.time()


def save():
    with open(os.path.join(OUT, "probe.json"), "w") as f:
        json.dump(R, f, indent=1, default=str)


def section(name):
    def wrap(fn):
        t = time.time()
        try:
            R[name] = fn()
        except Exception as e:  # record and go on
            R[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-1500:]}
        R[name] = R[name] if isinstance(R[name], dict) else {"value": R[name]}
        R[name]["seconds"] = round(time.time() - t, 1)
        print(f"== {name}: {json.dumps(R[name], default=str)[:1500]}", flush=True)
        save()
        return fn
    return wrap


def sync():
    if CUDA:
        torch.cuda.synchronize()


def timed(fn, reps=5, warm=2):
    """median wall seconds per call (synchronized) and median host seconds until fn returns (enqueue time)."""
    for _ in range(warm):
        fn()
    sync()
    walls, hosts = [], []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter(); fn(); t1 = time.perf_counter(); sync(); t2 = time.perf_counter()
        hosts.append(t1 - t0); walls.append(t2 - t0)
    walls.sort(); hosts.sort()
    return walls[len(walls) // 2], hosts[len(hosts) // 2]


from advrep import config as config_mod, methods, models  # noqa: E402
from advrep.compiling import compile_model  # noqa: E402
from advrep.threat import Threat  # noqa: E402
from advrep.trainer import Trainer, _amp_context  # noqa: E402

BS = 8 if SMOKE else 512
overrides = [f"--data.data_dir={DATA}", "--data.dataset=cifar10", f"--device={DEV}", "--train.epochs=3",
             f"--data.train_subset={BS * 5}", "--data.val_size=100", f"--train.batch_size={BS}", "--eval.after_train=false"]
if SMOKE:
    overrides += ["--threat.steps=2"]
cfg = config_mod.load("configs/pgd-at-cifar10-resnet18.yaml", overrides)
TR = Trainer(cfg, tempfile.mkdtemp(prefix="gc-probe-") + "/run", progress=False, log=lambda *a: None)
THREAT = TR.threat


def amp():
    return _amp_context(TR.amp_dtype, DEV)


@section("A_sync_audit")
def _():
    TR.train_epoch(0)  # warm-up: cuDNN, allocator
    sync()
    counts = collections.Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if CUDA:
            torch.cuda.set_sync_debug_mode("warn")
        t0 = time.perf_counter()
        TR.train_epoch(1)
        t1 = time.perf_counter()
        if CUDA:
            torch.cuda.set_sync_debug_mode(0)
    for w in caught:
        counts[f"{os.path.relpath(w.filename)}:{w.lineno}: {str(w.message)[:70]}"] += 1
    return {"steps": len(TR.loader), "epoch_s": round(t1 - t0, 3),
            "syncs_total": sum(counts.values()), "syncs_by_line": dict(counts.most_common(12))}


@section("B_dtypes_layouts")
def _():
    model, meth = TR.model, TR.method
    seen = {}
    def hook(name):
        def h(_m, _i, out):
            o = out[1] if isinstance(out, tuple) else out
            seen.setdefault(f"{name}[{'train' if model.training else 'eval'},grad={torch.is_grad_enabled()}]",
                            (str(o.dtype), bool(o.dim() == 4 and o.is_contiguous(memory_format=torch.channels_last))))
        return h
    hs = [model.layer1.register_forward_hook(hook("layer1")), model.linear.register_forward_hook(hook("logits"))]
    x, y = next(iter(TR.loader))
    try:
        with amp():
            x_adv = meth.perturb(model, x, y, THREAT)
            model.train()
            loss, _ = meth.objective(model, x, x_adv, y, THREAT)
    finally:
        for h in hs:
            h.remove()
    return {"x": (str(x.dtype), x.is_contiguous(memory_format=torch.channels_last)),
            "x_adv": (str(x_adv.dtype), x_adv.is_contiguous(memory_format=torch.channels_last)),
            "conv1.weight channels_last": model.conv1.weight.is_contiguous(memory_format=torch.channels_last),
            "loss dtype": str(loss.dtype), "activations (dtype, channels_last)": seen,
            "batch device": str(x.device), "cudnn.benchmark": torch.backends.cudnn.benchmark}


pgd_mod = sys.modules["advrep.attacks.pgd"]


@section("C_attack_ab")
def _():
    out = {}
    for bs in ((8,) if SMOKE else (512, 128)):
        model = models.create("resnet18", num_classes=10, normalization=((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)))
        model = model.to(DEV).to(memory_format=torch.channels_last).eval()
        meth = methods.create("pgd-at")
        threat = Threat(eps=8 / 255, step_size=2 / 255, steps=2 if SMOKE else 10)
        x = torch.rand(bs, 3, 32, 32, device=DEV).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (bs,), device=DEV)
        bf16 = lambda: torch.autocast(DEV.type, dtype=torch.bfloat16)
        def attack():
            with bf16():
                return meth.perturb(model, x, y, threat)
        row = {}
        torch.backends.cudnn.benchmark = False
        w, h = timed(attack); row["as_written"] = {"ms": round(1e3 * w, 2), "host_enqueue_ms": round(1e3 * h, 2),
                                                    "host_bound": h > 0.85 * w}
        orig = pgd_mod.is_compiled
        pgd_mod.is_compiled = lambda m: True  # freeze the parameters, as the attack does on a compiled model
        try:
            w2, h2 = timed(attack)
        finally:
            pgd_mod.is_compiled = orig
        row["params_frozen"] = {"ms": round(1e3 * w2, 2), "host_enqueue_ms": round(1e3 * h2, 2)}
        torch.backends.cudnn.benchmark = True
        w3, h3 = timed(attack)
        torch.backends.cudnn.benchmark = False
        row["cudnn_benchmark"] = {"ms": round(1e3 * w3, 2), "host_enqueue_ms": round(1e3 * h3, 2)}
        steps = threat.steps
        row["image_steps_per_s_as_written"] = round(bs * steps / w)
        row["speedup_cudnn_benchmark"] = round(w / w3, 3)
        row["speedup_params_frozen"] = round(w / w2, 3)
        out[f"batch_{bs}"] = row
    return out


@section("D_per_step_H2D_flag")
def _():
    model, meth, opt = TR.model, TR.method, TR.optimizer
    loader = list(TR.loader)[:2 if SMOKE else 4]
    ids = torch.arange(len(loader), device=DEV)
    def steps(old_way):
        bad = torch.tensor(-1, device=DEV)
        for i, (x, y) in enumerate(loader):
            with amp():
                xa = meth.perturb(model, x, y, THREAT)
                model.train()
                loss, _ = meth.objective(model, x, xa, y, THREAT)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            fin = torch.isfinite(loss.detach())
            if old_way:
                bad = torch.where((bad < 0) & ~fin, torch.tensor(i, device=DEV), bad)
            else:  # the trainer's way
                bad = torch.where((bad < 0) & ~fin, ids[i], bad)
        return bad
    w1, _ = timed(lambda: steps(True), reps=3, warm=1)
    w2, _ = timed(lambda: steps(False), reps=3, warm=1)
    return {"ms_per_step_torch_tensor": round(1e3 * w1 / len(loader), 2),
            "ms_per_step_trainer": round(1e3 * w2 / len(loader), 2)}


@section("E_probe_under_cudagraphs")
def _():
    if not CUDA:
        return {"skipped": "needs CUDA"}
    from advrep.readouts import Probe
    torch._dynamo.reset()
    m = models.create("small-cnn", num_classes=10, image_size=32).to(DEV).eval()
    compile_model(m, "reduce-overhead")
    x = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (300,))
    p = Probe(m, x, y, norm="Linf", eps=8 / 255, step_size=2 / 255, steps=3, device=DEV, batch_size=128)
    acc = p.accuracies()
    eager = Probe(models.create("small-cnn", num_classes=10, image_size=32).to(DEV).eval(), x, y, norm="Linf",
                  eps=8 / 255, step_size=2 / 255, steps=3, device=DEV, batch_size=128)
    eager.model.load_state_dict(m.state_dict())
    same = bool(torch.allclose(p.clean[1], eager.clean[1], atol=1e-3))
    return {"accuracies": acc, "clean_logits_match_eager": same,
            "note": "Probe keeps copies of outputs; a mismatch means replays overwrote what it kept"}


R["total_s"] = round(time.time() - T0, 1)
save()
print("probe done", R["total_s"], "s")
