"""The paper's main setting: SEAM on Llama-2-7b-chat with the original hyperparameters.

    python -m seam_jax.main --config=configs/llama2_7b_chat.py \
        --config.data.harmful=PATH/beavertails_with_refusals_train.json

AdamW, lr 2e-5, cosine schedule, warmup 0.1, no weight decay, no clipping, batch 8,
500 steps, context 256, "Question/Answer" format; alpha 1, beta 0.01, eps 1e-3; bf16
compute over float32 master weights (the perturbation stays in float32), scanned and
rematerialised layers. Needs the hub (or a local copy via model.source) and the data
sets named below.
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
    c.steps = 500
    c.optim.lr = 2e-5
    c.optim.warmup_ratio = 0.1
    c.checkpoint.every = 50
    c.export.dtype = "bfloat16"
    c.eval.n_prompts = 100
    c.eval.max_new_tokens = 50
    return c
