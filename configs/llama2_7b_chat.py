"""The paper's main setting: SEAM on Llama-2-7b-chat with the original hyperparameters.

    python -m seam_jax.main --config=configs/llama2_7b_chat.py \
        --config.data.harmful=PATH/beavertails_with_refusals_train.json

AdamW, lr 2e-5, cosine schedule, warmup 0.1, no weight decay, no clipping, batch 8,
500 steps, context 256, "Question/Answer" format; alpha 1, beta 0.01, eps 1e-3; bf16
compute over float32 master weights, scanned and rematerialised layers. Needs the hub
(or a local copy via model.source) and the data sets named below.

The L_sd gradient: seam.sd_precision = "float32". theta + eps d is formed in the float32
master weights, but a bfloat16 forward pass casts it to bfloat16, whose spacing (2^-8 of
|theta_i|) is far above eps |d_i| (about eps / sqrt(N)): the cast rounds the perturbation
away, and Eq. 6 in bfloat16 is rounding divided by eps. Measured: on the tiny test model
at eps 1e-3 the bfloat16 finite difference ("faithful", the original's arithmetic) is off
by 11x |grad L_sd|, the float32 one by 1.6e-3, exact_hvp in bfloat16 by 1.8e-2
(tests/seam/test_sd_precision.py); on SmolLM2-135M (the Theorem 1 job, configs/theory.py)
at eps 1e-3 the forward difference is off by 42x |grad L_sd| with bfloat16 compute over
float32 master weights (the realised perturbation's cosine with eps d: 0.048), by 17x in
pure bfloat16 (the original's setting; cosine 0.19), by 5.6e-3 in float32; exact_hvp in
bfloat16 compute is off by 0.15. No eps in 1e-4..1e-1 brings a bfloat16 difference
under 0.5. "float32" computes the gradients of the
difference (at theta and at theta + eps d) in float32 by one program while the rest of
the step stays in bfloat16; its cost is those four float32 gradient evaluations in place
of two bfloat16 ones (the step's bfloat16 g_b is then unused, so XLA may drop its backward
pass). Measured on SmolLM2-135M, batches 2 x 64, 2-core CPU: the jitted SEAM step takes
7.72 s with it and 7.73 s with "compute" (XLA:CPU gains nothing from bfloat16 matmuls);
XLA's FLOP count rises from 1.53e11 to 1.86e11 (+22%). Its products are float32 as well
(matmul precision HIGHEST: the backends' default for float32 operands, TF32 on GPUs and
one bfloat16 pass on TPUs, would round eps d away inside the matmuls). At this size the
ahead-of-time plan (configs/plan.py:llama2-7b, 8 devices, fsdp 8, batch 8 x 256) gives
39.1 GiB per device against 37.5 with "compute", and benchmarks/flops.py counts 19% more
FLOPs, 64% of them float32 products, which run at about 1/6 (TPU) to 1/15 (H100) of the
bfloat16 rate: an estimated 5x to 12x the step time, not measured on hardware. The SEAM job
refuses "compute" here with one line (the realised perturbation's cosine with eps d is
below 0.9); "faithful" reproduces the original's rounding on purpose.
"""

from seam_jax.config import base_config

MODEL = "meta-llama/Llama-2-7b-chat-hf"


def get_config(arg: str | None = None):
    return paper_config(MODEL, "runs/llama2_7b_chat")


def paper_config(model: str, run_dir: str):
    c = base_config()
    c.run_dir = run_dir
    c.model.source = model
    c.model.param_dtype = "float32"
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.data.source = "files"
    c.data.harmful = "beavertails_with_refusals_train.json"
    c.data.benign = "yahma/alpaca-cleaned"
    c.data.test = "PKU-Alignment/BeaverTails"
    c.data.test_split = "30k_test"
    c.data.format = "qa"
    c.data.context_length = 256
    c.data.batch_size = 8
    c.data.n_defense = 4000
    c.data.n_attack = 1000
    c.data.n_test = 100
    c.seam.alpha = 1.0
    c.seam.beta = 0.01
    c.seam.eps = 1e-3
    c.seam.sd_precision = "float32"  # see the docstring: a bfloat16 difference is rounding
    c.steps = 500
    c.optim.lr = 2e-5
    c.optim.warmup_ratio = 0.1
    c.checkpoint.every = 50
    c.export.dtype = "bfloat16"
    c.eval.n_prompts = 100
    c.eval.max_new_tokens = 50
    return c
