"""SEAM on Llama-3.1-8B-Instruct with the paper's hyperparameters (see llama2_7b_chat.py).

bf16 compute over float32 master weights, with the L_sd finite difference's gradients in
float32 (seam.sd_precision = "float32", set in llama2_7b_chat.paper_config): in bfloat16
the cast rounds theta + eps d back to theta (llama2_7b_chat.py has the measurements).

    python -m seam_jax.main --config=configs/llama3_1_8b.py \
        --config.data.harmful=PATH/beavertails_with_refusals_train.json
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from llama2_7b_chat import paper_config  # noqa: E402


def get_config(arg: str | None = None):
    return paper_config("meta-llama/Llama-3.1-8B-Instruct", "runs/llama3_1_8b")
