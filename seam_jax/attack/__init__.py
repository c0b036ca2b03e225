"""The attacker's side: harmful fine-tuning (full SFT or LoRA) of any checkpoint, in grids."""

from seam_jax.attack.grid import GRIDS, PAPER, AttackCell, from_config, resolve
from seam_jax.attack.lora import LoraConfig, LoraFn, add_lora, init_lora, merge_lora, split_lora
from seam_jax.attack.runner import AttackData, eval_steps, load_checkpoint, run_attack, sweep

__all__ = ["AttackCell", "AttackData", "GRIDS", "eval_steps", "LoraConfig", "LoraFn", "PAPER", "add_lora",
           "from_config", "init_lora", "load_checkpoint", "merge_lora", "resolve", "run_attack",
           "split_lora", "sweep"]
