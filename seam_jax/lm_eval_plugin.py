"""Registers the ``seam_jax`` model with lm-eval's stock command line, lazily.

lm-eval (0.4.x) finds models only in its own registry; it has no entry-point group
for other packages. So the install puts ``seam_jax_lm_eval.pth`` into site-packages
(``setup.py``), whose one line calls ``install()`` at interpreter start. ``install``
imports nothing heavy: it adds an import hook that waits for ``lm_eval.models`` (the
module that fills lm-eval's registry) and then registers ``seam_jax`` as a lazy
placeholder, ``"seam_jax.eval.lm_eval_adapter:SeamJaxLM"``, which lm-eval imports only
when ``--model seam_jax`` is asked for. A Python process that never imports lm-eval
pays for one tiny module import and one entry in ``sys.meta_path``.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

MODEL_NAME = "seam_jax"
TARGET = "seam_jax.eval.lm_eval_adapter:SeamJaxLM"
_WATCHED = "lm_eval.models"


def register() -> bool:
    """Register the placeholder in lm-eval's model registry; False if lm-eval lacks one."""
    try:
        from lm_eval.api.registry import model_registry
    except ImportError:
        return False
    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=TARGET)
    return True


class _Finder(importlib.abc.MetaPathFinder):
    """Finds ``lm_eval.models`` with the other finders and registers after it executes."""

    def find_spec(self, name, path, target=None):
        if name != _WATCHED:
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]  # one shot
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module):
            run(module)
            try:
                register()
            except Exception:  # never break lm-eval's own import
                pass

        loader.exec_module = exec_module
        return spec


def install() -> None:
    """Called by ``seam_jax_lm_eval.pth`` at interpreter start."""
    if _WATCHED in sys.modules:
        register()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
